"""``python``: call ``package.module:function(*args)`` in the executor's process, in a task thread.

Cheap (no process start) for short Python steps. The call's stdout is the executor's own and is not captured:
redirecting sys.stdout would leak between tasks running at the same time. A call cannot be killed: cancel and
walltime mark it ended, but the thread runs on until the function returns.
"""
from __future__ import annotations

import importlib
import logging
import threading

from .base import LaunchError, Running, TaskContext, Worker, task_failure

log = logging.getLogger(__name__)


class _Call(Running):
    def __init__(self, ctx: TaskContext, func) -> None:
        self.ctx, self.func = ctx, func
        self.code: int | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name=f"qcgpj-py-{ctx.task_id}", daemon=True).start()

    def _run(self) -> None:
        """Whatever the function does, the task ends: sys.exit() as a process's exit would, any other exception
        (KeyboardInterrupt too) as FAILED with its message, the traceback in the task's stderr file."""
        try:
            res = self.func(*self.ctx.argv[1:])
            self.code = 0 if res is None or res is True else (1 if res is False else int(res))
        except SystemExit as exc:
            self.code = _exit_code(exc.code)
            if self.code and not isinstance(exc.code, int):
                self.message = f"sys.exit({exc.code!r})"
        except BaseException as exc:   # noqa: B036 - a task's failure must never leave it EXECUTING
            self.message = task_failure(self.ctx, "python call failed", exc)
            self.code = 1
        finally:
            self.done.set()

    def wait(self, timeout: float | None) -> int | None:
        return self.code if self.done.wait(timeout) else None

    def kill(self) -> None:
        log.warning("task %s: a python call cannot be killed; it is marked ended", self.ctx.task_id)
        self.code = self.code if self.done.is_set() else -9
        self.done.set()


def _exit_code(code: object) -> int:
    """As Python's own exit: None is 0, a number is itself, anything else is 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) and not isinstance(code, bool) else 1


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
