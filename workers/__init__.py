"""Launch modes of tasks, as plugins: each a ``qcgpj.workers.base.Worker`` found by model name in the
entry-point group ``qcgpj.workers`` (so another package can add its own), with the built-in ones as a fallback.

This folder is the repository's top-level ``workers/``, installed as ``qcgpj.workers`` (setup.cfg: package_dir)."""
from __future__ import annotations

import importlib
import logging
import threading
from importlib.metadata import entry_points

from ..errors import QcgpjError

log = logging.getLogger(__name__)

GROUP = "qcgpj.workers"
BUILTIN = {
    "default": "qcgpj.workers.local:LocalWorker",
    "local": "qcgpj.workers.local:LocalWorker",
    "threads": "qcgpj.workers.threads:ThreadsWorker",
    "python": "qcgpj.workers.pycall:PythonWorker",
    "function": "qcgpj.workers.function:FunctionWorker",
    "noop": "qcgpj.workers.noop:NoopWorker",
    "srun": "qcgpj.workers.slurm:SrunWorker",
    "srunmpi": "qcgpj.workers.slurm:SrunMpiWorker",
    "srunthreads": "qcgpj.workers.slurm:SrunThreadsWorker",
    "openmpi": "qcgpj.workers.mpi:OpenMpiWorker",
    "intelmpi": "qcgpj.workers.mpi:IntelMpiWorker",
}
_cache: dict[str, object] = {}
_lock = threading.Lock()


def _targets() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        if getattr(ep.dist, "name", None) != "qcgpj":   # ours are BUILTIN (an installed copy may be stale)
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
