"""``qcgpj-worker --processes N``: one node's cores served by N executor processes instead of one.

One executor drives all its cores from one interpreter: while one of its threads runs Python (preparing a task,
a report, a round trip), a thread that must start the next task on another core waits for the interpreter lock,
and that core idles. With tasks of a few milliseconds this idle grows with the cores (on 2 cores, 80-90 µs per
`/bin/true` task against 14 µs with two processes of one core each; README, "Where the time goes"). Each process
here is an ordinary executor: its share of the cores (original core ids, so reports name the real cores), its
share of the CPUs this command may run on (set before anything else runs in it), its own Redis connection and id.

The command stays in the foreground as their parent: SIGTERM or SIGINT sent to it reaches every executor (a
terminal's Ctrl-C reaches them anyway, being one process group); it exits once all have, with the worst code.
Killed outright (SIGKILL, by a batch system or a test's timeout), it cannot pass anything on: each executor then
gets SIGTERM through the parent-death signal, drains and leaves, rather than serving on with no command to stop it.
A job larger than one process's share waits for an executor that has its cores: use it for small tasks.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from typing import Sequence

from .errors import QcgpjError
from .resources import Node
from .signals import die_with_parent

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


def fork(shares: list[tuple[Node, frozenset[int]]]) -> tuple[int, Node]:
    """Fork one process per share; returns, in each of them, its index and its node, its CPU mask set. The
    parent never returns: it supervises them (:func:`supervise`) and exits. Called before any thread exists."""
    pids, parent = [], os.getpid()
    for i, (node, cpus) in enumerate(shares):
        pid = os.fork()
        if pid == 0:
            _follow(parent)
            try:
                os.sched_setaffinity(0, cpus)
            except OSError as exc:   # a restricted container: run unbound rather than not at all
                log.warning("executor process %d: cannot set the CPU mask %s: %s", i, sorted(cpus), exc)
            return i, node
        pids.append(pid)
    os._exit(supervise(pids))   # the parent's whole life: it never returns to the command


def _follow(parent: int) -> None:
    """In an executor process: SIGTERM (a drain) when the supervising command dies, whatever kills it."""
    arm = die_with_parent(signal.SIGTERM, parent)
    if arm is not None:
        arm()
    elif os.getppid() != parent:   # no prctl here, and it died already
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(pids: list[int]) -> int:
    """Pass SIGTERM and SIGINT on to the executors and wait for all of them; the exit code is the worst."""
    left = set(pids)

    def forward(signum: int, _frame: object) -> None:
        for pid in left:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    worst = 0
    while left:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        left.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, code if code >= 0 else 128 - code)
    return worst
