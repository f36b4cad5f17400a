"""QCG-PilotJob's ``qcg.pilotjob.api.errors``: its names, each one of qcgpj's own error classes, so that
``except TimeoutElapsed`` catches what ``qcgpj.compat`` raises when a wait runs out, and so on. All are
:class:`~qcgpj.errors.QcgpjError` s (its ``TimeoutElapsed`` was not a ``QCGPJMAError``; here it is one)."""
from __future__ import annotations

from ..errors import ArgumentError, JobSpecError, QcgpjError, RedisError, StoreError, TimeoutError, UnknownJobError
from ..errors import ConnectionError as _ConnectionError

QCGPJMAError = QcgpjError                   # the base of them all
InternalError = RedisError                  # the service (here Redis) refused or answered in a way it should not
InvalidJobDescriptionError = JobSpecError   # a job description is invalid, or its name used twice
JobNotDefinedError = UnknownJobError        # a name not in the batch (Jobs.remove) or not in the queue
ConnectionError = _ConnectionError  # noqa: A001 - QCG-PilotJob's name; the service (Redis) cannot be reached
WrongArgumentsError = ArgumentError         # an argument of the wrong type or value
FileError = QcgpjError                      # Jobs.load_from_file/save_to_file: cannot read or write the file
ServiceError = StoreError                   # local mode's services cannot start
TimeoutElapsed = TimeoutError               # a wait ran out of time

__all__ = ["QCGPJMAError", "InternalError", "InvalidJobDescriptionError", "JobNotDefinedError", "ConnectionError",
           "WrongArgumentsError", "FileError", "ServiceError", "TimeoutElapsed"]
