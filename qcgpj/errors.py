"""Our exception hierarchy: one base class so callers can catch all of qcgpj's errors at once."""
from __future__ import annotations


class QcgpjError(Exception):
    """Base class of every error qcgpj raises on purpose."""


class JobSpecError(QcgpjError):
    """A job description is invalid; names the job and the field so the user can fix the file."""

    def __init__(self, job: str | None, field: str | None, message: str) -> None:
        self.job = job
        self.field = field
        self.message = message
        where = []
        if job is not None:
            where.append(f"job '{job}'")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class DependencyError(JobSpecError):
    """A dependency is unknown or forms a cycle."""


class DuplicateJobError(JobSpecError):
    """A job name is used twice (in one batch or already in the queue)."""


class ResourceError(JobSpecError):
    """A job asks for more resources than any executor could ever offer."""


class ConnectionError(QcgpjError):  # noqa: A001 - deliberately shadows the builtin inside qcgpj
    """Redis cannot be reached, the URL is malformed, or authentication failed."""


class UnknownJobError(QcgpjError):
    """A job (or iteration) name that the queue does not hold."""


class TimeoutError(QcgpjError):  # noqa: A001
    """A wait ran out of time before the jobs finished."""


class AllocError(QcgpjError):
    """An allocation queue definition is invalid, unknown, or Slurm cannot be asked."""
