"""QCG-PilotJob's Python API on qcgpj: change ``from qcg.pilotjob.api.manager import LocalManager`` to
``from qcgpj.compat.api import LocalManager`` (and ``qcg.pilotjob.executor_api`` to ``qcgpj.compat.executor_api``).
Same calls, same return shapes; underneath, a :class:`qcgpj.Manager` (local mode, or a Redis queue)."""
from .api import Jobs, LocalManager, Manager
from .executor_api import BasicTemplate, QCGPJExecutor, QCGPJFuture, QCGPJTemplate

__all__ = ["LocalManager", "Manager", "Jobs", "QCGPJExecutor", "QCGPJFuture", "QCGPJTemplate", "BasicTemplate"]
