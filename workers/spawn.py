"""Starting a task's process with less of the executor's CPU than ``subprocess.Popen`` spends.

``subprocess.Popen`` spends about 190 µs of the executor's CPU per process, half of it in Python: its object,
handles, encoding argv and the environment's 60-odd variables one by one (a third of that Python). On CPython
3.11-3.13 (:data:`FORK_EXEC`), every task goes through the C function Popen itself calls,
``_posixsubprocess.fork_exec``, with the same arguments Popen gives it (vfork, its own session, stdio on the given
descriptors, every other descriptor closed, SIGPIPE and SIGXFSZ back to their defaults, the working directory)
and the environment encoded in one C-level pass: about 85 µs per process. Its call layout is private and
changes between versions (3.10 has another), hence the version check; elsewhere Popen starts the tasks. (Such
a start raises no ``subprocess.Popen`` audit event.)

Where that path is not available, ``os.posix_spawn`` (about 100 µs) starts a task started alone (nothing else of
the executor's runs: a hop of a dependency chain). It holds the interpreter lock until the child has exec'd, so
with two launcher threads it was slower than Popen; and Python 3.11's cannot change the working directory, so
only a task that runs in the executor's own (every task without a ``wd`` of its own). What its child gets is
Popen's, but for one difference: glibc's posix_spawn leaves its two internal signals (32 and 33, which no program
can use through glibc) ignored in the child.

Any start that fails on either path (a program that cannot be found or run, a directory that cannot be entered,
a variable Popen refuses) goes to Popen instead, which gives the usual error messages in its own words.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys

try:
    from _posixsubprocess import fork_exec as _fork_exec
except ImportError:   # not a POSIX CPython
    _fork_exec = None

#: whether tasks start through ``_posixsubprocess.fork_exec`` (its call layout below is 3.11's, 3.12's and 3.13's)
FORK_EXEC = _fork_exec is not None and (3, 11) <= sys.version_info[:2] <= (3, 13)
AVAILABLE = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2") and os.path.isdir("/proc/self/fd")
_DEFAULT_SIGNALS = tuple(getattr(signal, s) for s in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, s))
_found: dict[tuple[str, str], str] = {}   # (program, PATH) -> executable: PATH lookups once per program
_candidates: dict[tuple[bytes, str], tuple[bytes, ...]] = {}   # (program, PATH) -> the paths Popen tries


class Spawned:
    """The little of Popen that ProcessRunning uses, for a process started here."""

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


def spawn(argv: list[str], env: dict[str, str], fds: tuple[int, int, int], cwd: str,
          alone: bool = True) -> Spawned | None:
    """The started process, or None when these paths cannot start it (the caller uses Popen then). ``fds`` are
    the child's stdin, stdout and stderr; ``alone``: nothing else of the executor's runs (posix_spawn may)."""
    if not argv:
        return None
    if FORK_EXEC:
        return _start(argv, env, fds, cwd)
    return _posix_spawn(argv, env, fds, cwd) if alone else None


def _start(argv: list[str], env: dict[str, str], fds: tuple[int, int, int], cwd: str) -> Spawned | None:
    """Popen's own start (``_execute_child``) without its Python around it."""
    env_list = encode_env(env)
    if env_list is None:
        return None
    exe = os.fsencode(argv[0])
    # As Popen: a bare name is tried along the task's PATH, in order, by the child (execve on each)
    executable_list = (exe,) if os.sep.encode() in exe else _along_path(exe, env)
    err_r, err_w = os.pipe()
    try:
        if err_w < 3:   # the executor runs without its own stdio: Popen moves the pipe out of the way
            os.close(err_w)
            return None
        try:
            pid = _fork_exec(argv, executable_list, True, (err_w,), cwd, env_list,
                             fds[0], -1, -1, fds[1], -1, fds[2], err_r, err_w,
                             True, True, -1, None, None, None, -1, None, True)
        except (OSError, ValueError, TypeError):   # refused in this process: Popen says why
            return None
        finally:
            os.close(err_w)
        failed = _read_all(err_r)   # empty: the child has exec'd (the pipe closes on exec)
    finally:
        os.close(err_r)
    if failed:   # the child could not exec and has exited: Popen runs it again to say why in its words
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        return None
    return Spawned(pid)


def encode_env(env: dict[str, str]) -> list[bytes] | None:
    """``KEY=value`` entries as execve wants them, encoded in one pass in C (Popen encodes each key and value
    on its own, a third of its Python); None for what Popen would refuse (``=`` in a name, a NUL anywhere)."""
    if not env:
        return []
    try:
        entries = os.fsencode("\0".join(map("=".join, env.items()))).split(b"\0")
    except (TypeError, UnicodeError):
        return None
    if len(entries) != len(env) or "=" in "".join(env):
        return None
    return entries


def _along_path(exe: bytes, env: dict[str, str]) -> tuple[bytes, ...]:
    path = env.get("PATH", os.defpath)
    key = (exe, path)
    got = _candidates.get(key)
    if got is None:
        got = _candidates[key] = tuple(os.path.join(os.fsencode(d), exe) for d in os.get_exec_path(env))
    return got


def _read_all(fd: int) -> bytes:
    data = b""
    while True:
        part = os.read(fd, 50000)
        data += part
        if not part or len(data) > 50000:
            return data


def _posix_spawn(argv: list[str], env: dict[str, str], fds: tuple[int, int, int], cwd: str) -> Spawned | None:
    """posix_spawn, for a task alone in the executor's directory; one of the executor's own descriptors (0-2,
    when it runs without them) is left to Popen, which orders such duplications."""
    if not AVAILABLE or min(fds) <= 2:
        return None
    try:
        if cwd != os.getcwd():
            return None
        path = _executable(argv[0], env)
        if path is None:
            return None
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)] + _inherited()
        # setsigmask: the task starts with no signal blocked, whatever the launching thread had blocked then
        # (on CPython 3.10 a child was seen, within the whole test suite, with every signal blocked)
        pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS,
                             setsigmask=())
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
