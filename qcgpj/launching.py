"""Where tasks are started from, and how the executor learns that they ended.

CPU binding by inheritance: a process inherits the CPU mask of the thread that starts it, so a task is started
from a launcher thread pinned to its first CPU (widened to all of the task's CPUs for the spawn). Binding the
child afterwards with ``sched_setaffinity(pid)`` migrates a process that already runs, which cost about 30% of
the throughput of short tasks on a 2-core machine; starting it from a thread already on that CPU costs nothing.

Launcher processes instead of threads (one per CPU, tasks sent over a pipe, ends read back) were tried: a task
on another CPU then waits for two wake-ups across processes, and /bin/true throughput fell by about a quarter.
Starting every task from the dispatcher, moving its own mask to the task's CPU and back, was also slower.

Exits are learnt without a thread per task: each process's pidfd sits in the executor's epoll, so the
dispatcher wakes when any of them ends (Linux >= 5.3). Elsewhere, and for tasks that are not processes, a
waiter thread per task blocks in ``Running.wait``. A process's end is seen before it is reaped, and what it left
behind is killed then (cancel and walltime end the rest of the task: ``qcgpj.workers.sweep``).
"""
from __future__ import annotations

import heapq
import logging
import os
import queue
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from .errors import QcgpjError
from .resources import Allocation
from .store import Entry
from .workers.sweep import CGROUPS

from .workers.base import task_failure

log = logging.getLogger(__name__)

PIDFD = hasattr(os, "pidfd_open")
DEADLINES_MIN = 64     # walltime entries before the heap is first cleared of the tasks that ended


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
    seq: int = 0                    # orders walltime entries of the same deadline
    ended: bool = False


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
        if cpus is None or not _set_affinity(cpus):   # refused: run unpinned, start everything from launchers
            return None
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


def _set_affinity(cpus: set[int] | frozenset[int]) -> bool:
    """Set the calling thread's CPU mask; False (and a warning) where that is refused (a restricted container):
    tasks then start anyway, without the binding."""
    try:
        os.sched_setaffinity(0, cpus)
        return True
    except OSError as exc:
        log.warning("cannot set the CPU mask %s: %s", sorted(cpus), exc)
        return False


class _Widened:
    """The calling thread, pinned to ``home``, runs on ``cpus`` meanwhile, so that a process started now
    inherits them; ``home`` is one of them, so neither change migrates the thread. A class, not a generator:
    it wraps every task's start, and for a one-CPU task (the usual case) it must cost next to nothing."""

    __slots__ = ("home", "cpus")

    def __init__(self, home: int, cpus: frozenset[int]) -> None:
        self.home, self.cpus = home, cpus if len(cpus) > 1 else None

    def __enter__(self) -> None:
        if self.cpus is not None:
            _set_affinity(self.cpus)

    def __exit__(self, *exc: object) -> None:
        if self.cpus is not None:
            _set_affinity({self.home})


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
        _set_affinity({cpu})
        while True:
            item = q.get()
            if item is None:
                return
            cpus, slot = item
            try:
                with _Widened(cpu, cpus):
                    self._start(slot)
            except Exception:   # _start reports its own failures; this only keeps the thread alive
                log.exception("launcher %d: unexpected error", cpu)

    def stop(self) -> None:
        for q in self._queues.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout=5)


class Poll:
    """epoll's interface over poll(2), where there is no epoll (nor pidfds: only the wake-up pipe is in it)."""

    def __init__(self) -> None:
        self._poll = select.poll()

    def register(self, fd: int, events: int) -> None:
        self._poll.register(fd, events)

    def unregister(self, fd: int) -> None:
        self._poll.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._poll.poll(timeout * 1000)

    def close(self) -> None:
        """Nothing to release."""


Ended = Callable[[Slot, "int | None"], None]


class Runner:
    """Starts prepared tasks and learns of their ends, for the executor's dispatcher thread.

    ``ended(slot, code)`` is called in the dispatcher thread (``code`` None: it never started); other threads
    report through ``post("ended", (slot, code))``, which the dispatcher reads from its inbox. The dispatcher
    sleeps in :meth:`wait`, on the pidfds of the tasks and a wake-up pipe (epoll, not a selectors wrapper:
    launcher threads register pidfds while the dispatcher waits in it)."""

    def __init__(self, ended: Ended, post: Callable[[str, Any], None], waiters: int) -> None:
        self._ended, self._post = ended, post
        self.cpus = CpuMap()
        self.home: int | None = None
        self._launchers = Launchers(lambda slot: self._start(slot, here=False))
        self._pool = ThreadPoolExecutor(max_workers=waiters, thread_name_prefix="qcgpj-wait")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()   # helper threads may post while the executor closes
        self._epoll = select.epoll() if hasattr(select, "epoll") else Poll()
        self._epoll.register(self._wake_r, select.POLLIN)
        self._by_fd: dict[int, Slot] = {}
        self._deadlines: list[tuple[float, int, Slot]] = []   # (walltime end, seq, slot): a heap
        self._seq = 0
        self._compact_at = DEADLINES_MIN   # heap size at which ended tasks' entries are dropped

    # ------------------------------------------------------------------ the dispatcher's side
    def pin_home(self, core: int | None) -> None:
        """The dispatcher becomes the launcher of the CPU of ``core``, the one a lone task (a chain of dependent
        jobs) gets: such tasks start without a hand-off to another thread."""
        self.home = self.cpus.pin_home(core)

    def start(self, slot: Slot) -> None:
        """Start a prepared task: here, or from the launcher thread of its CPUs when it is bound elsewhere."""
        launch = slot.launch
        if launch.walltime:
            self._seq += 1
            slot.seq = self._seq
            heapq.heappush(self._deadlines, (time.monotonic() + launch.walltime, slot.seq, slot))
            if len(self._deadlines) >= self._compact_at:
                self._drop_ended_deadlines()
        cpus = self.cpus.binding(launch.ctx.local_cores()) if getattr(launch.worker, "bind_cpus", False) else None
        if cpus is not None and min(cpus) != self.home:
            self._launchers.submit(cpus, slot)   # bound to another CPU (or this thread is not pinned)
        elif self.home is None or launch.worker.runs_inline:
            self._start(slot, here=True)         # no mask to set: this thread is unpinned, or nothing is spawned
        else:
            # This thread is pinned to the home CPU: a task started here gets its CPUs (all of them when it is
            # not bound) through the thread's mask, widened for the spawn.
            with _Widened(self.home, self.cpus.all if cpus is None else cpus):
                self._start(slot, here=True)

    def wait(self, timeout: float) -> None:
        """Sleep until a task ends, the pipe is written or ``timeout``; report the ends, enforce walltimes."""
        for fd, _events in self._epoll.poll(timeout):
            if fd == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            elif (slot := self._by_fd.pop(fd, None)) is not None:
                self._reap(slot)
        self._check_deadlines()

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def wake(self) -> None:
        """Wake the dispatcher (from any thread)."""
        with self._wake_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"x")
                except BlockingIOError:   # the pipe is full: the dispatcher wakes anyway
                    pass

    def stop(self) -> None:
        self._launchers.stop()
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        self.cpus.unpin()
        CGROUPS.tidy()
        self._epoll.close()
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1

    # ------------------------------------------------------------------ any thread
    def _start(self, slot: Slot, here: bool) -> None:
        """Start the task; ``here`` in the dispatcher, else in a launcher thread (which only posts)."""
        code: int | None = None
        try:
            running = slot.launch.worker.start(slot.launch.ctx)
        except QcgpjError as exc:
            slot.message = str(exc)
        except Exception as exc:   # a task must always be reported, whatever broke; the traceback is the task's
            slot.message = task_failure(slot.launch.ctx, "launch failed", exc)
        else:
            slot.running = running
            if slot.canceled:
                running.kill()
            if self._watch_pidfd(slot):   # ready at once if it has ended already: no poll here
                return
            code = running.poll()
            if code is None:
                slot.waiter = True
                self._pool.submit(self._wait_thread, slot)
                return
            slot.message = slot.message or (running.message if code else "")
        if here:
            self._ended(slot, code)
        else:
            self._post("ended", (slot, code))

    def _watch_pidfd(self, slot: Slot) -> bool:
        """Learn of the task's end through its pidfd in the epoll (registered from whichever thread started it);
        False when it has none (not a process, no pidfds here): a waiter thread waits for it instead."""
        pid = slot.running.pid
        if not PIDFD or pid is None:
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        slot.fd = fd
        self._by_fd[fd] = slot
        self._epoll.register(fd, select.POLLIN)
        return True

    def _wait_thread(self, slot: Slot) -> None:
        walltime = slot.launch.walltime
        code = slot.running.wait(walltime)
        slot.message = slot.message or (slot.running.message if code else "")
        if code is None:
            slot.message = f"walltime limit of {walltime:g}s exceeded"
            slot.running.kill()
            code = slot.running.wait(None)
        self._post("ended", (slot, code))

    # ------------------------------------------------------------------ the dispatcher's side, again
    def _reap(self, slot: Slot) -> None:
        self._epoll.unregister(slot.fd)
        os.close(slot.fd)
        slot.fd = None
        code = slot.running.poll()   # kills what the task left behind, then reaps it
        self._ended(slot, code if code is not None else slot.running.wait(None))

    def _drop_ended_deadlines(self) -> None:
        """A task that ends leaves its entry, and with it its slot, in the heap until its deadline: with a
        walltime of a day an executor held every task of the day (3.5 kB each: 20,000 tasks took it from 31 to
        100 MB). Dropped here once the heap has doubled since the last time: amortized O(1) per start. A waiter
        thread enforces its task's walltime itself."""
        self._deadlines = [d for d in self._deadlines if not (d[2].ended or d[2].waiter)]
        heapq.heapify(self._deadlines)
        self._compact_at = max(DEADLINES_MIN, 2 * len(self._deadlines))

    def _check_deadlines(self) -> None:
        """Walltimes of tasks watched through pidfds (a waiter thread enforces its own)."""
        t = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= t:
            _deadline, seq, slot = heapq.heappop(self._deadlines)
            if slot.ended or slot.waiter or slot.message:
                continue
            if slot.running is None:   # a launcher thread is still starting it
                heapq.heappush(self._deadlines, (t + 0.01, seq, slot))
                break
            slot.message = f"walltime limit of {slot.launch.walltime:g}s exceeded"
            slot.running.kill()
