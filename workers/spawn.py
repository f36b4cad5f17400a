"""Starting a task's process with ``os.posix_spawn`` where it needs nothing ``posix_spawn`` cannot do.

``subprocess.Popen`` vforks too, but spends about 190 µs of the executor's CPU per process in Python (encoding
argv and environment, an error pipe, handles); ``posix_spawn`` does the same in C for about 100. It holds the
interpreter lock until the child has exec'd, though, which Popen does not: with two threads spawning, it was
slower than Popen and used as much CPU. So it serves only a task started alone (nothing else of the executor's
runs: a hop of a dependency chain, where its saving is latency). Python 3.11's ``posix_spawn`` cannot change
the working directory, so also only a task that runs in the executor's own (the worker runs in its ``--wd``,
so that is every task without a ``wd`` of its own); the others, and any spawn that fails, go through Popen,
which also gives the usual error messages.

What the child gets is what Popen gives it: its own session, stdio on the given descriptors, SIGPIPE and
SIGXFSZ back to their defaults (Python ignores them), the launching thread's signal mask and CPU mask, and no
other descriptor (Python opens descriptors close-on-exec; those made inheritable are closed, as Popen's
close_fds does). One difference: glibc's posix_spawn leaves its two internal signals (32 and 33, which no
program can use through glibc) ignored in the child.
"""
from __future__ import annotations

import os
import shutil
import signal

AVAILABLE = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2") and os.path.isdir("/proc/self/fd")
_DEFAULT_SIGNALS = tuple(getattr(signal, s) for s in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, s))
_found: dict[tuple[str, str], str] = {}   # (program, PATH) -> executable: PATH lookups once per program


class Spawned:
    """The little of Popen that ProcessRunning uses, for a process started by posix_spawn."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int:
        """Only for a process reaped elsewhere (ProcessRunning reaps with wait4): its code is lost, as Popen's is."""
        if self.returncode is None:
            try:
                _pid, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = 0
        return self.returncode


def spawn(argv: list[str], env: dict[str, str], fds: tuple[int, int, int], cwd: str) -> Spawned | None:
    """The started process, or None when this path cannot start it (the caller uses Popen then). ``fds`` are
    the child's stdin, stdout and stderr; one of the executor's own (0-2, when it runs without them) is left to
    Popen, which orders such duplications."""
    if not AVAILABLE or not argv or min(fds) <= 2:
        return None
    try:
        if cwd != os.getcwd():
            return None
        path = _executable(argv[0], env)
        if path is None:
            return None
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)] + _inherited()
        pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS)
    except OSError:   # cannot run it (gone since it was found, not executable...): Popen says why, in its words
        _found.pop((argv[0], env.get("PATH", os.defpath)), None)
        return None
    return Spawned(pid)


def _inherited() -> list[tuple[int, int]]:
    """Close actions for the descriptors above 2 that a program made inheritable (Popen's close_fds)."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                out.append((os.POSIX_SPAWN_CLOSE, fd))
        except OSError:   # closed meanwhile (the listing's own descriptor, or by another thread)
            pass
    return out


def _executable(prog: str, env: dict[str, str]) -> str | None:
    """The file Popen would run for ``prog``: as given when it names a path, else ``shutil.which`` along the
    task's PATH (an absolute result is kept: PATH lookups once per program)."""
    if os.sep in prog:
        return prog
    key = (prog, env.get("PATH", os.defpath))
    path = _found.get(key)
    if path is None:
        path = shutil.which(prog, path=key[1])
        if path is not None and os.path.isabs(path):   # one relative to the directory is not kept
            _found[key] = path
    return path
