"""The interface of launch modes: a Worker turns a TaskContext into something Running."""
from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from ..errors import QcgpjError
from ..resources import Allocation
from . import sweep
from .spawn import spawn
from .sweep import Cgroup

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
    walltime: float | None = None
    #: nothing else of the executor's starts or runs meanwhile (a hop of a chain): os.posix_spawn, which holds
    #: the interpreter lock until the child has exec'd, may start it (see :mod:`.spawn`)
    alone: bool = False

    def local_cores(self) -> list[int]:
        return self.allocation.cores_on(self.local_node)


class Running(ABC):
    #: why it failed, when its exit code does not say (a python call's exception)
    message: str = ""
    #: (user CPU s, system CPU s, max RSS KiB) of a reaped process and the children it waited for; else None
    usage: tuple[float, float, int] | None = None

    @abstractmethod
    def wait(self, timeout: float | None) -> int | None:
        """The exit code, or None if it still runs after ``timeout`` seconds."""

    @abstractmethod
    def kill(self) -> None:
        """End it, with everything it started; idempotent."""

    def kill_now(self) -> None:
        """End it at once, without the grace a kill gives (a run that must exit now: a second Ctrl-C)."""
        self.kill()

    def terminate(self) -> None:
        """Ask it to end (SIGTERM), without the timer of ``kill``'s SIGKILL: for a process about to exit, whose
        caller sends ``kill_now`` itself after a grace (local mode on SIGTERM). Called from a signal handler."""
        self.kill()

    def exited(self) -> bool:
        """Whether it has ended, without reaping it (the executor's threads reap); from a signal handler."""
        return self.poll() is not None

    def poll(self) -> int | None:
        """The exit code if it has ended, else None, without blocking."""
        return self.wait(0)

    @property
    def pid(self) -> int | None:
        """A process whose end the executor can watch (through its pidfd) instead of blocking a thread."""
        return None


class ProcessRunning(Running):
    """A process started in a session of its own (its pid is its session and process group id), perhaps in a
    cgroup of its own (see :mod:`.sweep`).

    ``kill`` (cancel, walltime) sends SIGTERM to the cgroup, the process group, the session and their
    descendants, and SIGKILL to all of them (found again) ``KILL_GRACE`` seconds later. When the main process
    ends, whatever it left in its process group and cgroup is killed (SIGKILL) before it is reaped, while its
    pid still names the group: the task's cores go to the next task, and nothing of it runs on."""

    def __init__(self, proc: subprocess.Popen, cgroup: Cgroup | None = None) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self._killed = False
        self._swept = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def wait(self, timeout: float | None) -> int | None:
        if self.proc.returncode is None:
            if not self._exited(timeout):
                return None
            self._sweep()
        return self._reaped(self._reap())

    def poll(self) -> int | None:
        if self.proc.returncode is None:
            if not self._exited(0):
                return None
            self._sweep()
        return self._reaped(self._reap())

    def _exited(self, timeout: float | None) -> bool:
        """Whether the main process has ended, without reaping it (waitid WNOWAIT)."""
        flags = os.WEXITED | os.WNOWAIT
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                if os.waitid(os.P_PID, self.proc.pid, flags | (0 if timeout is None else os.WNOHANG)):
                    return True
            except ChildProcessError:   # reaped elsewhere: Popen knows its code
                return True
            if deadline is None:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def _sweep(self) -> None:
        """The main process has ended (not yet reaped): kill what it left behind."""
        if self._swept:
            return
        self._swept = True
        sweep.killpg(self.proc.pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.signal(signal.SIGKILL)

    def _reap(self) -> int:
        """Reap the ended main process with wait4, which gives its resource usage with its status at no extra
        cost (the same system call Popen makes, with the rusage it drops); Popen is told the code. Its max RSS
        is at least the executor's peak when the task was spawned: Linux keeps the peak of the memory an exec
        replaces, which a forked (or vforked) child has from the executor."""
        if self.proc.returncode is None:
            try:
                _pid, status, ru = os.wait4(self.proc.pid, 0)
            except ChildProcessError:   # reaped elsewhere: Popen knows its code
                return self.proc.wait()
            self.usage = (ru.ru_utime, ru.ru_stime, ru.ru_maxrss)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode

    def _reaped(self, code: int | None) -> int | None:
        """Reaped: its cgroup, empty now but for what is still dying of the SIGKILL, goes back to the pool."""
        if code is not None and self.cgroup is not None:
            sweep.CGROUPS.release(self.cgroup)
        return code

    def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        self._signal(signal.SIGTERM)
        t = threading.Timer(KILL_GRACE, self._signal, args=(signal.SIGKILL,))
        t.daemon = True
        t.start()

    def kill_now(self) -> None:
        self._killed = True
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def exited(self) -> bool:
        return self.proc.returncode is not None or self._exited(0)

    def _signal(self, sig: int) -> None:
        # Find everything before signalling anything: a parent that dies first hands its children to init,
        # out of reach of the scan by parentage.
        pids = sweep.session_and_descendants(self.proc.pid)
        if self.cgroup is not None:
            self.cgroup.signal(sig)
        sweep.killpg(self.proc.pid, sig)
        sweep.signal_all(pids, sig)
        if sig == signal.SIGKILL:   # and what was forked meanwhile (now stopped from forking: all got SIGKILL)
            sweep.signal_all(sweep.session_and_descendants(self.proc.pid), sig)


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

        Through :mod:`.spawn` (Popen's own C call, or posix_spawn for a task alone) where it can, else Popen."""
        argv = self.command(ctx)
        env = self.environment(ctx)
        prog = argv[0]
        cgroup = sweep.CGROUPS.take() if self.cgroup(ctx) else None
        files: list[IO] = []
        proc = None
        try:
            if cgroup is not None:
                _check_exec(ctx, prog, env)
                argv = cgroup.join_argv(argv)
            stdin = _open(ctx.stdin, "rb", files) if ctx.stdin else _devnull()
            stdout = _open(ctx.stdout, "wb", files) if ctx.stdout else _devnull()
            if ctx.stderr and ctx.stderr == ctx.stdout:
                stderr: Any = subprocess.STDOUT
            else:
                stderr = _open(ctx.stderr, "wb", files) if ctx.stderr else _devnull()
            fds = (_fileno(stdin), _fileno(stdout), _fileno(stdout if stderr is subprocess.STDOUT else stderr))
            proc = spawn(argv, env, fds, ctx.cwd, ctx.alone) or subprocess.Popen(
                argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=ctx.cwd, env=env, start_new_session=True,
                close_fds=True)
        except FileNotFoundError as exc:
            raise LaunchError(f"task {ctx.task_id}: cannot run '{prog}': {exc.strerror}") from None
        except PermissionError as exc:
            raise LaunchError(f"task {ctx.task_id}: cannot run '{prog}': {exc.strerror}") from None
        finally:
            for f in files:
                f.close()
            if proc is None and cgroup is not None:   # never started: the cgroup goes back unused
                sweep.CGROUPS.release(cgroup)
        return ProcessRunning(proc, cgroup)

    def cgroup(self, ctx: TaskContext) -> bool:
        """Whether the task gets a cgroup (where there are): with a walltime, or when its job asks for one."""
        return bool(ctx.model_opts.get("cgroup", ctx.walltime is not None))


def _check_exec(ctx: TaskContext, prog: str, env: dict[str, str]) -> None:
    """What Popen would say of a command that cannot run, for one started through a shell (JOIN)."""
    found = os.path.join(ctx.cwd, prog) if os.sep in prog else shutil.which(prog, path=env.get("PATH", os.defpath))
    if not found or not os.path.isfile(found):
        raise LaunchError(f"task {ctx.task_id}: cannot run '{prog}': No such file or directory")
    if not os.access(found, os.X_OK):
        raise LaunchError(f"task {ctx.task_id}: cannot run '{prog}': Permission denied")


def task_failure(ctx: TaskContext, what: str, exc: BaseException) -> str:
    """A failure on the task's side (its launch, its python call) is the task's, not the worker's: the one-line
    message for its record, and the traceback appended to its stderr file (without one, in the worker's log at
    debug level only)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    tb = "".join(traceback.format_exception(exc))
    try:
        if not ctx.stderr:
            raise OSError("no stderr file")
        with open(ctx.stderr, "a") as f:
            f.write(f"qcgpj: {what}\n{tb}")
    except OSError:
        log.debug("task %s: %s\n%s", ctx.task_id, what, tb)
    return f"{what}: {text[:300]}"


@functools.cache
def _devnull() -> int:
    """One /dev/null descriptor for all tasks (Popen's DEVNULL opens and closes one per process)."""
    return os.open(os.devnull, os.O_RDWR)


def _fileno(f: int | IO) -> int:
    return f if isinstance(f, int) else f.fileno()


def _open(path: str, mode: str, files: list[IO]) -> IO:
    try:
        f = open(path, mode)
    except OSError as exc:
        raise LaunchError(f"cannot open {path}: {exc.strerror}") from None
    files.append(f)
    return f
