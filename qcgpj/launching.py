"""Where tasks are started from, and how the executor learns that they ended.

CPU binding by inheritance: a process inherits the CPU mask of the thread that starts it, so a task is started
from a launcher thread pinned to its first CPU (widened to all of the task's CPUs for the spawn). Binding the
child afterwards with ``sched_setaffinity(pid)`` migrates a process that already runs, which cost about 30% of
the throughput of short tasks on a 2-core machine; starting it from a thread already on that CPU costs nothing.

Exits are learnt without a thread per task: each process's pidfd sits in the executor's epoll, so the
dispatcher wakes when any of them ends (Linux >= 5.3). Elsewhere, and for tasks that are not processes, a
waiter thread per task blocks in ``Running.wait``.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .resources import Allocation
from .store import Entry

log = logging.getLogger(__name__)

PIDFD = hasattr(os, "pidfd_open")


@dataclass(slots=True, eq=False)
class Slot:
    """A task from the moment its cores are taken until its end is reported. The dispatcher owns it; a
    launcher thread only sets ``running`` (and kills it if ``canceled`` was set meanwhile)."""

    entry: Entry
    alloc: Allocation
    start: str                      # wall-clock start, as reported
    launch: Any = None              # tasks.Launch, once prepared
    running: Any = None             # workers.base.Running, once started
    fd: int | None = None           # pidfd registered in the dispatcher's epoll
    waiter: bool = False            # a waiter thread waits for it instead
    canceled: bool = False
    message: str = ""               # why it ended other than by its exit code (walltime, launch error)
    seq: int = 0                    # tells its walltime entry from those of earlier slots of the same task


class CpuMap:
    """Cores of this node's allocation -> the CPUs this process may run on (core ``c`` is the c-th CPU, modulo
    their number: an executor told of more cores than CPUs oversubscribes them)."""

    def __init__(self) -> None:
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):   # no affinity on this platform: nothing is bound
            self.cpus = []
        self.all = frozenset(self.cpus)

    def pin_home(self, core: int | None) -> int | None:
        """Pin the calling thread to the CPU of ``core``; returns that CPU (None: nothing to bind here)."""
        cpus = self.binding([core]) if core is not None else None
        if cpus is None:
            return None
        os.sched_setaffinity(0, cpus)
        return min(cpus)

    def unpin(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.all)

    def binding(self, cores: list[int]) -> frozenset[int] | None:
        """The CPUs to bind a task on these cores to, or None when binding would not restrict it."""
        if not self.cpus or not cores:
            return None
        cpus = frozenset(self.cpus[c % len(self.cpus)] for c in cores)
        return None if cpus == self.all else cpus


class Launchers:
    """One thread per CPU, created when first needed and pinned to that CPU, that calls ``start(slot)``."""

    def __init__(self, start: Callable[[Slot], None]) -> None:
        self._start = start
        self._queues: dict[int, queue.SimpleQueue] = {}
        self._threads: list[threading.Thread] = []

    def submit(self, cpus: frozenset[int], slot: Slot) -> None:
        first = min(cpus)
        q = self._queues.get(first)
        if q is None:
            q = self._queues[first] = queue.SimpleQueue()
            t = threading.Thread(target=self._serve, args=(first, q), name=f"qcgpj-launch-{first}", daemon=True)
            t.start()
            self._threads.append(t)
        q.put((cpus, slot))

    def _serve(self, cpu: int, q: queue.SimpleQueue) -> None:
        home = {cpu}
        os.sched_setaffinity(0, home)
        while True:
            item = q.get()
            if item is None:
                return
            cpus, slot = item
            wide = len(cpus) > 1   # the thread is on ``cpu``, which is in ``cpus``: widening never migrates it
            if wide:
                os.sched_setaffinity(0, cpus)
            try:
                self._start(slot)
            except Exception:   # _start reports its own failures; this only keeps the thread alive
                log.exception("launcher %d: unexpected error", cpu)
            finally:
                if wide:
                    os.sched_setaffinity(0, home)

    def stop(self) -> None:
        for q in self._queues.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout=5)
