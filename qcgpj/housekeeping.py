"""Housekeeping: removing final jobs and forgetting departed executors, so a long-lived namespace stays small.

A finished job costs about 1 kB of Redis memory and a departed executor a few keys, for ever unless removed.
Removal runs remove.lua over batches of names, so even 100,000 jobs never block Redis for long, and goes in steps
of at most ``STEP`` names read, each of which takes its removed names off the job list (remove.lua's 'unlist')
before the next begins.
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
STEP = 2 * BATCH             # names a step of remove_finished reads (removes) at most: 0.07-0.1 s, 2-CPU VM
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
    log.info("removed %d job(s)", len(names))
    return names


def remove_finished(store: Store, older_than: float | None = None) -> tuple[list[str], dict[str, str]]:
    """Remove the final jobs (that ended ``older_than`` seconds ago or earlier); returns the removed names and
    the final jobs kept because jobs not final yet depend on them (name -> those jobs). In steps
    (:func:`remove_step`), each taking its names off the job list."""
    horizon = None if older_than is None else time.time() - older_than
    removed: list[str] = []
    kept: dict[str, str] = {}
    start: int | None = 0
    while start is not None:
        some, held, start = remove_step(store, horizon, start)
        removed += some
        kept.update(held)
    if removed:
        log.info("removed %d job(s)", len(removed))
    return removed, kept


def remove_step(store: Store, horizon: float | None, start: int = 0,
                limit: int = STEP) -> tuple[list[str], dict[str, str], int | None]:
    """One step of a removal of final jobs (that ended at ``horizon``, an epoch, or earlier): reads at most
    ``limit`` names of the job list from index ``start``, removes the final ones it may and takes them off the
    list, and with them the names whose job is gone already (a removal that died between deleting its jobs and
    taking them off, the InputQueue killed mid-step, left their names listed for good). Returns the removed
    names, the jobs kept for their dependants, and the index the next step starts at (None: the removal is
    complete).

    Bounded so that the InputQueue, which calls it between its own duties, is never held up for long: in one go,
    passes of 30,000-90,000 jobs held it for seconds (2.9 s per 50,000 jobs; its lease lasts 5 s). The job list
    is in submission order and a job ends after it was submitted, so with a horizon the removal stops at the
    first batch of jobs all submitted after it: it reads the jobs old enough to go, not every job the queue keeps
    (a pass over 720,000 jobs every minute for 2h of a sweep of 100 jobs/s)."""
    removed: list[str] = []
    kept: dict[str, str] = {}
    calls: list[str] = []
    stranded: list[str] = []   # listed, but their jobs gone: by a removal that stopped before taking them off
    done, read = False, 0
    while read < limit:
        chunk = store.job_names(start, start + min(BATCH, limit - read) - 1)
        if not chunk:
            done = True
            break
        start += len(chunk)
        read += len(chunk)
        rows = store.job_fields(chunk, "state", "end", "created")
        stranded += [n for n, (st, _e, _c) in zip(chunk, rows) if st is None]
        wanted = [n for n, (st, end, _c) in zip(chunk, rows)
                  if st in FINAL_STATES and (horizon is None or (end and float(end) <= horizon))]
        if wanted:
            _remove_some(store, wanted, removed, kept, calls)
        if horizon is not None and all(c and float(c) > horizon for _s, _e, c in rows):
            done = True   # these jobs, and all submitted after them, ended after the horizon
            break
    dropped = _after(store, removed, calls, stranded, within=start)
    if stranded:
        log.info("took %d name(s) of jobs removed earlier off the job list", len(stranded))
    # the names taken off were read before `start` (the first entry of each): the next step goes on after the
    # names kept; a removal elsewhere meanwhile may shift the list, which the next pass makes good
    return removed, kept, None if done else max(0, start - dropped)


def _remove_some(store: Store, wanted: list[str], removed: list[str], kept: dict[str, str],
                 calls: list[str]) -> None:
    for name, (status, detail) in zip(wanted, store.remove_jobs(wanted, "skip")):
        if status == "removed":
            removed.append(name)
            if detail:
                calls.append(detail)
        elif status == "dependants":
            kept[name] = detail


def _after(store: Store, removed: list[str], calls: list[str], stranded: Sequence[str] = (),
           within: int | None = None) -> int:
    """Take the removed names (and those ``stranded`` of jobs already gone) off the job list (returns how many
    entries went; ``within``: they were read before that index), delete their rq keys."""
    dropped = store.unlist_jobs([*removed, *stranded], within)
    if not removed:
        return dropped
    store.drop_rq_calls(calls)
    if store.active() <= 0:   # nothing is running: nobody needs the wake-ups and trail of the removed jobs
        store.trim_events(EVENTS_KEPT)
    return dropped


class Janitor:
    """The InputQueue's periodic housekeeping: executors that left or died are forgotten after
    ``executor_retention`` seconds; with ``keep_finished``, final jobs are removed that long after they ended.

    It runs in the InputQueue's serving thread, one bounded step (:func:`remove_step`) per turn of its loop, so
    that placement, the dead-executor checks and the lease renewal come between two steps whatever the size of
    a pass (a soak at 5,000 jobs/s had passes of 30,000-90,000 jobs, several seconds each). Steps rather than a
    thread of its own: nothing runs concurrently with the InputQueue, only its leader does housekeeping, and a
    stop or an outage ends or suspends a pass without any more machinery; a pass left half done goes on at the
    next turn (or, after a restart, at the next pass)."""

    def __init__(self, store: Store, executor_retention: float = DAY, keep_finished: float | None = None,
                 step: int = STEP) -> None:
        self.store = store
        self.executor_retention = executor_retention
        self.keep_finished = keep_finished
        self.step = step
        periods = [executor_retention] + ([keep_finished] if keep_finished is not None else [])
        self.every = min(60.0, max(min(periods) / 4, 0.25))
        self._next = 0.0
        self._start: int | None = None     # where the pass under way goes on (None: no pass under way)
        self._horizon = 0.0                # what it removes ended then or earlier
        self._removed = 0                  # by it so far

    @property
    def busy(self) -> bool:
        """A pass is under way: the next turn should come soon."""
        return self._start is not None

    def tick(self) -> None:
        """Called at every turn of the InputQueue's loop: starts a pass every ``every`` seconds, and makes one
        step of the pass under way."""
        if self._start is None:
            if time.monotonic() < self._next:
                return
            self._next = time.monotonic() + self.every
            gone = self.store.prune_executors(self.executor_retention)
            if gone:
                log.info("forgot %d executor(s) that left or died over %.0f s ago", gone, self.executor_retention)
            if self.keep_finished is None:
                return
            self._start, self._horizon, self._removed = 0, time.time() - self.keep_finished, 0
        removed, _kept, self._start = remove_step(self.store, self._horizon, self._start, self.step)
        self._removed += len(removed)
        if self._start is None and self._removed:
            log.info("removed %d job(s) that ended over %.0f s ago", self._removed, self.keep_finished)
