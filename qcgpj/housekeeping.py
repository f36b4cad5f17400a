"""Housekeeping: removing final jobs and forgetting departed executors, so a long-lived namespace stays small.

A finished job costs about 1 kB of Redis memory and a departed executor a few keys, for ever unless removed.
Removal runs remove.lua over batches of names, so even 100,000 jobs never block Redis for long, and takes the
names off the job list once at the end (one LREM per job would scan the list every time).
"""
from __future__ import annotations

import logging
import re
import time
from typing import Sequence

from .errors import RemoveError
from .store import FINAL_STATES, Store

log = logging.getLogger(__name__)

BATCH = 1000                 # names per remove.lua call
STOP_WAIT = 30.0             # seconds a removal waits for the processes of just-canceled jobs to be reported
EVENTS_KEPT = 10             # the events stream is trimmed to this once nothing is active
DAY = 86400.0
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '1d', '1w' as seconds; ValueError otherwise."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 1d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def remove_named(store: Store, names: Sequence[str], stop_wait: float = STOP_WAIT) -> list[str]:
    """Remove these jobs, all or none: every batch is checked before the first is removed (a
    :class:`~qcgpj.errors.RemoveError` names the first job that cannot be). A job canceled a moment ago whose
    process its executor has not reported stopped yet is waited for, up to ``stop_wait`` seconds, on the
    queue's events: so cancel, wait and remove (QCG-PilotJob's order) works at once."""
    names = list(dict.fromkeys(names))
    deadline = time.monotonic() + stop_wait
    last = store.last_event_id()
    while True:
        try:
            for i in range(0, len(names), BATCH):
                store.remove_jobs(names[i:i + BATCH], "check")
            break
        except RemoveError as exc:
            left = deadline - time.monotonic()
            if exc.why != "stopping" or left <= 0:
                raise
            last = store.wait_event(last, min(0.5, left))
    calls: list[str] = []
    for i in range(0, len(names), BATCH):
        calls += [detail for _status, detail in store.remove_jobs(names[i:i + BATCH], "strict") if detail]
    _after(store, names, calls)
    return names


def remove_finished(store: Store, older_than: float | None = None) -> tuple[list[str], dict[str, str]]:
    """Remove the final jobs (that ended ``older_than`` seconds ago or earlier); returns the removed names and
    the final jobs kept because jobs not final yet depend on them (name -> those jobs).

    The job list is in submission order and a job ends after it was submitted, so with ``older_than`` the pass
    stops at the first batch of jobs all submitted after the horizon: the InputQueue's ``--keep-finished`` reads
    the jobs old enough to go, not every job its window holds (a pass over 720,000 jobs every minute for 2h of a
    sweep of 100 jobs/s)."""
    horizon = None if older_than is None else time.time() - older_than
    removed: list[str] = []
    kept: dict[str, str] = {}
    calls: list[str] = []
    start = 0
    while True:
        chunk = store.job_names(start, start + BATCH - 1)   # our removals leave the list as it is until _after
        if not chunk:
            break
        start += len(chunk)
        rows = store.job_fields(chunk, "state", "end", "created")
        wanted = [n for n, (st, end, _c) in zip(chunk, rows)
                  if st in FINAL_STATES and (horizon is None or (end and float(end) <= horizon))]
        if wanted:
            _remove_some(store, wanted, removed, kept, calls)
        if horizon is not None and all(c and float(c) > horizon for _s, _e, c in rows):
            break   # these jobs, and all submitted after them, ended after the horizon
    _after(store, removed, calls)
    return removed, kept


def _remove_some(store: Store, wanted: list[str], removed: list[str], kept: dict[str, str],
                 calls: list[str]) -> None:
    for name, (status, detail) in zip(wanted, store.remove_jobs(wanted, "skip")):
        if status == "removed":
            removed.append(name)
            if detail:
                calls.append(detail)
        elif status == "dependants":
            kept[name] = detail


def _after(store: Store, removed: list[str], calls: list[str]) -> None:
    if not removed:
        return
    store.unlist_jobs(removed)
    store.drop_rq_calls(calls)
    if store.active() <= 0:   # nothing is running: nobody needs the wake-ups and trail of the removed jobs
        store.trim_events(EVENTS_KEPT)
    log.info("removed %d job(s)", len(removed))


class Janitor:
    """The InputQueue's periodic housekeeping: executors that left or died are forgotten after
    ``executor_retention`` seconds; with ``keep_finished``, final jobs are removed that long after they ended."""

    def __init__(self, store: Store, executor_retention: float = DAY, keep_finished: float | None = None) -> None:
        self.store = store
        self.executor_retention = executor_retention
        self.keep_finished = keep_finished
        periods = [executor_retention] + ([keep_finished] if keep_finished is not None else [])
        self.every = min(60.0, max(min(periods) / 4, 0.25))
        self._next = 0.0

    def tick(self) -> None:
        """Called often (with the executor checks); acts every ``every`` seconds."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every
        gone = self.store.prune_executors(self.executor_retention)
        if gone:
            log.info("forgot %d executor(s) that left or died over %.0f s ago", gone, self.executor_retention)
        if self.keep_finished is not None:
            remove_finished(self.store, self.keep_finished)
