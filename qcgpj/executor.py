"""The Executor (``qcgpj-worker``): owns the cores of one allocation, claims tasks and runs them.

One dispatcher thread owns all the executor's state and sleeps in its ``Runner`` (``launching``): on the pidfds of
the running tasks (a task's end wakes it directly) and on a wake-up pipe for messages from the helper threads. Each
round trip to Redis (one script, ``sync``) reports what started and what finished, places new work and claims the next
tasks, up to the free cores plus a look-ahead, so that under load a single call serves many tasks. Around it:
- launcher threads, one per CPU and pinned to it, start the tasks that are bound to CPUs (``launching``);
- the waiter blocks in BLMOVE when the dispatcher wants work and the ready list is empty;
- the heartbeat keeps the alive key fresh and learns when the InputQueue declared us dead;
- the control listener receives cancel and drain commands.
A task is in the running list in Redis from the moment it is claimed until its report is applied, so an
executor that dies at any point loses nothing: the InputQueue gives that list back to the others.

Redis may go away for any time: every thread waits it out (one log line per outage), tasks keep running and
their reports wait. Claimed tasks start only under a lease: within LEASE_SHARE of the TTL after the last
heartbeat that found us ALIVE, so never once the InputQueue may have declared us dead and given them to others
(it needs the heartbeat key to have expired). Declared dead all the same (frozen past the TTL), or forgotten by
a Redis that lost its data, the executor kills what it runs (it runs elsewhere now) and joins again.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import redis

from .connection import redis_error, task_environ
from .errors import QcgpjError
from .funcjobs import attach_client, detach_client
from .jobspec import JobSpec
from .launching import Runner, Slot
from .outage import Outage, refused
from .resources import Allocation, CoreAllocator, Node
from .keys import check_executor_id
from .store import Entry, Report, Store, Synced, format_usage, now
from .tasks import SLURM_MODELS, SpecCache, build_launch

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0002   # hand-offs between threads wait on the GIL; 5 ms (the default) caps throughput
MAX_BATCH = 500
REPORT_BATCH = 64      # reports that are sent at once, without waiting for REPORT_DELAY
REPORT_DELAY = 0.03    # seconds a report may wait for others while work goes on (none when nothing runs): at
#                        0.01, short tasks made a round trip per ~10 tasks, each costing Redis a placement pass
PREFETCH_MIN = 16
PREFETCH_MAX = 256      # beyond this, one round trip's script runs long enough to starve the cores meanwhile
PREFETCH_WINDOW = 0.05   # seconds of work an adaptive prefetch holds at the current rate
ADAPT_EVERY = 0.1        # seconds of work between adaptations...
ADAPT_ENDS = 4           # ... or fewer, once this many look-aheads' worth of tasks ended (short tasks, at start)
BACKFILL_WINDOW = 64     # claimed tasks looked at past one that waits for cores where it needs them...
BACKFILL_PATIENCE = 60.0   # ... which they may pass for this many seconds of its wait; then it has the cores as they free
GIVE_UP_WAIT = 5.0        # seconds a worker told twice to leave still waits for its round trip in flight
HOLD_KILLED = 5.0         # seconds the end of a task killed by a signal inside Slurm waits for our own stop
ALLOCATION_ENDS = {signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP}   # how Slurm ends a step
LEASE_SHARE = 0.75       # claimed tasks start only this share of the TTL after a heartbeat found us ALIVE


@dataclass(slots=True)
class Batch:
    """What one round trip reports and asks for."""

    want: int
    adopt: list[str]
    started: list[tuple[str, str]]
    finished: list[Report]
    prefetch: int | None = None   # a new prefetch (credit) for this executor


class Executor:
    """One ``qcgpj-worker``: see the module docstring."""

    def __init__(self, client: redis.Redis, nodes: list[Node], namespace: str = "default",
                 eid: str | None = None, root_wd: str | None = None, prefetch: int | None = None,
                 heartbeat: float = 2.0, ttl: int = 10,
                 exit_when_idle: bool = False, slurm: bool = False, reconcile: float = 5.0,
                 idle_grace: float = 0.0, runner: Callable[..., Runner] = Runner) -> None:
        self.store = Store(client, namespace)
        attach_client(namespace, client)   # ``function`` tasks write their results through this connection
        self.allocator = CoreAllocator(nodes)
        self.nodes = nodes
        host = socket.gethostname().split(".")[0]
        self.eid = check_executor_id(eid) if eid else f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root_wd = os.path.abspath(root_wd or os.getcwd())
        os.makedirs(self.root_wd, exist_ok=True)
        total = self.allocator.total
        # Everything on our ready list is ours already, so we may claim all of it ahead (look-ahead = prefetch);
        # a larger prefetch batches more per round trip but holds more work back from other executors. Unless
        # given, it adapts: about PREFETCH_WINDOW seconds of work at the rate tasks end here, so short tasks
        # get deep batches and long ones keep the default.
        self.prefetch = max(total, PREFETCH_MIN) if prefetch is None else prefetch
        self._adaptive = prefetch is None
        self._prefetch_min = self.prefetch
        self._adapted_at = time.monotonic()
        self._ended_since = 0
        self.heartbeat_every, self.ttl = heartbeat, ttl
        self.exit_when_idle = exit_when_idle
        self.idle_grace = idle_grace
        self._idle_since: float | None = None   # since when it has had nothing to do, nor work it could run waiting
        self.local_node = os.environ.get("SLURMD_NODENAME", host) if slurm else (
            nodes[0].name if len(nodes) == 1 else host)
        self.models = SLURM_MODELS if slurm else None
        self.slurm = slurm
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        # ``runner``: how tasks start and end; ``qcgpj.scalebench`` plugs in one that runs none (a timer)
        self._runner = runner(self._finish, self._post, waiters=max(4, total + 2))
        self._local: deque[Entry] = deque()          # claimed, waiting for cores
        self._waiting, self._waiting_since = "", 0.0   # the first claimed task found waiting, and since when
        self._started: dict[str, str] = {}           # entry -> start time, not yet reported
        self._finished: list[Report] = []
        self._adopt: list[str] = []
        self.reconcile_every = reconcile
        self._next_reconcile = time.monotonic() + reconcile
        self._suspects: set[str] = set()             # unknown running-list entries seen at the last check
        self._oldest: float | None = None            # when the oldest unreported start or end happened
        self._running: dict[str, Slot] = {}          # task -> its slot, from taking its cores to its end
        self._specs = SpecCache()
        self._env: dict[str, str] = {}
        self._stop = threading.Event()
        self._give_up = threading.Event()   # a second stop: leave without waiting for Redis any longer
        self._stops = 0                     # calls of stop() (signals)
        self._want_work = threading.Event()
        self._dead = False
        self._ready_empty = False
        self._inflight: Batch | None = None         # the round trip the syncer thread is making
        self._syncq: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._retry_at = 0.0
        self._threads: list[threading.Thread] = []
        self.tasks_done = 0
        self._lease_until = 0.0        # claimed tasks may start until then (monotonic): see the module docstring
        self._gen = 0                  # registrations so far: a heartbeat's answer counts for the one it was sent in
        self._rejoin = False           # declared dead while alive: join again once no round trip is in flight
        self._void: set[int] = set()   # ids of the slots of tasks killed on a rejoin: their reports are dropped
        self._handback: set[str] = set()   # entries of tasks killed with the allocation: requeued as we leave
        self._followers: dict[str, tuple[Entry, str]] = {}   # task -> its follower (entry, spec JSON): see sync.lua
        self._urgent = False           # a follower started: its start must be taken (or refused) at once
        self._held: list[tuple[float, Slot, int]] = []   # (until, slot, code): see _finish
        self._halted = False           # halt(): the process is ending on a signal, nothing more starts
        self._in_use_since: float | None = None   # since when our id was found registered as live (start)
        self._outage = Outage(f"executor {self.eid}", log)
        # a hop's round trip watches for the answer (Store.sync) where another CPU can make it meanwhile
        self._spin = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Register and start the helper threads; :meth:`serve` is the dispatcher."""
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._env = task_environ()   # the tasks' base environment, as it is when the executor starts
        while not self._register():   # Redis away, or our id in use: wait, but a stop (SIGTERM, Ctrl-C) ends it
            if self._stop.wait(max(0.0, self._retry_at - time.monotonic())):
                raise QcgpjError(f"executor {self.eid}: stopped before it could join"
                                 f" ({'its id is in use' if self._in_use_since else 'Redis unavailable'})")
        log.info("executor %s: %d cores, %d GPU(s) on %d node(s)", self.eid, self.allocator.total,
                 self.allocator.gpus_total, len(self.nodes))
        for target in (self._wait_loop, self._heartbeat_loop, self._control_loop, self._sync_loop):
            t = threading.Thread(target=target, name=f"qcgpj-{target.__name__.strip('_')}", daemon=True)
            t.start()
            self._threads.append(t)

    def _register(self) -> bool:
        """Join (or join again); False when Redis could not be reached (``_retry_at`` says when to try again)."""
        maxnode = max(len(n.cores) for n in self.nodes)
        nodes_text = ";".join(f"{n.name}={len(n.cores)}" for n in self.nodes)
        sent = time.monotonic()
        try:
            in_use = self.store.register(self.eid, self.ttl, socket.gethostname(), nodes_text, self.allocator.total,
                                         maxnode, len(self.nodes), self.prefetch, os.getpid(),
                                         os.environ.get("SLURM_JOB_ID", ""), self.allocator.gpus_total,
                                         self.allocator.gpus_per_node, self.allocator.mem_per_node)
        except redis.RedisError as exc:
            if refused(exc) and self._gen == 0:   # never joined: the user's ACL or password, said in one line
                raise redis_error(exc) from None
            self._retry_at = time.monotonic() + self._outage.failed(exc)
            return False
        self._outage.ok()
        if in_use is not None:
            self._wait_in_use(*in_use)
            return False
        self._gen += 1
        self._renew(sent)
        return True

    def _wait_in_use(self, fresh: bool, host: str, pid: str) -> None:
        """Our id is registered as live. An executor of that id that died (a worker restarted at once with the
        same --id): its heartbeat expires within its TTL and the InputQueue gives its work back, then we join.
        One that keeps its heartbeat fresh for two of our TTLs is alive: another worker with our id, an error."""
        now_ = time.monotonic()
        if self._in_use_since is None:
            self._in_use_since = now_
            log.warning("executor %s: this id is registered as live (host %s, pid %s): waiting until it leaves, or "
                        "its heartbeat expires and the InputQueue gives its work back", self.eid, host, pid)
        elif fresh and now_ - self._in_use_since > 2 * self.ttl:
            raise QcgpjError(f"executor {self.eid}: another live executor has this id (host {host}, pid {pid}); "
                             "give each worker its own --id")
        self._retry_at = now_ + min(1.0, self.ttl / 4)

    def _renew(self, sent: float) -> None:
        """Redis found us ALIVE at a call sent at ``sent``: claimed tasks may start for a while."""
        lapsed = time.monotonic() >= self._lease_until
        self._lease_until = sent + self.ttl * LEASE_SHARE
        if lapsed:
            self._post("wake", None)

    def run(self) -> None:
        """Register, then serve until stopped (or idle, with exit_when_idle); then drain and leave."""
        self.start()
        self.serve()

    def serve(self) -> None:
        # The dispatcher is the launcher of the first core's CPU, the one a lone task (a chain of dependent
        # jobs) gets: such tasks start without a hand-off to another thread.
        self._runner.pin_home(self.allocator.first_local_core(self.local_node))
        try:
            self._dispatch()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop claiming; running tasks finish and are reported, the look-ahead is handed back (drain). Asked
        again (a second SIGTERM or Ctrl-C), the last hand-back stops waiting for a Redis that does not answer."""
        self._stops += 1
        if self._stops > 1:   # asked twice (not a drain command or being told to leave, which also stop)
            self._give_up.set()
        self._stop.set()
        self._post("wake", None)

    def _post(self, kind: str, data: Any) -> None:
        """A message for the dispatcher, from any thread."""
        self._inbox.put((kind, data))
        self._runner.wake()

    # ------------------------------------------------------------------ the dispatcher
    def _dispatch(self) -> None:
        while True:
            if self._rejoin and self._inflight is None and time.monotonic() >= self._retry_at:
                self._join_again()
            # Local progress (results in, tasks started) first, so that one round trip reports it all; but
            # the next claim goes out as soon as the claimed work runs low, before it runs out.
            moved = self._read_inbox() + self._release_held() + self._start_local()
            want = self._want()
            if self._sync_due(want):
                batch = self._take_batch(want)
                if self._running or self._local:
                    # Tasks run or wait meanwhile: the syncer thread waits for Redis, and this thread goes on
                    # reaping and starting the claimed work, so cores do not idle for the length of a round trip.
                    self._inflight = batch
                    self._syncq.put(batch)
                elif self._apply(batch, self._send(batch, spin=self._spin)):   # nothing runs: see Store.sync
                    continue
            if moved:
                continue
            if self._stop.is_set() and (not self._busy() or (self._give_up.is_set() and not self._running)):
                return   # (told twice: reports that Redis does not take now are left to _shutdown)
            if time.monotonic() >= self._next_reconcile and self._inflight is None:
                self._reconcile()
            if self._idle():
                self._adapted_at, self._ended_since = time.monotonic(), 0   # the rate counts busy time only
                if self._idle_exit():
                    return
            else:
                self._idle_since = None   # the grace counts from the latest moment it had nothing to do
            if want and not self._local:
                self._want_work.set()      # the waiter blocks in BLMOVE for us
            self._runner.wait(self._timeout())   # tasks that end are reported through _finish

    def _timeout(self) -> float:
        t = self._report_wait()
        if self._retry_at:
            t = min(t, max(self._retry_at - time.monotonic(), 0.0))
        deadline = self._runner.next_deadline()
        if deadline is not None:
            t = min(t, deadline - time.monotonic())
        if self._held:
            t = min(t, self._held[0][0] - time.monotonic())
        return max(t, 0.0005)

    def _sync_due(self, want: int) -> bool:
        """Round trips are what a busy executor spends its time on: batch reports while work goes on, but
        report at once when nothing runs (a dependent job may be waiting for exactly this report)."""
        if self._inflight is not None or self._rejoin or time.monotonic() < self._retry_at:
            return False
        if self._adopt or self._urgent:
            return True
        unreported = len(self._finished) + len(self._started)
        if unreported and (not self._running or unreported >= REPORT_BATCH or self._report_wait() == 0):
            return True
        return bool(want) and not self._ready_empty and len(self._local) < self._low()

    def _low(self) -> int:
        """Claim again before the claimed work runs out (below half the look-ahead), so that the next batch
        arrives while the cores are still busy with this one."""
        return max(self.allocator.total, self.prefetch // 2)

    def _unreported(self) -> None:
        """A start or end to report happened: the report may wait REPORT_DELAY from the oldest of them."""
        if self._oldest is None:
            self._oldest = time.monotonic()

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
        if self._rejoin:
            return
        try:
            listed = self.store.running_entries(self.eid)
        except redis.RedisError:
            return
        known = {e.raw for e in self._local} | {slot.entry.raw for slot in self._running.values()}
        known |= {r.entry for r in self._finished} | set(self._started) | set(self._adopt) | self._handback
        known |= {slot.entry.raw for _, slot, _ in self._held}
        unknown = {e for e in listed if e not in known}
        orphans, self._suspects = unknown & self._suspects, unknown - self._suspects
        if orphans:
            try:
                back = self.store.release(self.eid, sorted(orphans))
            except redis.RedisError:
                self._suspects |= orphans   # still unknown at the next check
                return
            log.warning("executor %s: %d task(s) in our running list were unknown to us (lost Redis writes?); "
                        "%d went back to the queue", self.eid, len(orphans), back)

    def _want(self) -> int:
        if self._stop.is_set():
            return 0
        return max(0, self.allocator.free + self.prefetch - len(self._local) - len(self._adopt))

    def _busy(self) -> bool:
        return bool(self._running or self._finished or self._started or self._held) or self._inflight is not None

    def _idle(self) -> bool:
        return not (self._busy() or self._local or self._adopt)

    def _idle_exit(self) -> bool:
        if not self.exit_when_idle:
            return False
        try:
            active, stay = self.store.idle(self.eid)
        except redis.RedisError:
            return False
        # The grace keeps an allocation for a burst of dependent jobs submitted just after the queue emptied.
        if active and stay:
            self._idle_since = None
            return False
        self._idle_since = self._idle_since or time.monotonic()
        if time.monotonic() - self._idle_since < self.idle_grace:
            return False
        if active:
            log.info("executor %s: leaving: idle for %gs while the ready work needs more than it has (nodes, "
                     "cores, GPUs or memory); %d job(s) not final", self.eid, self.idle_grace, active)
        return True

    def _read_inbox(self, wait: float = 0.0) -> int:
        """Handle the messages that arrived (``wait``: up to that many seconds for one if none has); returns how
        many."""
        n = 0
        while (wait and not n) or not self._inbox.empty():
            try:
                kind, data = self._inbox.get(timeout=wait or None)   # only this thread takes from the inbox
            except queue.Empty:
                return n
            n += 1
            if kind == "ended":
                slot, code = data
                self._finish(slot, code)
            elif kind == "synced":
                self._inflight = None
                self._apply(*data)
            elif kind == "adopt" and not self._rejoin:
                self._adopt.append(data)
                self._ready_empty = False
            elif kind == "control":
                self._on_control(data)
            elif kind == "dead":
                self._on_dead(*data)
        return n

    def _take_batch(self, want: int) -> Batch:
        batch = Batch(want, self._adopt, list(self._started.items()), self._finished[:MAX_BATCH], self._adapt())
        self._finished = self._finished[MAX_BATCH:]
        self._adopt, self._started, self._urgent = [], {}, False
        self._oldest = time.monotonic() if self._finished else None
        return batch

    def _adapt(self) -> int | None:
        """A new prefetch when the rate at which tasks end here asks for one (changes under 25% are ignored)."""
        t = time.monotonic()
        span = t - self._adapted_at
        if not self._adaptive or (span < ADAPT_EVERY and self._ended_since < ADAPT_ENDS * self.prefetch):
            return None
        rate = self._ended_since / max(span, 1e-6)
        self._adapted_at, self._ended_since = t, 0
        target = min(PREFETCH_MAX, max(self._prefetch_min, int(rate * PREFETCH_WINDOW), self.prefetch // 2))
        return target if abs(target - self.prefetch) * 4 > self.prefetch else None

    def _send(self, batch: Batch, spin: bool = False) -> Synced | None:
        """The round trip (in the dispatcher or the syncer thread); None when Redis could not be reached."""
        try:
            got = self.store.sync(self.eid, batch.want, batch.adopt, batch.started, batch.finished,
                                  batch.prefetch, spin)
        except redis.RedisError as exc:   # away, restarting, out of memory...: keep it all and try again
            self._retry_at = time.monotonic() + self._outage.failed(exc)
            return None
        if self._outage.down:
            self._outage.ok()
        return got

    def _apply(self, batch: Batch, got: Synced | None) -> int:
        """Take in what a round trip returned; returns the number of entries received."""
        if self._rejoin:   # sent before we learned we were declared dead: what it reports or got is void
            return 0
        if got is None:   # keep everything and try again (_send set _retry_at)
            self._finished[:0] = batch.finished
            self._started = {**dict(batch.started), **self._started}
            self._adopt[:0] = batch.adopt
            self._urgent = self._urgent or any(rep.follower for rep in batch.finished)
            return 0
        self._retry_at = 0.0
        self.tasks_done += len(batch.finished)
        if batch.prefetch is not None:
            log.debug("executor %s: prefetch %d -> %d", self.eid, self.prefetch, batch.prefetch)
            self.prefetch = batch.prefetch
        for entry, spec_json in got:
            if spec_json:
                self._specs.get(entry.job, spec_json)
            self._local.append(entry)
        for raw in got.stopped:
            self._stop_follower(raw)
        if got.followers:   # of work claimed, running or named to follow (not of one that ended meanwhile)
            ours = {entry.task for entry, _ in got} | {f[0].task for f in got.followers.values()}
            ours |= {f[0].task for f in self._followers.values()}
            self._followers.update((task, f) for task, f in got.followers.items()
                                   if task in ours or task in self._running)
        self._ready_empty = batch.want > 0 and len(got) < batch.want
        return len(got)

    def _sync_loop(self) -> None:
        while True:
            batch = self._syncq.get()
            if batch is None:
                return
            self._post("synced", (batch, self._send(batch)))

    # ------------------------------------------------------------------ starting tasks
    def _start_local(self) -> int:
        """Start claimed tasks, in claim order, while their cores are free; returns how many started. A task that
        must wait (its cores are free in number, not on the nodes it needs) lets later ones that fit pass it for
        BACKFILL_PATIENCE seconds: parts of a coupled run may wait for each other, and in strict order a part
        queued behind one that waits for the first never started."""
        n, low, i = 0, self._low(), 0
        if self._halted or time.monotonic() >= self._lease_until:
            return 0   # the heartbeat has not found us ALIVE lately: our claims may be someone else's by now
        while i < len(self._local) and not self._stop.is_set() and not self._halted:
            if n and len(self._local) < low and self._inflight is None and not self._ready_empty:
                break   # below the low-water mark: let the dispatcher send the next claim first
            entry = self._local[i]
            alloc = self.allocator.allocate(entry.cores, entry.nodes or None, entry.gpus)
            if alloc is None:
                if not self.allocator.free:   # no core free: none can start (and a busy executor's pass stops here)
                    break
                why = self.allocator.unfit(entry.cores, entry.nodes or None, entry.gpus)
                if why:   # it would wait here for ever: it ends FAILED now, saying why
                    del self._local[i]
                    self._finish(Slot(entry, Allocation(()), now(), message=f"executor {self.eid}: {why}"), None)
                    continue
                if not self._may_pass(entry, i):
                    break
                i += 1
                continue
            del self._local[i]
            slot = Slot(entry, alloc, f"{now()}@{alloc.compact()}")   # the cores ride on the start report
            self._running[entry.task] = slot
            self._started[entry.raw] = slot.start
            self._unreported()
            self._launch(slot)
            n += 1
        return n

    def _may_pass(self, entry: Entry, i: int) -> bool:
        """Whether tasks claimed after ``entry`` (the i-th claimed, waiting for cores) may start before it."""
        if i == 0 and self._waiting != entry.raw:   # the first in line waits from now
            self._waiting, self._waiting_since = entry.raw, time.monotonic()
        return (i + 1 < min(len(self._local), BACKFILL_WINDOW)
                and time.monotonic() - self._waiting_since < BACKFILL_PATIENCE)

    def _launch(self, slot: Slot) -> None:
        """Prepare the task (substitutions, directories, environment) and hand it to the runner."""
        try:
            slot.launch = build_launch(self._spec(slot.entry.job), slot.entry, slot.alloc, self.root_wd,
                                       self.local_node, self.models, self._env)
        except QcgpjError as exc:
            slot.message = str(exc)
        except Exception as exc:   # a task must always be reported, whatever broke: the message says it
            log.debug("task %s: launch failed", slot.entry.task, exc_info=True)
            slot.message = f"launch failed: {' '.join(f'{type(exc).__name__}: {exc}'.split())[:300]}"
        if slot.launch is None:
            self._finish(slot, None)
            return
        slot.launch.ctx.alone = len(self._running) == 1 and not self._local
        self._runner.start(slot)

    def _finish(self, slot: Slot, code: int | None) -> None:
        """The task ended (``code`` None: it never started): free its cores and queue its report."""
        entry = slot.entry
        slot.ended = True
        if self._running.get(entry.task) is slot:
            del self._running[entry.task]
        self.allocator.release(slot.alloc)
        if id(slot) in self._void:   # killed on a rejoin: it was given to others, its report is not ours to make
            self._void.discard(id(slot))
            return
        if code and self.slurm and not slot.canceled and not slot.message and not self._stops and _killed(code):
            # Slurm signals the steps' processes and us at once (scancel, time limit), and the task's end may
            # reach us before our own signal does: its report waits for that signal a moment.
            self._held.append((time.monotonic() + HOLD_KILLED, slot, code))
            return
        self._end(slot, code)

    def _release_held(self, now_: bool = False) -> int:
        """Decide on the held ends that are due (``now_``: all of them): see _finish."""
        n = 0
        while self._held and (now_ or self._stops or self._held[0][0] <= time.monotonic()):
            _, slot, code = self._held.pop(0)
            self._end(slot, code)
            n += 1
        return n

    def _end(self, slot: Slot, code: int | None) -> None:
        entry = slot.entry
        if code and self.slurm and self._stops and not slot.canceled and not slot.message:
            # Signaled inside Slurm, the allocation is ending (scancel, time limit): Slurm kills its steps with
            # us, so this end is not the task's own. It stays in our running list (its start reported, which
            # counts an attempt) and the hand-back as we leave gives it to the queue, to run elsewhere.
            self._handback.add(entry.raw)
            return
        self._started.pop(entry.raw, None)   # its end reports its start too
        if slot.canceled:
            state, message = "CANCELED", "canceled"
        elif code == 0 and not slot.message:
            state, message = "SUCCEED", ""
        else:
            state, message = "FAILED", slot.message or f"exit code {code}"
        usage = format_usage(slot.running.usage) if slot.running is not None else ""
        end, follower = now(), self._followers.pop(entry.task, None)
        child = self._follow(*follower) if follower is not None and state == "SUCCEED" else None
        if follower is not None and child is None:
            self._unfollow(follower[0].task)
        self._finished.append(Report(entry.raw, state, code, slot.start, end, message, usage,
                                     child.entry.raw if child else "", child.start if child else ""))
        self._ended_since += 1
        self._unreported()
        if child is not None:
            self._launch(child)   # after its parent's report: an end of its own (a launch that failed) comes later

    def _follow(self, entry: Entry, spec_json: str) -> Slot | None:
        """The slot of a task's follower, to start on the cores the task just gave back (sync.lua): unless work
        claimed before waits for cores, or nothing may start now."""
        if (self._local or self._stop.is_set() or self._halted or self._rejoin
                or time.monotonic() >= self._lease_until):
            return None
        alloc = self.allocator.allocate(entry.cores, entry.nodes or None, entry.gpus)
        if alloc is None:
            return None
        self._specs.get(entry.job, spec_json)
        slot = Slot(entry, alloc, f"{now()}@{alloc.compact()}")
        self._running[entry.task] = slot
        self._urgent = True
        return slot

    def _unfollow(self, task: str) -> None:
        """A follower that will not start here: the followers named after it will not either."""
        while (f := self._followers.pop(task, None)) is not None:
            task = f[0].task

    def _stop_follower(self, raw: str) -> None:
        """A follower started here may not run (its job was canceled, or its parent's end did not count): Redis
        never saw it start, so it is stopped and nothing of it is reported."""
        task = Entry.parse(raw).task
        self._unfollow(task)
        for rep in [r for r in self._finished if r.entry == raw]:
            self._finished.remove(rep)
            if rep.follower:
                self._stop_follower(rep.follower)
        self._held = [h for h in self._held if h[1].entry.raw != raw]
        slot = self._running.get(task)
        if slot is not None and slot.entry.raw == raw:
            log.info("executor %s: %s may not run after all: stopping it", self.eid, slot.entry.task)
            self._void.add(id(slot))
            slot.canceled = True   # a launcher thread that has not started it yet kills it at once
            if slot.running is not None:
                slot.running.kill()

    def _spec(self, job: str) -> JobSpec:
        try:
            return self._specs.get(job, "")
        except KeyError:   # evicted from the cache: read it again
            return self._specs.get(job, self.store.specs([job])[job] or "")

    # ------------------------------------------------------------------ control
    def _on_control(self, cmd: str) -> None:
        verb, _, arg = cmd.partition(" ")
        if verb == "drain":
            log.info("executor %s: drain requested", self.eid)
            self._stop.set()
        elif verb in ("cancel", "cancelack"):
            self._cancel(lambda task: task == arg or task.startswith(arg + ":"))
            if verb == "cancelack":   # a follower named to us: the canceling client waits until it is dropped
                try:
                    self.store.cancel_acked(self.eid, arg)
                except redis.RedisError:   # it stops waiting once our heartbeat expires (or a while passed)
                    pass

    def _cancel(self, match: Callable[[str], bool]) -> None:
        for task in [t for t, f in self._followers.items() if match(f[0].task)]:
            self._unfollow(task)
        for entry in [e for e in self._local if match(e.task)]:   # claimed, not started: just give back
            self._local.remove(entry)
            self._unfollow(entry.task)
            self._finished.append(Report(entry.raw, "CANCELED", None, now(), now(), "canceled"))
            self._unreported()
        for task, slot in self._running.items():
            if match(task):
                log.info("executor %s: canceling %s", self.eid, task)
                slot.canceled = True   # a launcher thread that has not started it yet kills it at once
                if slot.running is not None:
                    slot.running.kill()

    def halt(self) -> int:
        """Start nothing more and ask every running task to end (SIGTERM): the first half of the end of a local
        script on a signal (qcgpj.manager), ``kill_all`` the second. From a signal handler: it takes no lock and
        starts no thread, as the code the signal interrupted may hold any. Returns how many tasks were running."""
        self._halted = True
        slots = list(self._running.values())
        for slot in slots:
            slot.canceled = True   # a launcher thread that has not started it yet kills it at once
            if slot.running is not None:
                slot.running.terminate()
        return len(slots)

    def running_left(self) -> bool:
        """Whether a task is still starting, or its process has not ended (it may not be reaped yet)."""
        return any(slot.running is None or not slot.running.exited()
                   for slot in list(self._running.values()) if not slot.ended)

    def kill_all(self) -> None:
        """End every running task now, with all it started, from any thread (local mode's second Ctrl-C, which
        exits at once and cannot wait for the dispatcher)."""
        for slot in list(self._running.values()):
            slot.canceled = True   # a launcher thread that has not started it yet kills it at once
            if slot.running is not None:
                slot.running.kill_now()

    def _on_dead(self, state: str, gen: int) -> None:
        """The heartbeat found us DEAD or LEFT (told to leave: stop), or GONE (Redis lost our registration)."""
        if gen != self._gen or self._rejoin or self._stop.is_set():
            return   # an answer about an earlier registration, or we are leaving anyway
        if state == "LEFT":
            log.error("executor %s was told to leave; its tasks were given to others: stopping", self.eid)
            self._dead = True
            self._stop.set()
            self._local.clear()
            self._cancel(lambda task: True)
            return
        what = ("Redis has no record of it (restarted without its data?): the queue's jobs may be lost, and "
                "clients waiting for them are told" if state == "GONE" else "its tasks were given to others")
        log.error("executor %s was declared %s while alive; %s: killing %d running task(s) and joining again",
                  self.eid, state, what, len(self._running))
        self._rejoin = True
        self._lease_until = 0.0
        self._void |= {id(slot) for slot in self._running.values()}
        self._cancel(lambda task: True)
        self._forget()

    def _forget(self) -> None:
        """Drop what we hold from the registration that was declared dead: it went back to the queue."""
        self._local.clear()
        self._finished, self._started, self._adopt, self._oldest = [], {}, [], None
        self._ready_empty, self._urgent = False, False
        self._followers.clear()

    def _join_again(self) -> None:
        self._forget()
        if self._register():
            self._rejoin = False
            log.warning("executor %s joined again", self.eid)

    # ------------------------------------------------------------------ helper threads
    def _wait_loop(self) -> None:
        """Block in BLMOVE while the dispatcher wants work: the entry lands in our running list at once."""
        outage = Outage(f"executor {self.eid}: waiter", log)
        while not self._stop.is_set():
            if not self._want_work.wait(0.5):
                continue
            try:
                entry = self.store.wait_ready(self.eid, 1.0)
            except redis.RedisError as exc:
                if self._stop.is_set():   # left meanwhile: local mode shut its server down, nothing to say
                    return
                self._stop.wait(outage.failed(exc))
                continue
            outage.ok()
            if entry:
                self._want_work.clear()
                self._post("adopt", entry)

    def _heartbeat_loop(self) -> None:
        """Keep the alive key fresh and the start lease renewed; tell the dispatcher when we were declared dead.
        Through an outage it tries more often than every heartbeat, to be back within the grace the InputQueue
        gives after Redis returns."""
        outage = Outage(f"executor {self.eid}: heartbeat", log)
        while True:
            sent, gen, wait = time.monotonic(), self._gen, self.heartbeat_every
            try:
                state = self.store.heartbeat(self.eid, self.ttl)
            except redis.RedisError as exc:
                state, wait = "", min(outage.failed(exc), self.heartbeat_every)
            else:
                outage.ok()
            if state in ("ALIVE", "DRAINING"):
                self._renew(sent)
            elif state:
                self._post("dead", (state, gen))
            if self._stop.is_set():   # draining: one heartbeat per interval while tasks run (not a wait on _stop,
                if not self._running:  # which is set: it went round without a pause)
                    return
                time.sleep(wait)
            elif self._stop.wait(wait) and not self._running:
                return

    def _control_loop(self) -> None:
        outage = Outage(f"executor {self.eid}: control", log)
        while not self._stop.is_set() or self._running:
            try:
                cmd = self.store.control(self.eid, 1.0)
            except redis.RedisError as exc:
                if self._stop.is_set() and not self._running:   # left meanwhile (as the waiter)
                    return
                time.sleep(outage.failed(exc))
                continue
            outage.ok()
            if cmd:
                self._post("control", cmd)

    def _shutdown(self) -> None:
        self._stop.set()
        self._runner.stop()
        # The waiter may still block in BLMOVE: no need to wait for it. requeue marks us LEFT and empties our
        # ready list in one step, and placement never feeds an executor that is not ALIVE, so nothing can
        # reach our running list after the hand-back.
        self._syncq.put(None)
        self._read_inbox()
        told_twice_at: float | None = None
        while self._inflight is not None and not (self._give_up.is_set() and self._outage.down):
            # The syncer's last round trip (told twice, the dispatcher did not wait for it): the ends it reports
            # must reach Redis before the hand-back, which would give those tasks to others to run again. Told
            # twice, we wait for it GIVE_UP_WAIT seconds at most: the kept connection has no socket timeout, so a
            # Redis cut off without a reset never fails the call (and never marks the outage).
            if self._give_up.is_set():
                told_twice_at = told_twice_at or time.monotonic()
                if time.monotonic() - told_twice_at >= GIVE_UP_WAIT:
                    break
            self._read_inbox(wait=0.5)
        self._release_held(now_=True)
        while (self._finished or self._started) and not self._dead and not self._rejoin:
            batch = self._take_batch(0)
            self._apply(batch, self._send(batch))
            # Redis is away: keep the reports and try again, unless told to stop waiting
            if self._retry_at and self._give_up.wait(max(0.0, self._retry_at - time.monotonic())):
                break
        while not self._dead and not (self._give_up.is_set() and self._outage.down):
            # Hand back what is still placed on us or claimed ahead (never started), so it runs elsewhere. Told
            # twice, we only stop waiting for a Redis that is away: Slurm and systemd signal every process of the
            # worker, so the executor gets SIGTERM twice (directly and from its supervisor) on a plain stop.
            try:
                self.store.requeue(self.eid, 1 << 30, "left", final="LEFT")
                break
            except redis.RedisError as exc:
                self._give_up.wait(self._outage.failed(exc))
        if self._handback:
            log.warning("executor %s: %d task(s) ended with the allocation; they go back to the queue", self.eid,
                        len(self._handback))
        if self._give_up.is_set() and self._outage.down:
            log.warning("executor %s: left without Redis: %d report(s) undelivered; once our heartbeat expires, "
                        "the InputQueue gives what we held to other executors (tasks whose end was not reported "
                        "run again)", self.eid, len(self._finished) + len(self._started))
        self.store.close()
        log.info("executor %s: stopped after %d task(s)", self.eid, self.tasks_done)
        self._runner.close()
        detach_client(self.store.keys.namespace, self.store.r)


def _killed(code: int) -> bool:
    """Whether an exit code says the task was killed the way Slurm ends a step (directly, or its shell's child)."""
    return -code in ALLOCATION_ENDS or code - 128 in ALLOCATION_ENDS
