"""Our exception hierarchy: one base class so callers can catch all of qcgpj's errors at once."""
from __future__ import annotations


class QcgpjError(Exception):
    """Base class of every error qcgpj raises on purpose."""


def clip(name: str, limit: int = 256) -> str:
    """A name as an error message shows it: a wrong one may be megabytes long, and the message is one line to
    read. Names up to 200 characters are valid: shown whole."""
    return name if len(name) <= limit else f"{name[:limit - 15]}...({len(name):,} chars)"


class JobSpecError(QcgpjError):
    """A job description is invalid; names the job and the field so the user can fix the file."""

    def __init__(self, job: str | None, field: str | None, message: str) -> None:
        self.job = job
        self.field = field
        self.message = message
        where = []
        if job is not None:
            where.append(f"job '{clip(job)}'")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class TemplateKeyError(JobSpecError, KeyError):
    """A job template (the executor API's) has a placeholder without a value. Also a KeyError, which is what
    QCG-PilotJob's executor raises then."""

    def __str__(self) -> str:   # KeyError's would quote the message
        return JobSpecError.__str__(self)


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


class RemoveError(QcgpjError):
    """A job cannot be removed: it is unknown, not final yet (or canceled, its process not stopped yet), or jobs
    not final yet depend on it."""

    def __init__(self, job: str, why: str, message: str) -> None:
        self.job = job
        self.why = why
        super().__init__(message if why == "unknown" else f"job '{job}': {message}")

    @classmethod
    def of(cls, job: str, why: str, detail: str) -> "RemoveError":
        """The error for remove.lua's answer ``why`` (unknown, notfinal, dependants) about ``job``."""
        if why == "unknown":
            return cls(job, why, f"unknown job '{clip(job)}'")   # as every other command words it
        if why == "notfinal":
            return cls(job, why, f"is {detail}: only final jobs can be removed (cancel it first)")
        if why == "stopping":
            return cls(job, why, f"canceled, but executor {detail} has not reported its process ended yet: "
                                 "remove it once it has")
        return cls(job, why, f"jobs that are not final yet depend on it ({detail.replace(',', ', ')}): "
                             "remove it once they have ended")


class ArgumentError(QcgpjError, ValueError):
    """A call of the Python API got an argument of the wrong type or value (the CLI's bad option). Also a
    ValueError, which is what such calls raised before."""


class RedisError(QcgpjError):
    """Redis refused a command for a reason of its own set-up: read-only replica, still loading, a script error."""


class RedisPermissionError(RedisError):
    """The Redis user's ACL forbids a command or key qcgpj needs (NOPERM); the README lists the minimal ACL."""


class RedisMemoryError(RedisError):
    """Redis reached its ``maxmemory`` and refuses writes (OOM); a script refused so wrote nothing."""


class StoreError(QcgpjError):
    """Local mode's store cannot be used (unknown, or redis-server forced but missing or failing)."""


class FinishedError(QcgpjError):
    """The Manager was finished: its local services are stopped, so nothing more can run."""


class LostJobsError(QcgpjError):
    """Jobs the queue held are gone from it (Redis lost data): their outcome cannot be known."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        super().__init__(f"the queue lost {len(names)} job(s) it held ({shown}): Redis lost data "
                         "(restarted without persistence, flushed or evicted?)")


class QueueFullError(RedisMemoryError):
    """A submit would not fit under Redis's ``maxmemory`` (with ``noeviction``): it wrote nothing; free memory
    (``qcgpj remove --finished``) and retry."""


class DurabilityError(QcgpjError):
    """A durable submit was asked for, but this Redis cannot confirm that the batch reached disk or a replica."""


class AllocError(QcgpjError):
    """An allocation queue definition is invalid, unknown, or Slurm cannot be asked."""
