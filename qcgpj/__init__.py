"""qcgpj: many small computing jobs inside HPC allocations, through one Redis-backed global queue.

    from qcgpj import Manager, Jobs
    with Manager() as m:                      # local mode; Manager("redis://host:6379/0") for a shared queue
        m.submit(Jobs().add(name="hello", exec="echo", args=["hi"], stdout="hello.out"))
        m.wait4all()
"""
from __future__ import annotations
# ruff: noqa: E402  (the imports below come after the path set-up for the workers package)

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

# In a source tree the launch plugins sit in the repository's top-level workers/ folder, which an install
# puts at qcgpj/workers (setup.cfg: package_dir). When qcgpj is imported from a source tree (the tests put its
# root first on sys.path; an editable install points here too), qcgpj.workers is looked up there as well.
_SRC_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(__path__[0], "workers")) and os.path.isfile(
        os.path.join(_SRC_ROOT, "workers", "__init__.py")):
    __path__.append(_SRC_ROOT)

from .errors import (ArgumentError, ConnectionError, DependencyError, DuplicateJobError, DurabilityError,
                     FinishedError, JobSpecError, LostJobsError, QcgpjError, QueueFullError, RedisError,
                     RedisMemoryError, RedisPermissionError, RemoveError, ResourceError, StoreError,
                     TimeoutError, UnknownJobError)

if TYPE_CHECKING:
    from .futures import Executor
    from .jobs import Jobs
    from .jobspec import JobSpec
    from .manager import Manager

__version__ = "0.1.0"
__all__ = ["Manager", "Executor", "Jobs", "JobSpec", "QcgpjError", "JobSpecError", "DependencyError", "DuplicateJobError",
           "ResourceError", "ConnectionError", "TimeoutError", "UnknownJobError", "ArgumentError", "RedisError",
           "RedisPermissionError", "RedisMemoryError", "RemoveError", "LostJobsError", "FinishedError", "StoreError",
           "QueueFullError", "DurabilityError", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())

# The client's classes are imported on first use: the services (``qcgpj worker``, ``qcgpj inputqueue``) import
# this package too, start faster without the client's modules (Manager, Executor and what they pull in).
_LAZY = {"Executor": ".futures", "Jobs": ".jobs", "JobSpec": ".jobspec", "Manager": ".manager"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
