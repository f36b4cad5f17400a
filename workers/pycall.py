"""``python``: call ``package.module:function(*args)`` in the executor's process, in a task thread.

Cheap (no process start) for short Python steps. The call's stdout is the executor's own and is not captured:
redirecting sys.stdout would leak between tasks running at the same time. A call cannot be killed: cancel and
walltime mark it ended, but the thread runs on until the function returns.
"""
from __future__ import annotations

import importlib
import logging
import threading
import traceback

from .base import LaunchError, Running, TaskContext, Worker

log = logging.getLogger(__name__)


class _Call(Running):
    def __init__(self, ctx: TaskContext, func) -> None:
        self.ctx, self.func = ctx, func
        self.code: int | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name=f"qcgpj-py-{ctx.task_id}", daemon=True).start()

    def _run(self) -> None:
        try:
            res = self.func(*self.ctx.argv[1:])
            self.code = 0 if res is None or res is True else (1 if res is False else int(res))
        except Exception:
            log.exception("task %s: python call failed", self.ctx.task_id)
            if self.ctx.stderr:
                with open(self.ctx.stderr, "a") as f:
                    f.write(traceback.format_exc())
            self.code = 1
        self.done.set()

    def wait(self, timeout: float | None) -> int | None:
        return self.code if self.done.wait(timeout) else None

    def kill(self) -> None:
        log.warning("task %s: a python call cannot be killed; it is marked ended", self.ctx.task_id)
        self.code = self.code if self.done.is_set() else -9
        self.done.set()


class PythonWorker(Worker):
    name = "python"

    def start(self, ctx: TaskContext) -> Running:
        target = ctx.python_target or ""
        mod, _, fn = target.partition(":")
        try:
            func = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError, ValueError) as exc:
            raise LaunchError(f"task {ctx.task_id}: cannot load '{target}': {exc}") from None
        return _Call(ctx, func)
