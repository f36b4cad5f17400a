"""Redis outages: which errors mean "wait and try again", and one log line per outage instead of one per retry.

A service thread must outlive anything Redis can say while it is restarting, loading its data, out of memory,
read-only (a replica) or gone: each loop asks :func:`transient` whether to wait and retry, and keeps an
:class:`Outage` so that an outage is logged when it starts and when it ends, not at every retry.
"""
from __future__ import annotations

import logging
import time

import redis
from redis.sentinel import MasterNotFoundError, SlaveNotFoundError

# Replies of a Redis that is (re)starting, out of memory, read-only, busy or lost its data (a stream group, the
# script cache): each passes or is mended by the caller (NOGROUP: recreate the group; NOSCRIPT: load again).
TRANSIENT_REPLIES = ("LOADING", "READONLY", "OOM", "NOSCRIPT", "NOGROUP", "MASTERDOWN", "BUSY", "TRYAGAIN",
                     "MISCONF", "CLUSTERDOWN")
# A Sentinel fail-over: no master known for a moment (MasterNotFoundError is a ConnectionError), a demoted master
# answers READONLY until our connection moves; a cluster moving a slot says MOVED/ASK, TRYAGAIN or CLUSTERDOWN.
TRANSIENT_TYPES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoScriptError,
                   redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError, redis.exceptions.TryAgainError,
                   redis.exceptions.ClusterDownError, redis.exceptions.AskError, MasterNotFoundError,
                   SlaveNotFoundError, redis.exceptions.SlotNotCoveredError)


def transient(exc: BaseException) -> bool:
    """True for an error that a later retry may not meet: connection loss and the replies above."""
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).split(" ", 1)[0] in TRANSIENT_REPLIES


def refused(exc: BaseException) -> bool:
    """True for a refusal no retry mends: the ACL denies a command or key, or the credentials are wrong. A service
    that meets one stops with that one line (the README lists the minimal ACL) instead of retrying for ever."""
    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
        return True
    if not isinstance(exc, redis.ResponseError):
        return False
    text = str(exc)   # inside a script, a denial is a script error whose text says so
    return text.split(" ", 1)[0] in ("NOPERM", "WRONGPASS", "NOAUTH") or "no permissions" in text \
        or "can't run this command" in text


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Outage:
    """The state of one loop's contact with Redis: logs the first failure and the recovery, and paces retries
    with an exponential backoff (``base`` doubling up to ``cap`` seconds)."""

    def __init__(self, what: str, logger: logging.Logger, base: float = 0.1, cap: float = 1.0) -> None:
        self.what, self.log, self.base, self.cap = what, logger, base, cap
        self.since: float | None = None   # monotonic time of the first failure of the current outage
        self.delay = base
        self.kind = ""

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns the seconds to wait before the next try. Logged once per kind of error."""
        kind = one_line(exc).split(":", 1)[0] + str(exc)[:8]
        if self.since is None:
            self.since, self.delay = time.monotonic(), self.base
        else:
            self.delay = min(self.delay * 2, self.cap)
        if kind != self.kind:
            self.log.warning("%s: Redis %s (%s); retrying", self.what,
                             "unavailable" if transient(exc) else "error", one_line(exc))
            self.kind = kind
        return self.delay

    def ok(self) -> bool:
        """Record a success; True when it ends an outage."""
        if self.since is None:
            return False
        self.log.info("%s: Redis back after %.1f s", self.what, time.monotonic() - self.since)
        self.since, self.kind = None, ""
        return True
