"""Durable submits: after the batch is written, wait until Redis confirms that it survives a crash.

With ``appendfsync everysec`` Redis acknowledges a write up to a second before it is on disk. A durable submit
waits, on the connection that wrote the batch, for the confirmations this server can give: WAITAOF (Redis >= 7.2,
the local AOF fsynced), WAIT (connected replicas), or none needed (``appendfsync always`` fsyncs before the
reply). When it can give none, the submit is refused before anything is written.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from .errors import DurabilityError
from .topology import ReplicaWait

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Durability:
    """What confirms a write here: the local AOF (``waitaof``: ask; ``always``: given), and replicas. ``need``:
    replicas that must acknowledge (the URL's ``wait=N``), within ``timeout_ms``; ``local``: a durable submit."""

    waitaof: bool
    fsync_always: bool
    replicas: int
    need: int = 0
    timeout_ms: int = CONFIRM_TIMEOUT_MS
    local: bool = True

    def queue(self, pipe: Any) -> None:
        """Append the waits to the pipeline that wrote the batch."""
        if self.waitaof:
            pipe.execute_command("WAITAOF", 1, 0, self.timeout_ms)
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)

    def check(self, acks: list[Any], batch_id: str) -> None:
        """At least one copy that survives a crash of this Redis (durable), and the replicas asked for, or an
        error naming the (written) batch."""
        replicas = int(acks[-1]) if self.replicas else 0
        if replicas < self.need:
            raise DurabilityError(f"batch {batch_id} was written but only {replicas} of {self.need} replica(s) "
                                  f"acknowledged it within {self.timeout_ms} ms (wait=); a fail-over now may lose "
                                  "it; submitting it again with the same batch id is safe")
        if not self.local:
            return
        local = self.fsync_always or (self.waitaof and int(acks[0][0]) >= 1)
        if self.replicas and replicas < self.replicas:
            log.warning("durable submit: %d of %d replicas confirmed batch %s", replicas, self.replicas, batch_id)
        if not local and replicas == 0:
            raise DurabilityError(f"batch {batch_id} was written but not confirmed on disk or on a replica within "
                                  f"{CONFIRM_TIMEOUT_MS / 1000:g} s; submitting it again with the same batch id "
                                  "is safe")


def durability_plan(client: redis.Redis, acks: ReplicaWait | None = None, durable: bool = True) -> Durability:
    """How this server can confirm a durable write (``durable``) and the replica acknowledgement the URL asked for
    (``acks``); DurabilityError (before any write) when it cannot."""
    need, timeout = (acks.replicas, acks.timeout_ms) if acks else (0, CONFIRM_TIMEOUT_MS)
    if not durable:   # only the replicas the URL asked for: no need to ask the server first
        return Durability(False, False, need, need, timeout, local=False)
    try:
        server = client.info("server")
        aof = bool(int(client.info("persistence").get("aof_enabled", 0)))
        replicas = int(client.info("replication").get("connected_slaves", 0))
    except redis.ResponseError as exc:   # INFO forbidden, or local mode (nothing to keep anyway)
        raise DurabilityError(f"a durable submit cannot be confirmed: this Redis answers no INFO ({exc}); "
                              "nothing was written") from None
    version = tuple(int(x) for x in str(server.get("redis_version", "0")).split(".")[:2])
    waitaof = aof and version >= (7, 2)
    fsync_always = aof and not waitaof and _appendfsync(client) == "always"
    if waitaof or fsync_always or replicas:
        return Durability(waitaof, fsync_always, max(replicas, need), need, max(timeout, CONFIRM_TIMEOUT_MS))
    why = ("keeps no AOF (appendonly no)" if not aof else
           f"is {server.get('redis_version')} (WAITAOF needs 7.2), appendfsync is not 'always'")
    raise DurabilityError(f"a durable submit cannot be confirmed: this Redis {why} and has no replica; "
                          "nothing was written (use appendfsync always, a replica, or Redis >= 7.2)")


def _appendfsync(client: redis.Redis) -> str | None:
    try:
        return client.config_get("appendfsync").get("appendfsync")
    except redis.ResponseError:   # CONFIG forbidden (ACL, managed Redis): cannot tell
        return None
