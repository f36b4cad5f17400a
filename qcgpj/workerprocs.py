"""``qcgpj-worker``: the command supervises its executor process(es); ``--processes N``: one node's cores served
by N executor processes instead of one.

One executor drives all its cores from one interpreter: while one of its threads runs Python (preparing a task,
a report, a round trip), a thread that must start the next task on another core waits for the interpreter lock,
and that core idles. With tasks of a few milliseconds this idle grows with the cores (on 2 cores, 80-90 µs per
`/bin/true` task against 14 µs with two processes of one core each; README, "Where the time goes"). Each process
here is an ordinary executor: its share of the cores (original core ids, so reports name the real cores), its
share of the CPUs this command may run on (set before anything else runs in it), its own Redis connection and id.
A job larger than one process's share waits for an executor that has its cores: use it for small tasks.

The supervisor. On Linux the command forks its executor(s), for N=1 too, before any thread or Redis connection
exists, and stays in the foreground as their parent. It is the subreaper of what they start: a task is a session
of its own, so when an executor dies abruptly (SIGKILL, the OOM killer, a segfault) its tasks would run on as
orphans of init while the queue, once the executor's heartbeat expires, starts them again elsewhere: the same task
twice at once, writing the same files. Re-parented to the supervisor instead, they are killed (with their process
groups, and whatever they started, which comes to it in turn) as soon as it reaps the executor, and reaped. It
blocks in wait() otherwise: nothing on the tasks' path. Elsewhere N=1 runs its executor in the command itself.

SIGTERM, SIGINT or SIGHUP sent to the command reach every executor as a drain (SIGHUP as SIGTERM; not where it was
ignored when the command started, by nohup); it exits once all have, with the worst code (128+signal for a signal).
Killed outright (SIGKILL, by a batch system or a test's timeout), it cannot pass anything on: each executor then
gets SIGTERM through the parent-death signal, drains and leaves, rather than serving on with no command to stop it
(or the command's own parent-death signal, where whoever started it asked for one: ``qcgpj bench`` kills its worker
whole, its Redis being gone with it).
"""
from __future__ import annotations

import logging
import os
import select
import signal
import time
from dataclasses import replace
from typing import Iterable, Sequence

from .errors import QcgpjError
from .resources import Node
from .workers import sweep
from .signals import become_subreaper, can_supervise, die_with_parent, parent_death_signal

log = logging.getLogger("qcgpj")


def split(nodes: Sequence[Node], n: int, cpus: Sequence[int],
          in_slurm: bool = False) -> list[tuple[Node, frozenset[int]]]:
    """The node's cores and the CPUs in ``n`` contiguous shares, as even as can be: (node, CPUs) per process.
    Checked before anything is started; what cannot be split is a one-line error."""
    if in_slurm:
        raise QcgpjError(f"--processes {n}: not inside a Slurm allocation (its tasks are srun steps): start one "
                         f"worker per share as srun tasks instead (srun -n {n} -c CPUS qcgpj-worker)")
    if len(nodes) != 1:
        raise QcgpjError(f"--processes {n}: only for the cores of one node (this worker has {len(nodes)} nodes)")
    node = nodes[0]
    if node.gpus:
        raise QcgpjError(f"--processes {n}: not with GPUs (they are not divided between the processes)")
    if n > len(node.cores) or n > len(cpus):
        raise QcgpjError(f"--processes {n}: more processes than cores ({len(node.cores)}) or CPUs ({len(cpus)})")
    return [(replace(node, cores=tuple(part)), frozenset(cpu_part))
            for part, cpu_part in zip(_shares(list(node.cores), n), _shares(list(cpus), n))]


def _shares(items: list[int], n: int) -> list[list[int]]:
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


STEP_GRACE = 60.0   # seconds an orphaned srun gets to cancel its step (Slurm's KillWait is 30 s by default)

# Signals passed on to the executors, as what. SIGHUP (a closed terminal) is a drain too: an executor has no
# handler for it, and would die of it, leaving its tasks to be killed; unless the command was started with it
# ignored (nohup), which it leaves so.
PASSED_ON = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGTERM}

Share = tuple[list[Node], frozenset[int] | None]   # an executor's nodes, and its CPUs (None: the command's)


def fork(shares: Sequence[Share]) -> tuple[int, list[Node]]:
    """Fork one executor process per share; returns, in each of them, its index and its nodes, its CPU mask set.
    The parent never returns: it supervises them (:func:`supervise`) and exits. Called before any thread exists.

    Each executor is a process group of its own, and the supervisor passes the signals sent to it on. In the
    command's group an executor got a terminal's Ctrl-C (sent to the whole foreground group) or a
    ``kill -TERM -PGID`` (a script's, a test's stop) twice, directly and passed on; a second signal tells an
    executor to stop waiting for Redis, so a drain during an outage dropped its reports. The other way, passing
    a signal on only when it was not sent to the whole group, cannot be told apart: a signal says who sent it,
    not to whom. What signals every process of a cgroup (Slurm at its time limit, systemd) still reaches an
    executor twice."""
    parent, adopt = os.getpid(), become_subreaper()
    if not adopt and can_supervise():   # Linux, but refused (a kernel before 3.4, a seccomp filter)
        log.warning("cannot adopt orphaned processes (prctl PR_SET_CHILD_SUBREAPER): the tasks of an executor "
                    "killed outright will run on")
    # When the supervisor dies the executors drain (SIGTERM), unless whoever started the command gave it a
    # parent-death signal of its own: they are part of the command (a killed bench's worker, told to drain, would
    # wait for the bench's dead Redis for ever).
    follow = signal.Signals(parent_death_signal() or signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)   # until each side has its own handling
    pids = []
    for i, (nodes, cpus) in enumerate(shares):
        pid = os.fork()
        if pid == 0:
            _executor_process(i, parent, follow, cpus, mask)
            return i, nodes
        _own_group(pid)
        pids.append(pid)
    os._exit(supervise(pids, adopt, mask))   # the parent's whole life: it never returns to the command


def _own_group(pid: int) -> None:
    """Put an executor in a process group of its own (from both sides of the fork: whichever comes first)."""
    try:
        os.setpgid(pid, pid)
    except OSError:   # it has exited already, or did it itself
        pass


def _executor_process(index: int, parent: int, follow: signal.Signals, cpus: frozenset[int] | None,
                      mask: Iterable[int]) -> None:
    """An executor process's first steps after the fork."""
    _own_group(0)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _follow(parent, follow)
    if cpus is None:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:   # a restricted container: run unbound rather than not at all
        log.warning("executor process %d: cannot set the CPU mask %s: %s", index, sorted(cpus), exc)


def _follow(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """In an executor process: ``sig`` (SIGTERM: a drain) when the supervising command dies, whatever kills it."""
    arm = die_with_parent(sig, parent)
    if arm is not None:
        arm()
    elif os.getppid() != parent:   # no prctl here, and it died already
        os.kill(os.getpid(), sig)


def supervise(pids: list[int], adopt: bool = False, mask: Iterable[int] | None = None) -> int:
    """Pass SIGTERM, SIGINT and SIGHUP on to the executors and wait for all of them; the exit code is the worst.
    ``adopt``: this process is the subreaper of their descendants; it reaps the orphans that end, and ends what
    an executor leaves behind. ``mask``: the signal mask to restore once the handlers are in place."""
    left = set(pids)

    def forward(signum: int, _frame: object) -> None:
        for pid in list(left):
            try:
                os.kill(pid, PASSED_ON[signal.Signals(signum)])
            except ProcessLookupError:
                pass

    for sig in PASSED_ON:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue   # nohup: the executors inherit that and outlive the terminal, as a worker did before
        signal.signal(sig, forward)
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    worst = 0
    while left:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in left:   # an adopted orphan that ended by itself: reaped, no zombie
            continue
        left.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, code if code >= 0 else 128 - code)
        if adopt:
            _ended(pid, code, left)
    return worst


def _ended(pid: int, code: int, live: set[int]) -> None:
    """An executor ended: kill what it left running, and say so in one line (or that it was killed). Orphans
    cannot be told apart by executor (all come to this subreaper), so one that left cleanly while others serve
    (``--processes``) kills nothing: a process a live executor's task put in the background may be among them."""
    killed = kill_leftovers(live) if code != 0 or not live else 0
    if not killed and code >= 0:
        return
    if code < 0:
        try:
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    what = f"killed {killed} task process(es) it left running" if killed else "it left no task process running"
    rerun = "; its tasks run again elsewhere once its heartbeat expires" if code != 0 else ""
    log.warning("executor %d %s: %s%s", pid, how, what, rerun)


def kill_leftovers(live: set[int]) -> int:
    """SIGKILL every child of this process that is not a live executor, with its process group (a task is a
    session and group of its own), and reap them; again for what their deaths re-parent here, until none is
    left; an ``srun`` first cancels its step (:func:`cancel_steps`). Returns how many were running when first
    found (the orphaned tasks, not what they started)."""
    count, first = cancel_steps(live), True
    while strays := [pid for pid in _children() if pid not in live]:
        for pid in strays:
            if first and _state(pid) not in (None, "Z"):
                count += 1
            _kill(pid)
        for pid in strays:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        first = False
    return count


def cancel_steps(live: set[int], grace: float = STEP_GRACE) -> int:
    """Have every orphaned ``srun`` (a task inside a Slurm allocation) cancel its step, and reap it once it has
    ended, within ``grace`` seconds; returns how many there were. The task's processes run under slurmstepd, not
    under us, and a SIGKILLed srun leaves its step running on the node: the task would run on while the queue
    gives it to another executor. On SIGTERM srun cancels the step (Slurm kills all of it, whatever it ignores)
    and exits when it is gone."""
    sruns = {pid: fd for pid in _children() if pid not in live and _comm(pid) == "srun"
             and (fd := _pidfd(pid)) is not None}
    for pid in sruns:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline, waiting = time.monotonic() + grace, dict(sruns)
    while waiting and (left := deadline - time.monotonic()) > 0:
        for fd in select.select(list(waiting.values()), [], [], left)[0]:
            pid = next(p for p, f in waiting.items() if f == fd)
            del waiting[pid]
            os.waitpid(pid, 0)
    for fd in sruns.values():
        os.close(fd)
    if waiting:
        log.warning("srun %s did not end its step within %g s: killed, its step may run on",
                    " ".join(map(str, sorted(waiting))), grace)
    return len(sruns)


def _pidfd(pid: int) -> int | None:
    """A pidfd of one of our children (None: it is gone, or the kernel has none: srun is then killed at once)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    """SIGKILL a stray, and its process group when it leads one (a task: its background children too)."""
    sweep.killpg(pid, signal.SIGKILL)   # not a group leader: no group has its id, nothing happens
    sweep.signal_all((pid,), signal.SIGKILL)


def _children() -> list[int]:
    """This process's children (adopted orphans included), from /proc."""
    me = os.getpid()
    try:
        found = []
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        return found
    except FileNotFoundError:   # a kernel without CONFIG_PROC_CHILDREN: the whole table, by parent
        return [int(n) for n in os.listdir("/proc") if n.isdigit() and _ppid(n) == me]


def _state(pid: int) -> str | None:
    fields = sweep._stat(str(pid))
    return fields[0] if fields else None


def _ppid(pid: str) -> int | None:
    fields = sweep._stat(pid)
    return fields[1] if fields else None
