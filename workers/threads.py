"""``threads``: one OpenMP process on one node, told its thread count and bound to its cores."""
from __future__ import annotations

from .base import ProcessWorker, TaskContext


class ThreadsWorker(ProcessWorker):
    name = "threads"

    def environment(self, ctx: TaskContext) -> dict[str, str]:
        env = dict(ctx.env)
        env["OMP_NUM_THREADS"] = str(ctx.allocation.ncores)
        env.setdefault("OMP_PROC_BIND", "true")
        return env
