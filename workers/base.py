"""The interface of launch modes: a Worker turns a TaskContext into something Running."""
from __future__ import annotations

import functools
import logging
import os
import shlex
import signal
import subprocess
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from ..errors import QcgpjError
from ..resources import Allocation

log = logging.getLogger(__name__)

KILL_GRACE = 3.0   # seconds between SIGTERM and SIGKILL of a task's process group


class LaunchError(QcgpjError):
    """A task could not be started (missing executable, unreadable stdin, ...)."""


@dataclass(slots=True)
class TaskContext:
    task_id: str
    job: str
    iteration: int | None
    argv: list[str]
    env: dict[str, str]
    cwd: str
    stdin: str | None
    stdout: str | None
    stderr: str | None
    allocation: Allocation
    model_opts: dict[str, Any] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    venv: str | None = None
    local_node: str = ""
    python_target: str | None = None

    def local_cores(self) -> list[int]:
        return self.allocation.cores_on(self.local_node)


class Running(ABC):
    @abstractmethod
    def wait(self, timeout: float | None) -> int | None:
        """The exit code, or None if it still runs after ``timeout`` seconds."""

    @abstractmethod
    def kill(self) -> None:
        """End it, with everything it started; idempotent."""

    def poll(self) -> int | None:
        """The exit code if it has ended, else None, without blocking."""
        return self.wait(0)

    @property
    def pid(self) -> int | None:
        """A process whose end the executor can watch (through its pidfd) instead of blocking a thread."""
        return None


class ProcessRunning(Running):
    """A process started through ``subprocess.Popen`` in its own session: killing its process group reaches
    everything it started."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._killed = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        self._signal(signal.SIGTERM)
        t = threading.Timer(KILL_GRACE, self._signal, args=(signal.SIGKILL,))
        t.daemon = True
        t.start()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Worker(ABC):
    """A launch mode, found by its ``name`` through the ``qcgpj.workers`` entry-point group."""

    name: ClassVar[str]
    #: True for a worker whose ``start`` does the whole task in the calling thread and starts no process or
    #: thread (so the executor sets no CPU mask around it).
    runs_inline: ClassVar[bool] = False

    @abstractmethod
    def start(self, ctx: TaskContext) -> Running:
        ...

    def wrap_argv(self, ctx: TaskContext, argv: list[str]) -> list[str]:
        """modules and venv need a shell; the plain case stays a direct exec (the hot path)."""
        if not ctx.modules and not ctx.venv:
            return argv
        steps = [f"module load {shlex.quote(m)}" for m in ctx.modules]
        if ctx.venv:
            steps.append(f". {shlex.quote(os.path.join(ctx.venv, 'bin', 'activate'))}")
        return ["/bin/bash", "-c", " && ".join(steps) + ' && exec "$@"', "qcgpj-task", *argv]


class ProcessWorker(Worker):
    """Launches ``command(ctx)`` as a process with the task's files, directory and environment."""

    bind_cpus: ClassVar[bool] = True

    def command(self, ctx: TaskContext) -> list[str]:
        """The argv to start; launchers (srun, mpirun) put their prefix before ``wrap_argv(ctx, ctx.argv)``."""
        return self.wrap_argv(ctx, ctx.argv)

    def environment(self, ctx: TaskContext) -> dict[str, str]:
        return ctx.env

    def start(self, ctx: TaskContext) -> Running:
        """Called in a thread bound to the task's CPUs (when ``bind_cpus``): the process inherits the binding.

        Popen, not os.posix_spawn: both vfork, but os.posix_spawn cannot set the working directory (Python
        3.11) and holds the GIL until the child has exec'd, which Popen does not (CPython gh-104372)."""
        argv = self.command(ctx)
        env = self.environment(ctx)
        files: list[IO] = []
        try:
            stdin = _open(ctx.stdin, "rb", files) if ctx.stdin else _devnull()
            stdout = _open(ctx.stdout, "wb", files) if ctx.stdout else _devnull()
            if ctx.stderr and ctx.stderr == ctx.stdout:
                stderr: Any = subprocess.STDOUT
            else:
                stderr = _open(ctx.stderr, "wb", files) if ctx.stderr else _devnull()
            proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=ctx.cwd, env=env,
                                    start_new_session=True, close_fds=True)
        except FileNotFoundError as exc:
            raise LaunchError(f"task {ctx.task_id}: cannot run '{argv[0]}': {exc.strerror}") from None
        except PermissionError as exc:
            raise LaunchError(f"task {ctx.task_id}: cannot run '{argv[0]}': {exc.strerror}") from None
        finally:
            for f in files:
                f.close()
        return ProcessRunning(proc)


@functools.cache
def _devnull() -> int:
    """One /dev/null descriptor for all tasks (Popen's DEVNULL opens and closes one per process)."""
    return os.open(os.devnull, os.O_RDWR)


def _open(path: str, mode: str, files: list[IO]) -> IO:
    try:
        f = open(path, mode)
    except OSError as exc:
        raise LaunchError(f"cannot open {path}: {exc.strerror}") from None
    files.append(f)
    return f
