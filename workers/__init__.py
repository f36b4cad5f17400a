"""Launch modes of tasks, as plugins: each a ``workers.base.Worker`` found by model name in the entry-point
group ``qcgpj.workers`` (so another package can add its own), with the built-in ones as a fallback."""
from __future__ import annotations

import importlib
import logging
import threading
from importlib.metadata import entry_points

from qcgpj.errors import QcgpjError

log = logging.getLogger(__name__)

GROUP = "qcgpj.workers"
BUILTIN = {
    "default": "workers.local:LocalWorker",
    "local": "workers.local:LocalWorker",
    "threads": "workers.threads:ThreadsWorker",
    "python": "workers.pycall:PythonWorker",
    "function": "workers.function:FunctionWorker",
    "noop": "workers.noop:NoopWorker",
    "srun": "workers.slurm:SrunWorker",
    "srunmpi": "workers.slurm:SrunMpiWorker",
    "srunthreads": "workers.slurm:SrunThreadsWorker",
    "openmpi": "workers.mpi:OpenMpiWorker",
    "intelmpi": "workers.mpi:IntelMpiWorker",
}
_cache: dict[str, object] = {}
_lock = threading.Lock()


def _targets() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.value
    return found


def available_models() -> list[str]:
    return sorted(_targets())


def get_worker(model: str):
    """The (shared) worker instance of a model."""
    w = _cache.get(model)
    if w is not None:
        return w
    with _lock:
        if model not in _cache:
            target = _targets().get(model)
            if target is None:
                raise QcgpjError(f"unknown execution model '{model}' (known: {', '.join(available_models())})")
            mod, _, cls = target.partition(":")
            _cache[model] = getattr(importlib.import_module(mod), cls)()
        return _cache[model]
