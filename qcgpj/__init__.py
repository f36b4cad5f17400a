"""qcgpj: many small computing jobs inside HPC allocations, through one Redis-backed global queue.

    from qcgpj import Manager, Jobs
    with Manager() as m:                      # local mode; Manager("redis://host:6379/0") for a shared queue
        m.submit(Jobs().add(name="hello", exec="echo", args=["hi"], stdout="hello.out"))
        m.wait4all()
"""
from __future__ import annotations

import logging

from .errors import (ConnectionError, DependencyError, DuplicateJobError, JobSpecError, QcgpjError,
                     ResourceError, TimeoutError, UnknownJobError)
from .futures import Executor
from .jobs import Jobs
from .jobspec import JobSpec
from .manager import Manager

__version__ = "0.1.0"
__all__ = ["Manager", "Executor", "Jobs", "JobSpec", "QcgpjError", "JobSpecError", "DependencyError", "DuplicateJobError",
           "ResourceError", "ConnectionError", "TimeoutError", "UnknownJobError", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
