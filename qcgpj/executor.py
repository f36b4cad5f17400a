"""The Executor (``qcgpj-worker``): owns the cores of one allocation, claims tasks and runs them.

One dispatcher thread owns all the executor's state and reads one inbox. Each round trip to Redis (one script,
``sync``) reports what started and what finished, places new work and claims the next tasks, up to the free
cores plus a look-ahead, so that under load a single call serves many tasks. Around it:
- task threads launch through a worker plugin and wait for the exit (spawning from several threads);
- the waiter blocks in BLMOVE when the dispatcher wants work and the ready list is empty;
- the heartbeat keeps the alive key fresh and learns when the InputQueue declared us dead;
- the control listener receives cancel and drain commands.
A task is in the running list in Redis from the moment it is claimed until its report is applied, so an
executor that dies at any point loses nothing: the InputQueue gives that list back to the others.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import redis

from .errors import QcgpjError
from .jobspec import JobSpec
from .resources import Allocation, CoreAllocator, Node
from .store import Entry, Report, Store, now
from .tasks import SLURM_MODELS, SpecCache, build_launch

from workers import get_worker

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0002   # hand-offs between threads wait on the GIL; 5 ms (the default) caps throughput
MAX_BATCH = 500
REPORT_BATCH = 64      # reports that are sent at once, without waiting for REPORT_DELAY
REPORT_DELAY = 0.005   # seconds a report may wait for others while work goes on (none when nothing runs)
PREFETCH_MIN = 16


class Executor:
    """One ``qcgpj-worker``: see the module docstring."""

    def __init__(self, client: redis.Redis, nodes: list[Node], namespace: str = "default",
                 eid: str | None = None, root_wd: str | None = None, prefetch: int | None = None,
                 lookahead: int | None = None, heartbeat: float = 2.0, ttl: int = 10,
                 exit_when_idle: bool = False, slurm: bool = False, reconcile: float = 5.0) -> None:
        self.store = Store(client, namespace)
        self.allocator = CoreAllocator(nodes)
        self.nodes = nodes
        host = socket.gethostname().split(".")[0]
        self.eid = eid or f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root_wd = os.path.abspath(root_wd or os.getcwd())
        os.makedirs(self.root_wd, exist_ok=True)
        total = self.allocator.total
        # Everything on our ready list is ours already, so we may claim all of it ahead (look-ahead = prefetch);
        # a larger prefetch batches more per round trip but holds more work back from executors joining later.
        self.prefetch = max(total, PREFETCH_MIN) if prefetch is None else prefetch
        self.lookahead = self.prefetch if lookahead is None else lookahead
        self.heartbeat_every, self.ttl = heartbeat, ttl
        self.exit_when_idle = exit_when_idle
        self.local_node = os.environ.get("SLURMD_NODENAME", host) if slurm else (
            nodes[0].name if len(nodes) == 1 else host)
        self.models = SLURM_MODELS if slurm else None
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._local: deque[Entry] = deque()          # claimed, waiting for cores
        self._started: list[tuple[str, str]] = []    # (entry, start time) not yet reported
        self._finished: list[Report] = []
        self._adopt: list[str] = []
        self.reconcile_every = reconcile
        self._next_reconcile = time.monotonic() + reconcile
        self._suspects: set[str] = set()             # unknown running-list entries seen at the last check
        self._oldest: float | None = None            # when the oldest unreported start or end happened
        self._running: dict[str, tuple[Entry, Allocation, Any]] = {}   # task -> (entry, cores, Running or None)
        self._canceled: set[str] = set()
        self._lock = threading.Lock()               # guards _running and _canceled against task threads
        self._specs = SpecCache()
        self._env: dict[str, str] = {}
        self._stop = threading.Event()
        self._want_work = threading.Event()
        self._dead = False
        self._ready_empty = False
        self._pool = ThreadPoolExecutor(max_workers=max(4, total + 2), thread_name_prefix="qcgpj-task")
        self._threads: list[threading.Thread] = []
        self.tasks_done = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Register and start the helper threads; :meth:`serve` is the dispatcher."""
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._env = dict(os.environ)   # the tasks' base environment, as it is when the executor starts
        maxnode = max(len(n.cores) for n in self.nodes)
        nodes_text = ";".join(f"{n.name}={len(n.cores)}" for n in self.nodes)
        self.store.register(self.eid, self.ttl, socket.gethostname(), nodes_text, self.allocator.total,
                            maxnode, len(self.nodes), self.prefetch, os.getpid())
        log.info("executor %s: %d cores on %d node(s)", self.eid, self.allocator.total, len(self.nodes))
        for target in (self._wait_loop, self._heartbeat_loop, self._control_loop):
            t = threading.Thread(target=target, name=f"qcgpj-{target.__name__.strip('_')}", daemon=True)
            t.start()
            self._threads.append(t)

    def run(self) -> None:
        """Register, then serve until stopped (or idle, with exit_when_idle); then drain and leave."""
        self.start()
        self.serve()

    def serve(self) -> None:
        try:
            self._dispatch()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop claiming; running tasks finish and are reported, the look-ahead is handed back (drain)."""
        self._stop.set()
        self._inbox.put(("wake", None))

    # ------------------------------------------------------------------ the dispatcher
    def _dispatch(self) -> None:
        while True:
            # Make all the local progress there is (results in, tasks started) before one round trip reports
            # it all: with short tasks one call then carries many.
            while self._read_inbox(block=False) + self._start_local():
                pass
            want = self._want()
            if self._sync_due(want):
                got = self._sync(want)
                self._ready_empty = want > 0 and got < want
                if got:
                    continue
            if self._stop.is_set() and not self._busy():
                return
            if time.monotonic() >= self._next_reconcile:
                self._reconcile()
            if self._idle() and self._idle_exit():
                return
            if want and not self._local:
                self._want_work.set()      # the waiter blocks in BLMOVE for us
            self._read_inbox(block=True, timeout=self._report_wait())

    def _sync_due(self, want: int) -> bool:
        """Round trips are what a busy executor spends its time on: batch reports while work goes on, but
        report at once when nothing runs (a dependent job may be waiting for exactly this report)."""
        if self._adopt:
            return True
        with self._lock:
            unreported = len(self._finished) + len(self._started)
            if unreported and (not self._running or unreported >= REPORT_BATCH or self._report_wait() == 0):
                return True
            return bool(want) and not self._ready_empty and len(self._local) < self.allocator.total

    def _report_wait(self) -> float:
        """Seconds until the oldest unreported event is due (1.0 when there is none)."""
        if self._oldest is None:
            return 1.0
        return max(0.0, self._oldest + REPORT_DELAY - time.monotonic())

    def _reconcile(self) -> None:
        """Entries in our running list in Redis that we do not know were claimed before a Redis crash lost the
        writes that reported them (AOF everysec). Seen unknown twice in a row (so not a claim in flight),
        they go back to the queue. Runs in the dispatcher, so it never races our own round trips."""
        self._next_reconcile = time.monotonic() + self.reconcile_every
        try:
            listed = self.store.running_entries(self.eid)
        except (redis.ConnectionError, redis.TimeoutError):
            return
        with self._lock:
            known = {e.raw for e in self._local} | {e.raw for e, _a, _r in self._running.values()}
            known |= {r.entry for r in self._finished} | {entry for entry, _t in self._started}
        known |= set(self._adopt)
        unknown = {e for e in listed if e not in known}
        orphans, self._suspects = unknown & self._suspects, unknown - self._suspects
        if orphans:
            back = self.store.release(self.eid, sorted(orphans))
            log.warning("executor %s: %d task(s) in our running list were unknown to us (lost Redis writes?); "
                        "%d went back to the queue", self.eid, len(orphans), back)

    def _want(self) -> int:
        if self._stop.is_set():
            return 0
        with self._lock:
            return max(0, self.allocator.free + self.lookahead - len(self._local) - len(self._adopt))

    def _busy(self) -> bool:
        return bool(self._running or self._finished or self._started)

    def _idle(self) -> bool:
        return not (self._running or self._local or self._finished or self._started or self._adopt)

    def _idle_exit(self) -> bool:
        return self.exit_when_idle and self.store.active() == 0

    def _read_inbox(self, block: bool, timeout: float = 1.0) -> int:
        """Handle what arrived (waiting up to ``timeout`` if ``block``); returns how many messages."""
        try:
            msg = self._inbox.get(timeout=max(timeout, 0.0005)) if block else self._inbox.get_nowait()
        except queue.Empty:
            return 0
        n = 0
        while True:
            self._handle(*msg)
            n += 1
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return n

    def _handle(self, kind: str, data: Any) -> None:
        if kind == "adopt":
            self._adopt.append(data)
            self._ready_empty = False
        elif kind == "control":
            self._on_control(data)
        elif kind == "dead":
            self._on_dead(data)

    def _sync(self, want: int) -> int:
        """One round trip; returns the number of entries received."""
        with self._lock:
            finished, self._finished = self._finished[:MAX_BATCH], self._finished[MAX_BATCH:]
            started, self._started = self._started, []
            self._oldest = time.monotonic() if self._finished else None
        adopt, self._adopt = self._adopt, []
        try:
            got = self.store.sync(self.eid, want, adopt, started, finished)
        except (redis.ConnectionError, redis.TimeoutError) as exc:   # keep everything and try again
            log.warning("executor %s: Redis unavailable (%s); retrying", self.eid, exc)
            with self._lock:
                self._finished[:0], self._started[:0] = finished, started
            self._adopt[:0] = adopt
            self._stop.wait(1.0)
            return 0
        self.tasks_done += len(finished)
        for entry, spec_json in got:
            if spec_json:
                self._specs.get(entry.job, spec_json)
        with self._lock:
            self._local.extend(entry for entry, _spec in got)
        return len(got)

    def _take_local(self) -> tuple[Entry, Allocation] | None:
        """With the lock held: the next claimed task, in claim order, if its cores are free; marked running."""
        if not self._local or self._stop.is_set():
            return None
        entry = self._local[0]
        alloc = self.allocator.allocate(entry.cores, entry.nodes or None)
        if alloc is None:
            return None
        self._local.popleft()
        self._running[entry.task] = (entry, alloc, None)
        self._started.append((entry.raw, now()))
        if self._oldest is None:
            self._oldest = time.monotonic()
        return entry, alloc

    def _start_local(self) -> int:
        """Start claimed tasks while their cores are free; returns how many started."""
        n = 0
        while True:
            with self._lock:
                got = self._take_local()
            if got is None:
                return n
            n += 1
            entry, alloc = got
            spec = self._spec(entry.job)
            if self._inline(spec.model):
                self._run_task(entry, alloc, spec)
            else:
                self._pool.submit(self._run_task, entry, alloc, spec)

    def _inline(self, model: str) -> bool:
        try:
            return get_worker(self.models.get(model, model) if self.models else model).runs_inline
        except QcgpjError:   # an unknown model: the task thread reports it as the task's failure
            return False

    def _spec(self, job: str) -> JobSpec:
        try:
            return self._specs.get(job, "")
        except KeyError:   # evicted from the cache: read it again
            return self._specs.get(job, self.store.specs([job])[job] or "")

    # ------------------------------------------------------------------ one task (pool thread)
    def _run_task(self, entry: Entry, alloc: Allocation, spec: JobSpec) -> None:
        """Run a task; then, while claimed work waits and its cores are free, go on with the next one here: a
        freed core is reused at once, without waiting for the dispatcher (which may be in a round trip)."""
        while True:
            report = self._execute(entry, alloc, spec)
            with self._lock:
                self._running.pop(entry.task, None)
                if entry.task in self._canceled:
                    self._canceled.discard(entry.task)
                    report = Report(report.entry, "CANCELED", report.exit_code, report.start, report.end, "canceled")
                self.allocator.release(alloc)
                self._finished.append(report)
                if self._oldest is None:
                    self._oldest = time.monotonic()
                got = self._take_local()
            self._inbox.put(("done", None))
            if got is None:
                return
            entry, alloc = got
            spec = self._spec(entry.job)

    def _execute(self, entry: Entry, alloc: Allocation, spec: JobSpec) -> Report:
        t0 = now()
        state, code, message = "FAILED", None, ""
        try:
            launch = build_launch(spec, entry, alloc, self.root_wd, self.local_node, self.models, self._env)
            running = launch.worker.start(launch.ctx)
            with self._lock:
                self._running[entry.task] = (entry, alloc, running)
                canceled = entry.task in self._canceled
            if canceled:
                running.kill()
            code = running.wait(launch.walltime)
            if code is None:
                running.kill()
                code = running.wait(None)
                message = f"walltime limit of {launch.walltime:g}s exceeded"
            elif code == 0:
                state = "SUCCEED"
            else:
                message = f"exit code {code}"
        except QcgpjError as exc:
            message = str(exc)
        except Exception as exc:   # a task must always be reported, whatever broke
            log.exception("task %s: launch failed", entry.task)
            message = f"launch failed: {exc}"
        return Report(entry.raw, state, code, t0, now(), message)

    # ------------------------------------------------------------------ control
    def _on_control(self, cmd: str) -> None:
        verb, _, arg = cmd.partition(" ")
        if verb == "drain":
            log.info("executor %s: drain requested", self.eid)
            self._stop.set()
        elif verb == "cancel":
            self._cancel(lambda task: task == arg or task.startswith(arg + ":"))

    def _cancel(self, match: Callable[[str], bool]) -> None:
        with self._lock:
            for entry in [e for e in self._local if match(e.task)]:   # claimed, not started: just give back
                self._local.remove(entry)
                self._finished.append(Report(entry.raw, "CANCELED", None, now(), now(), "canceled"))
                if self._oldest is None:
                    self._oldest = time.monotonic()
            victims = [(task, run) for task, (_e, _a, run) in self._running.items() if match(task)]
            self._canceled.update(task for task, _run in victims)
        for task, run in victims:
            log.info("executor %s: canceling %s", self.eid, task)
            if run is not None:
                run.kill()

    def _on_dead(self, state: str) -> None:
        log.error("executor %s was declared %s; its tasks were given to others: stopping", self.eid, state)
        self._dead = True
        self._stop.set()
        with self._lock:
            self._local.clear()
        self._cancel(lambda task: True)

    # ------------------------------------------------------------------ helper threads
    def _wait_loop(self) -> None:
        """Block in BLMOVE while the dispatcher wants work: the entry lands in our running list at once."""
        while not self._stop.is_set():
            if not self._want_work.wait(0.5):
                continue
            try:
                entry = self.store.wait_ready(self.eid, 1.0)
            except (redis.ConnectionError, redis.TimeoutError):
                self._stop.wait(1.0)
                continue
            if entry:
                self._want_work.clear()
                self._inbox.put(("adopt", entry))

    def _heartbeat_loop(self) -> None:
        while True:
            try:
                state = self.store.heartbeat(self.eid, self.ttl)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("executor %s: heartbeat failed: %s", self.eid, exc)
                state = "ALIVE"
            if state in ("DEAD", "LEFT") and not self._stop.is_set():
                self._inbox.put(("dead", state))
                return
            if self._stop.wait(self.heartbeat_every) and not self._running:
                return

    def _control_loop(self) -> None:
        while not self._stop.is_set() or self._running:
            try:
                cmd = self.store.control(self.eid, 1.0)
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(1.0)
                continue
            if cmd:
                self._inbox.put(("control", cmd))

    def _shutdown(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
        # The waiter may still block in BLMOVE: no need to wait for it. requeue marks us LEFT and empties our
        # ready list in one step, and placement never feeds an executor that is not ALIVE, so nothing can
        # reach our running list after the hand-back.
        self._read_inbox(block=False)
        while (self._finished or self._started) and not self._dead:
            self._sync(0)
        if not self._dead:
            # Hand back what is still placed on us or claimed ahead (never started), so it runs elsewhere.
            self.store.requeue(self.eid, 1 << 30, "left", final="LEFT")
        log.info("executor %s: stopped after %d task(s)", self.eid, self.tasks_done)
