"""The Executor (``qcgpj-worker``): owns the cores of one allocation, claims tasks and runs them.

Threads, each with one job:
- the claim loop (the caller's thread) claims work while cores are free, blocking in BLMOVE when idle;
- task threads (a pool, one per running task) launch through a worker plugin and wait for the exit;
- the reporter sends finished tasks back in batches (one script call for all that finished meanwhile);
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
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import redis

from .errors import QcgpjError
from .resources import Allocation, CoreAllocator, Node
from .store import Entry, Report, Store, now
from .tasks import SLURM_MODELS, SpecCache, build_launch

log = logging.getLogger(__name__)


class Executor:
    """One ``qcgpj-worker``: see the module docstring."""

    def __init__(self, client: redis.Redis, nodes: list[Node], namespace: str = "default",
                 eid: str | None = None, root_wd: str | None = None, prefetch: int | None = None,
                 heartbeat: float = 2.0, ttl: int = 10, exit_when_idle: bool = False,
                 claim_batch: int = 64, slurm: bool = False) -> None:
        self.store = Store(client, namespace)
        self.client = client
        self.nodes = nodes
        self.allocator = CoreAllocator(nodes)
        host = socket.gethostname().split(".")[0]
        self.eid = eid or f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root_wd = os.path.abspath(root_wd or os.getcwd())
        self.prefetch = self.allocator.total if prefetch is None else prefetch
        self.heartbeat_every, self.ttl = heartbeat, ttl
        self.exit_when_idle = exit_when_idle
        self.claim_batch = claim_batch
        self.local_node = os.environ.get("SLURMD_NODENAME", host) if slurm else (
            nodes[0].name if len(nodes) == 1 else host)
        self.models = SLURM_MODELS if slurm else None
        self._cond = threading.Condition()
        self._running: dict[str, tuple[Entry, object]] = {}   # task id -> (entry, Running or None)
        self._canceled: set[str] = set()
        self._specs = SpecCache()
        self._waiting: deque[Entry] = deque()   # claimed, but the cores are fragmented across nodes: later
        self._reports: queue.Queue[Report | None] = queue.Queue()
        self._stop = threading.Event()      # stop claiming
        self._dead = threading.Event()      # the InputQueue gave our work away
        self._pool = ThreadPoolExecutor(max_workers=max(4, self.allocator.total + 4),
                                        thread_name_prefix="qcgpj-task")
        self._threads: list[threading.Thread] = []
        self.tasks_done = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Register and start the helper threads; :meth:`run` is the claim loop."""
        maxnode = max(len(n.cores) for n in self.nodes)
        nodes_text = ";".join(f"{n.name}={len(n.cores)}" for n in self.nodes)
        self.store.register(self.eid, self.ttl, socket.gethostname(), nodes_text, self.allocator.total,
                            maxnode, len(self.nodes), self.prefetch, os.getpid())
        log.info("executor %s: %d cores on %d node(s)", self.eid, self.allocator.total, len(self.nodes))
        for target in (self._report_loop, self._heartbeat_loop, self._control_loop):
            t = threading.Thread(target=target, name=f"qcgpj-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def run(self) -> None:
        """Register, then claim and launch until stopped (or idle, with exit_when_idle); then drain and leave."""
        self.start()
        self.serve()

    def serve(self) -> None:
        """The claim loop of a started executor, then the drain."""
        try:
            self._claim_loop()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop claiming; running tasks finish and are reported (drain)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ claim loop
    def _claim_loop(self) -> None:
        first = ""
        while not self._stop.is_set():
            self._start_waiting()
            with self._cond:
                while self.allocator.free == 0 and not self._stop.is_set():
                    self._cond.wait(0.5)
                free = self.allocator.free - sum(e.cores for e in self._waiting)
            if self._stop.is_set():
                break
            if free <= 0:
                with self._cond:
                    self._cond.wait(0.5)
                continue
            more, entries = self.store.claim(self.eid, free, self.claim_batch, first)
            first = ""
            for entry, spec_json in entries:
                self._launch(entry, spec_json)
            if entries:
                continue
            if more:   # the head of our list needs more cores than are free now: wait for a task to end
                with self._cond:
                    self._cond.wait(0.5)
                continue
            if self._idle_exit():
                break
            first = self.store.wait_ready(self.eid, 1.0) or ""

    def _idle_exit(self) -> bool:
        if not self.exit_when_idle:
            return False
        with self._cond:
            busy = bool(self._running) or bool(self._waiting)
        if busy or not self._reports.empty():
            return False
        return self.store.active() == 0

    def _start_waiting(self) -> None:
        for _ in range(len(self._waiting)):
            entry = self._waiting.popleft()
            self._launch(entry)

    def _launch(self, entry: Entry, spec_json: str = "") -> None:
        if spec_json:
            self._specs.get(entry.job, spec_json)   # cache it now: the next entries of this job come without it
        with self._cond:
            alloc = self.allocator.allocate(entry.cores, entry.nodes or None)
            if alloc is None:
                self._waiting.append(entry)
                return
            self._running[entry.task] = (entry, None)
        self._pool.submit(self._run_task, entry, alloc)

    # ------------------------------------------------------------------ one task (pool thread)
    def _run_task(self, entry: Entry, alloc: Allocation) -> None:
        t0 = now()
        state, code, message = "FAILED", None, ""
        try:
            spec = self._spec(entry.job)
            launch = build_launch(spec, entry, alloc, self.root_wd, self.local_node, self.models)
            running = launch.worker.start(launch.ctx)
            with self._cond:
                self._running[entry.task] = (entry, running)
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
        with self._cond:
            self._running.pop(entry.task, None)
            if entry.task in self._canceled:
                self._canceled.discard(entry.task)
                state, message = "CANCELED", "canceled"
            self.allocator.release(alloc)
            self._cond.notify_all()
        self._reports.put(Report(entry.raw, state, code, t0, now(), message))

    # ------------------------------------------------------------------ helper threads
    def _report_loop(self) -> None:
        """Batch reports: whatever finished while the previous batch was being sent goes in the next call."""
        while True:
            rep = self._reports.get()
            if rep is None:
                return
            batch = [rep]
            while len(batch) < 500:
                try:
                    nxt = self._reports.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._reports.put(None)
                    break
                batch.append(nxt)
            self._send(batch)

    def _send(self, batch: list[Report]) -> None:
        while True:
            try:
                self.store.finish(self.eid, batch)
                self.tasks_done += len(batch)
                return
            except redis.ConnectionError as exc:   # keep the reports until Redis is back
                log.warning("executor %s: reporting %d task(s) failed (%s); retrying", self.eid, len(batch), exc)
                time.sleep(1.0)

    def _heartbeat_loop(self) -> None:
        while not self._dead.is_set():
            try:
                state = self.store.heartbeat(self.eid, self.ttl)
            except redis.ConnectionError as exc:
                log.warning("executor %s: heartbeat failed: %s", self.eid, exc)
                state = "ALIVE"
            if state in ("DEAD", "LEFT") and not self._stop.is_set():
                log.error("executor %s was declared %s; its tasks were given to others: stopping", self.eid, state)
                self._dead.set()
                self.stop()
                self._kill_all()
                return
            if self._stop.wait(self.heartbeat_every) and not self._busy():
                return

    def _control_loop(self) -> None:
        while not self._stop.is_set() or self._busy():
            try:
                cmd = self.store.control(self.eid, 1.0)
            except redis.ConnectionError:
                time.sleep(1.0)
                continue
            if cmd:
                self._on_control(cmd)

    def _on_control(self, cmd: str) -> None:
        verb, _, arg = cmd.partition(" ")
        if verb == "drain":
            log.info("executor %s: drain requested", self.eid)
            self.stop()
        elif verb == "cancel":
            self._cancel_matching(lambda task: task == arg or task.startswith(arg + ":"))

    def _cancel_matching(self, match: Callable[[str], bool]) -> None:
        with self._cond:
            victims = [(task, run) for task, (_e, run) in self._running.items() if match(task)]
            for task, _run in victims:
                self._canceled.add(task)
        for task, run in victims:
            log.info("executor %s: canceling %s", self.eid, task)
            if run is not None:
                run.kill()

    def _kill_all(self) -> None:
        self._cancel_matching(lambda task: True)

    def _spec(self, job: str):
        try:
            return self._specs.get(job, "")
        except KeyError:   # evicted from the cache: read it again
            return self._specs.get(job, self.store.specs([job])[job] or "")

    def _busy(self) -> bool:
        with self._cond:
            return bool(self._running)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        self._reports.put(None)
        for t in self._threads:
            if t.name.endswith("_report_loop"):
                t.join()
        if not self._dead.is_set():
            # Hand back whatever is still placed on us (never started), so it runs elsewhere.
            self.store.requeue(self.eid, 1 << 30, "left", final="LEFT")
        self._dead.set()
        log.info("executor %s: stopped after %d task(s)", self.eid, self.tasks_done)

