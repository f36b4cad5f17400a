"""The ``noop`` model: claims, "runs" and reports without starting a process, so ``qcgpj bench -w queue``
shows the ceiling of the queue itself, apart from the cost of spawning processes."""
from __future__ import annotations

from .base import Running, TaskContext, Worker


class _Done(Running):
    def wait(self, timeout: float | None) -> int | None:
        return 0

    def kill(self) -> None:
        """Nothing runs, so there is nothing to kill."""

    @property
    def pid(self) -> int | None:
        return None


class NoopWorker(Worker):
    name = "noop"
    runs_inline = True

    def start(self, ctx: TaskContext) -> Running:
        return _Done()
