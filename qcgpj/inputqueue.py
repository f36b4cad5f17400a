"""The InputQueue: the thin, stateless promoter and placer.

Dependency counting and promotion happen inside the atomic scripts that report results, so the InputQueue is
off the per-task path: it wakes on events, makes the deep placement pass (the scripts place only a few tasks
inline), takes the work of executors whose heartbeat stopped back to the queue, holds a leader lease so
that a second InputQueue started by mistake only stands by, and does the housekeeping (``Janitor``) one bounded
step per turn of its loop, so that no clean-up, however large, holds these duties up. It keeps no state:
killed and restarted, it continues from Redis and re-reads the events it had not acknowledged.

Heartbeats lapse while Redis is away (or paused, or restarted from disk: their keys expire meanwhile), for the
executors as for us, so an executor is declared dead only once its heartbeat has been missing for its TTL while
we could see Redis: after we (re)connect, Redis restarts (its run id changes) or we could not look for a while,
every executor gets a grace of one TTL to heartbeat again.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis

from .housekeeping import DAY, Janitor
from .connection import redis_error
from .outage import Outage, refused
from .store import Store

log = logging.getLogger(__name__)

CONSUMER = "inputqueue"   # one fixed consumer name: a restarted InputQueue re-reads its own unacknowledged events
GAP = 2.0   # seconds between two checks beyond check_every that count as a time we could not see Redis


class _Interrupted(BaseException):
    """Raised by :meth:`InputQueue.stop` in a signal handler, only while the serving thread waits for events."""


class InputQueue:
    def __init__(self, client: redis.Redis, namespace: str = "default", max_attempts: int = 3,
                 check_every: float = 1.0, lease_ttl: float = 5.0, iq_id: str | None = None,
                 min_pass: float = 0.05, executor_retention: float = DAY, keep_finished: float | None = None,
                 unplaceable_timeout: float = 300.0) -> None:
        self.store = Store(client, namespace)
        self.janitor = Janitor(self.store, executor_retention, keep_finished)
        self.max_attempts = max_attempts
        self.unplaceable_timeout = unplaceable_timeout   # seconds a job may fit no live executor; 0: for ever
        self.check_every = check_every
        self.lease_ttl = lease_ttl
        self.min_pass = min_pass
        self.id = iq_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stop_event = threading.Event()
        self.leader = False
        self._serving: int | None = None   # the serving thread's id
        self._reading = False              # it waits for events now
        self._run_id: str | None = None     # the Redis server's run id at the last check
        self._checked = 0.0                # when executors were last checked (0: never since we (re)connected)
        self._grace_from = 0.0             # heartbeats missing since before this moment do not count

    def stop(self) -> None:
        """Stop at once, not at the end of the current wait for events (up to 0.25 s), and hand the lease on.

        From another thread a ``stop`` event wakes that wait. In a signal handler, which must do no I/O, the
        wait is abandoned by an exception: what it would have read stays pending and is re-read on restart."""
        self.stop_event.set()
        if self._serving is None:
            return   # not serving yet: run() sees the flag before its first wait
        if threading.get_ident() != self._serving:
            try:
                self.store.emit("stop", self.id)
            except redis.RedisError:
                pass   # Redis down: the wait ends with its timeout
        elif self._reading:
            raise _Interrupted

    def run(self) -> None:
        """Serve until stopped; Redis outages are waited out with backoff."""
        self._serving = threading.get_ident()
        log.info("inputqueue %s starting", self.id)
        outage = Outage(f"inputqueue {self.id}", log, cap=2.0)
        try:
            while not self.stop_event.is_set():
                try:
                    self._serve(outage)
                    break
                except redis.RedisError as exc:   # an outage, a restart, a lost stream group, OOM: never fatal
                    if refused(exc):
                        raise redis_error(exc) from None
                    self._checked = 0.0
                    self.stop_event.wait(outage.failed(exc))
        except _Interrupted:
            pass
        self._resign()

    def _resign(self) -> None:
        """A standby need not wait for our lease to expire."""
        if not self.leader:
            return
        try:
            self.store.release_lease(self.id)
            self.leader = False
        except redis.RedisError as exc:
            log.warning("inputqueue %s: lease not released (%s); it expires by itself", self.id, exc)

    def _serve(self, outage: Outage) -> None:
        self.store.ensure_group()   # also after a Redis that lost its data (NOGROUP)
        outage.ok()
        next_check = next_lease = 0.0
        omitting = 0   # per-iteration omissions left to do: the next pass comes at once while there are
        while not self.stop_event.is_set():
            if time.monotonic() >= next_lease:
                if not self._hold_lease():
                    self.stop_event.wait(self.lease_ttl / 3)
                    continue
                next_lease = time.monotonic() + self.lease_ttl / 3
            busy = self.janitor.busy or omitting
            ids = self._read_events(0.0 if busy else min(0.25, self.lease_ttl / 3))
            checking = time.monotonic() >= next_check
            if checking:
                self.check_executors()
                next_check = time.monotonic() + self.check_every
            omitting = self.store.place_and_ack(ids, unplaceable=self.unplaceable_timeout if checking else None)
            self.janitor.tick()   # one bounded step of housekeeping per turn (see Janitor)
            # Coalesce: placement also runs inline in the scripts, so the deep pass need not follow every
            # event; what arrives meanwhile is read in one batch by the next pass. Omissions left to do go on at
            # once: a step holds Redis ~15 ms, and others' calls come in between.
            if not omitting:
                self.stop_event.wait(self.min_pass)

    def _read_events(self, timeout: float) -> list[str]:
        """Waits up to ``timeout`` for events: not while a housekeeping pass is under way, whose next step waits."""
        self._reading = True
        try:
            if self.stop_event.is_set():
                return []
            return self.store.read_group(CONSUMER, timeout=timeout)
        finally:
            self._reading = False

    def _hold_lease(self) -> bool:
        was = self.leader
        self.leader = self.store.lease(self.id, int(self.lease_ttl * 1000))
        if self.leader != was:
            log.info("inputqueue %s: %s", self.id, "acting (leader)" if self.leader else "standing by")
            if self.leader:
                self.store.emit("leader", self.id)
        return self.leader

    def check_executors(self) -> None:
        """Executors whose heartbeat key expired are dead: their running and placed tasks go back to READY.
        Not within one TTL of a time we could not see Redis (see the module docstring)."""
        t = time.monotonic()
        run_id = self.store.server_run()
        if run_id != self._run_id or t - self._checked > self.check_every + GAP:
            if self._run_id is not None:
                log.info("inputqueue %s: Redis restarted or out of sight; executors get one TTL to heartbeat", self.id)
            self._run_id, self._grace_from = run_id, t
        self._checked = t
        for eid, ttl in self.store.dead_executors().items():
            if t - self._grace_from < ttl:
                continue
            taken = self.store.requeue(eid, self.max_attempts, "lost (no heartbeat)")
            if taken is None:   # it left, or its heartbeat came back, since dead_executors() looked
                continue
            requeued, failed = taken
            log.warning("executor %s lost: %d task(s) requeued, %d failed (attempts spent)", eid, requeued, failed)
