"""Everything a task started, found and ended: its process group, its session and their descendants (from
/proc), and, for tasks that get one, a cgroup v2 of its own.

A task runs in a session of its own (its pid is its session and process group id). Its process group holds
its background children (a script without job control keeps them there); ``setsid`` children leave both and
are found by parentage while their parent lives. A process that both calls setsid and is re-parented to init
(its parent exited) is out of reach of the scan: only a cgroup holds it.

A task enters its cgroup itself, before it execs its command (``sh -c 'echo 0 > .../cgroup.procs; exec
"$@"'``): moving it from outside after the start races with its first forks. That costs a shell's start
(about 0.5-1 ms of CPU) and moving a process waits for an RCU grace period, so only tasks with a walltime, or
with ``model_opts: {"cgroup": true}``, get one. The cgroups live under the executor's own, as
``qcgpj-<pid>/<n>``, and are reused. Where that is not writable (no cgroup v2, or not delegated to this
user), tasks run without, and one log line says so.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections import deque

log = logging.getLogger(__name__)

# argv prefix that moves the task into the cgroup whose cgroup.procs follows, then runs the task's command.
JOIN = ["/bin/sh", "-c", 'echo 0 2>/dev/null >"$0"; exec "$@"']


def _stat(pid: str) -> tuple[str, int, int, int] | None:
    """state, ppid, process group and session of a process (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def session_and_descendants(sid: int) -> set[int]:
    """The live processes of session (or process group) ``sid`` and all their descendants, from /proc; never
    this process or init. One pass over the process table: a few ms, so only on cancel and walltime."""
    children: dict[int, list[int]] = {}
    roots = {sid}
    for name in os.listdir("/proc"):
        if not name.isdigit() or (st := _stat(name)) is None or st[0] == "Z":
            continue
        pid = int(name)
        children.setdefault(st[1], []).append(pid)
        if st[3] == sid or st[2] == sid:
            roots.add(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    found -= {os.getpid(), 1}
    return found


def signal_all(pids: set[int] | list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Cgroup:
    """One task's cgroup, until the task ends (then its directory goes back to the pool)."""

    __slots__ = ("path", "released")

    def __init__(self, path: str) -> None:
        self.path, self.released = path, False

    def join_argv(self, argv: list[str]) -> list[str]:
        """``argv``, started so that it enters this cgroup first."""
        return [*JOIN, os.path.join(self.path, "cgroup.procs"), *argv]

    def signal(self, sig: int) -> None:
        """Signal every process in it (SIGKILL: all at once through cgroup.kill, Linux >= 5.14)."""
        if self.released:
            return
        if sig == signal.SIGKILL and _write(os.path.join(self.path, "cgroup.kill"), "1"):
            return
        signal_all(_procs(self.path), sig)


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


def _procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(line) for line in f]
    except OSError:
        return []


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError:
        return False


def _cgroup_root() -> str | None:
    """This process's cgroup v2 directory, or None without a cgroup v2 hierarchy."""
    mount = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    mount = left.split()[4]
                    break
        with open("/proc/self/cgroup") as f:
            own = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if mount is None or own is None:
        return None
    return os.path.join(mount, own.lstrip("/"))


def _remove_stale(root: str) -> None:
    """Remove the empty cgroups of executors that are gone without removing theirs (killed)."""
    try:
        names = [n for n in os.listdir(root) if n.startswith("qcgpj-") and n[6:].isdigit()]
    except OSError:
        return
    for name in names:
        if os.path.exists(f"/proc/{name[6:]}"):
            continue
        base = os.path.join(root, name)
        for sub in os.listdir(base):
            if sub.isdigit():
                try:
                    os.rmdir(os.path.join(base, sub))
                except OSError:   # a process still in it: leave it
                    pass
        try:
            os.rmdir(base)
        except OSError:
            pass


class Cgroups:
    """The pool of task cgroups of this process, created when first needed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: str | None = None
        self._off = False
        self._free: deque[str] = deque()
        self._made = 0

    def _setup(self) -> bool:
        root = _cgroup_root()
        if root is None:
            return self._disable("no cgroup v2 here")
        _remove_stale(root)
        self._base = os.path.join(root, f"qcgpj-{os.getpid()}")
        try:
            os.makedirs(self._base, exist_ok=True)
        except OSError as exc:
            return self._disable(f"cannot create cgroups in {root}: {exc.strerror}")
        path = self._take()
        probe = subprocess.run([*JOIN[:2], 'echo 0 >"$0"', os.path.join(path or "", "cgroup.procs")],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if path is None or probe.returncode:
            return self._disable(f"cannot move processes into cgroups under {self._base}: "
                                 f"{probe.stderr.strip()}")
        self._free.append(path)
        return True

    def _disable(self, why: str) -> bool:
        self._off = True
        log.info("%s: tasks are ended through their session and process group only", why)
        return False

    def take(self) -> Cgroup | None:
        """An empty cgroup for a task (``Cgroup.join_argv`` puts the task in it); None where there are none."""
        with self._lock:
            if self._off or (self._base is None and not self._setup()):
                return None
            path = self._take()
        return None if path is None else Cgroup(path)

    def _take(self) -> str | None:
        for _ in range(min(len(self._free), 4)):
            path = self._free.popleft()
            if not _populated(path):
                return path
            self._free.append(path)   # what was killed at its task's end is still going
        self._made += 1
        path = os.path.join(self._base or "", str(self._made))
        try:
            os.mkdir(path)
        except OSError:
            return None
        return path

    def _give_back(self, path: str) -> None:
        with self._lock:
            self._free.append(path)

    def release(self, cg: Cgroup) -> None:
        """The task has been reaped (or never started): kill what is left in its cgroup, and reuse the cgroup
        once empty."""
        if cg.released:
            return
        cg.signal(signal.SIGKILL)
        cg.released = True
        self._give_back(cg.path)

    def tidy(self) -> None:
        """Remove the empty cgroups (the executor stops; those still in use stay, and are reused)."""
        with self._lock:
            if self._base is None:
                return
            for path in list(self._free):
                try:
                    os.rmdir(path)
                    self._free.remove(path)
                except OSError:
                    pass
            try:
                os.rmdir(self._base)
                self._base = None
            except OSError:
                pass


CGROUPS = Cgroups()
