"""``qcgpj alloc serve``: submits the Slurm allocations that run workers while work waits.

Like the InputQueue it keeps its state in Redis and holds a lease, so a second allocator only stands by and one
killed and restarted continues: the allocations it had submitted are listed under ``alloc:jobs:<queue>``, and any
other job of ours that Slurm shows with the queue's tag (submitted just before a crash) is adopted too.

Each pass, per queue: forget allocations that ended (one that ended, or started but did not register its worker
within the timeout, is a failure: cancelled and counted), then submit what :func:`qcgpj.alloc.decide` asks for.
Failures in a row back off (2, 4, 8 ... s, at most a minute) and pause the queue at the queue's limit, with the
reason in ``alloc list``. Stopping leaves the allocations alone: their workers leave when the work is done.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

import redis

from . import slurm
from .alloc import AllocQueue, Decision, TaskDemand, decide
from .allocstore import AllocStore, now
from .errors import AllocError
from .outage import Outage
from .store import Store

log = logging.getLogger(__name__)
SETTLE = 5.0   # seconds after sbatch before a job missing from squeue counts as ended
WAITING = ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")


class Allocator:
    def __init__(self, client: redis.Redis, redis_url: str, namespace: str = "default", poll: float = 2.0,
                 lease_ttl: float = 10.0, dry_run: bool = False, say: Callable[[str], None] | None = None) -> None:
        self.store = Store(client, namespace)
        self.allocs = AllocStore(client, namespace)
        self.redis_url, self.namespace = redis_url, namespace
        self.poll, self.lease_ttl, self.dry_run = poll, lease_ttl, dry_run
        self.say = say or (lambda text: log.info("%s", text))
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stop_event = threading.Event()
        self.leader = False
        self._cpn: dict[str | None, int | None] = {}   # partition -> cores per node, from sinfo
        self._reported: dict[str, str] = {}            # queue -> the last too-large report logged
        self._slurm_down = False                        # squeue failed at the last pass (logged once)

    def stop(self) -> None:
        self.stop_event.set()

    # ------------------------------------------------------------------ service
    def run(self) -> None:
        """Serve until stopped; Redis outages are waited out, Slurm errors logged and retried next pass."""
        log.info("allocator %s starting", self.id)
        outage = Outage(f"allocator {self.id}", log, cap=5.0)
        last = "$"
        while not self.stop_event.is_set():
            try:
                if self._hold_lease():
                    if last == "$":
                        last = self.store.last_event_id()
                    began = time.monotonic()
                    self.step()
                    outage.ok()
                    # Woken by the queue's events (a submit, an executor leaving), or polled for Slurm's news;
                    # but tasks end (events) all the time: squeue runs at most every poll / 2 seconds.
                    last = self.store.wait_event(last, self.poll)
                    self.stop_event.wait(max(0.0, began + self.poll / 2 - time.monotonic()))
                else:
                    self.stop_event.wait(self.lease_ttl / 3)
            except redis.RedisError as exc:
                self.stop_event.wait(outage.failed(exc))
        if self.leader:
            try:
                self.store.release_lease(self.id, role="alloc")
            except redis.RedisError:
                pass
        log.info("allocator %s stopped; allocations stay until their workers leave", self.id)

    def _hold_lease(self) -> bool:
        was = self.leader
        self.leader = self.store.lease(self.id, int(self.lease_ttl * 1000), role="alloc")
        if self.leader != was:
            log.info("allocator %s: %s", self.id, "acting (leader)" if self.leader else "standing by")
        return self.leader

    # ------------------------------------------------------------------ one pass
    def step(self) -> dict[str, Decision]:
        """One look at demand and capacity for every queue; returns the decisions (for the dry run and tests)."""
        queues = self.allocs.queues()
        if not queues:
            return {}
        demand = self.allocs.demand()
        if self.dry_run:
            in_slurm: list[slurm.SlurmJob] = []
        else:
            try:
                in_slurm = slurm.our_jobs()
            except AllocError as exc:
                if not self._slurm_down:
                    log.warning("allocator: %s; no allocations are submitted until it answers", exc)
                self._slurm_down = True
                return {}
            if self._slurm_down:
                log.info("allocator: Slurm answers again")
            self._slurm_down = False
        registered = self.allocs.slurm_executors()
        out = {}
        for q in queues.values():
            mine = {j.id: j for j in in_slurm if j.name == q.tag(self.namespace)}
            out[q.name] = self._queue_step(q, demand, mine, registered)
        return out

    def _queue_step(self, q: AllocQueue, demand: list[TaskDemand], mine: dict[str, slurm.SlurmJob],
                    registered: dict[str, str]) -> Decision:
        waiting, unlisted = (0, 0) if self.dry_run else self._track(q, mine, registered)
        status = self.allocs.status(q.name)   # after _track, which may have counted failures and paused q
        cpn = self._cores_per_node(q)
        d = decide(q, cpn, demand, waiting, len(mine) + unlisted)
        self._report_too_large(q, d)
        paused = status.get("paused")
        backoff = float(status.get("backoff_until") or 0) - time.time()
        if d.submit and (paused or backoff > 0):
            d.why += f"; not submitting: {'paused: ' + paused if paused else f'backing off {backoff:.0f} s'}"
            d.submit = 0
        if self.dry_run:
            self.say(f"{q.name}: would submit {d.submit}: {d.why}")
            return d
        done = 0
        while done < d.submit and self._submit(q):
            done += 1
        if done:
            log.info("alloc %s: submitted %d: %s", q.name, done, d.why)
        self.allocs.set_status(q.name, last=d.why, toolarge="; ".join(d.too_large))
        return d

    def _track(self, q: AllocQueue, mine: dict[str, slurm.SlurmJob],
               registered: dict[str, str]) -> tuple[int, int]:
        """Update the allocations of q; returns how many will take work soon (queued, or started and not yet
        registered), and how many of those squeue does not list (just submitted, or already ended): these count
        against the limit until they settle."""
        jobs = self.allocs.jobs(q.name)
        for jid in mine.keys() - jobs.keys():   # submitted by a predecessor that died before it wrote it down
            log.info("alloc %s: adopting allocation %s", q.name, jid)
            jobs[jid] = {"submitted": now()}
            self.allocs.put_job(q.name, jid, jobs[jid])
        waiting = unlisted = 0
        for jid, info in jobs.items():
            job = mine.get(jid)
            if jid in registered:
                if not info.get("registered"):
                    info["registered"] = now()
                    self.allocs.put_job(q.name, jid, info)
                    self.allocs.set_status(q.name, failures=0)
                if job is None:
                    self.allocs.drop_job(q.name, jid)
            elif job is None and now() - info.get("submitted", 0) < SETTLE:
                waiting += 1   # just submitted: squeue may not list it yet
                unlisted += 1
            elif job is None:
                self.allocs.drop_job(q.name, jid)
                self._failed(q, f"allocation {jid} ended before its worker registered "
                                f"(see {q.dir}/alloc-{jid}.out)")
            elif job.state in WAITING:
                waiting += 1
            else:
                if "running_since" not in info:
                    info["running_since"] = now()
                    self.allocs.put_job(q.name, jid, info)
                if now() - info["running_since"] > q.register_timeout:
                    slurm.cancel([jid])
                    self.allocs.drop_job(q.name, jid)
                    self._failed(q, f"allocation {jid} started but its worker did not register within "
                                    f"{q.register_timeout:g} s: cancelled (see {q.dir}/alloc-{jid}.out)")
                else:
                    waiting += 1
        return waiting, unlisted

    def _submit(self, q: AllocQueue) -> bool:
        try:
            jid = slurm.submit(q, self.namespace, self.redis_url)
        except AllocError as exc:
            self._failed(q, str(exc))
            return False
        self.allocs.put_job(q.name, jid, {"submitted": now()})
        log.info("alloc %s: submitted allocation %s", q.name, jid)
        return True

    def _failed(self, q: AllocQueue, reason: str) -> None:
        """A failure in a row: back off, and pause the queue at its limit, saying why."""
        failures = int(self.allocs.status(q.name).get("failures") or 0) + 1
        fields: dict[str, object] = {"failures": failures, "reason": reason,
                                     "backoff_until": time.time() + min(60.0, 2.0 ** failures)}
        if failures >= q.failure_limit:
            fields["paused"] = f"{failures} failures in a row; last: {reason}"
            log.error("alloc %s: paused after %d failures in a row (qcgpj alloc resume %s to try again); last: %s",
                      q.name, failures, q.name, reason)
        else:
            log.warning("alloc %s: failure %d of %d: %s", q.name, failures, q.failure_limit, reason)
        self.allocs.set_status(q.name, **fields)

    def _cores_per_node(self, q: AllocQueue) -> int | None:
        if q.cores_per_node:
            return q.cores_per_node
        if self.dry_run:
            return None   # no Slurm to ask
        if self._cpn.get(q.partition) is None:
            try:
                self._cpn[q.partition] = slurm.partition_cores(q.partition)
            except AllocError as exc:
                log.warning("alloc %s: cores per node unknown (%s)", q.name, exc)
        return self._cpn.get(q.partition)

    def _report_too_large(self, q: AllocQueue, d: Decision) -> None:
        text = "; ".join(d.too_large)
        if text and self._reported.get(q.name) != text:
            log.warning("alloc %s: not requested, tasks too large for its allocations: %s", q.name, text)
        self._reported[q.name] = text

