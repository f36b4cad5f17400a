"""What a task's record says, as the queue keeps it: an iteration's record string (``its:<name>``), a process's
usage, and the state and message of an iteration that has no record of its own (it never started), worked out
from its job's hash. The live queue (``info``, ``report``) and a run's record (``--from DIR``) read them through
these same functions, so both say the same of every task."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from .resources import parse_compact

FINAL_STATES = frozenset({"SUCCEED", "FAILED", "CANCELED", "OMITTED"})


def unrecorded_state(h: Mapping[str, str | None], it: int) -> str:
    """The state of an iteration that has no record of its own (it has not started), from its job's hash fields
    ``state``, ``it0``, ``next`` and ``pdeps``: placed already (SCHEDULED), still waiting for cores (READY), or as
    its job while the job is QUEUED or final. Not the job's EXECUTING: ``info`` and ``report`` both give this, so
    they agree on every iteration."""
    st = h.get("state") or ""
    if st in FINAL_STATES:
        return st
    upto = _placed_upto(h)
    if upto is not None and it < upto:
        return "SCHEDULED"
    return "READY" if st in ("SCHEDULED", "EXECUTING") else st


def _placed_upto(h: Mapping[str, str | None]) -> int | None:
    """Iterations before this one were placed (a range is placed in order, from ``it0`` to ``next``); None where
    that does not tell an iteration's state: a final job, or one with per-iteration parents (placed one by one)."""
    if (h.get("state") or "") in FINAL_STATES or h.get("pdeps"):
        return None
    return int(h.get("next") or h.get("it0") or 0)


def unrecorded_message(job_state: str | None, job_message: str | None) -> str:
    """The message of an iteration that has no record of its own: its job's once the job is final (a job omitted,
    canceled or failed whole says why once, on the job). ``info`` and ``report`` both give it, so they say the
    same."""
    return (job_message or "") if job_state in FINAL_STATES else ""


def unrecorded_info(h: Mapping[str, str | None], it: int) -> dict[str, Any]:
    """``info`` of an iteration that has no record of its own, from its job's hash fields (those of
    ``unrecorded_state`` and ``message``): one function for a live queue and for a run's record, so both say
    the same of an iteration that never started."""
    return {"state": unrecorded_state(h, it), "exit_code": None, "executor": None, "start": None, "end": None,
            "attempt": 0, "message": unrecorded_message(h.get("state"), h.get("message"))}


def unrecorded_runs(h: Mapping[str, str | None], it0: int, n: int,
                    recorded: Iterable[int]) -> Iterator[tuple[int, int, str]]:
    """``(first, last, state)`` of each maximal run of iterations ``it0 .. it0+n-1`` without a record of their own
    (``recorded``: those with one), in order, with the state ``unrecorded_state`` gives each: it changes only at
    ``next`` (placed before it, waiting from it), so a run is split there. In steps of the records, not of the
    iterations: a job of 10^12 iterations of which a few ran is a few runs."""
    end = it0 + n
    cuts = sorted({i for i in recorded if it0 <= i < end})
    split = _placed_upto(h)
    first = it0
    for cut in cuts + [end]:
        if first < cut:
            if split is not None and first < split < cut:
                yield first, split - 1, unrecorded_state(h, first)
                first = split
            yield first, cut - 1, unrecorded_state(h, first)
        first = cut + 1


def parse_record(rec: str) -> dict[str, Any]:
    """An iteration record ``STATE|exit|executor|start[@cores]|end|attempt[,usage]|message`` as a dict (the usage,
    if the task was a process, rides on the attempt field, the cores it got on the start: the message, last, may
    hold any character)."""
    state, exit_code, eid, t0, t1, att, msg = rec.split("|", 6)
    att, _, usage = att.partition(",")
    t0, _, cores = t0.partition("@")
    out = {"state": state, "exit_code": int(exit_code) if exit_code else None, "executor": eid or None,
           "start": float(t0) if t0 else None, "end": float(t1) if t1 else None,
           "attempt": int(att or 0), "message": msg, **parse_usage(usage)}
    if cores:
        out["nodes"] = parse_compact(cores)
    return out


def format_usage(usage: tuple[float, float, int] | None) -> str:
    """A reaped process's (user CPU s, system CPU s, max RSS KiB) as reported: a few bytes, ms resolution."""
    return "" if usage is None else f"{usage[0]:.3f},{usage[1]:.3f},{usage[2]}"


def parse_usage(usage: str | None) -> dict[str, Any]:
    """``cpu_user``, ``cpu_system`` (seconds) and ``max_rss_kb`` from a reported usage; none when there is none."""
    if not usage:
        return {}
    user, system, rss = usage.split(",")
    return {"cpu_user": float(user), "cpu_system": float(system), "max_rss_kb": int(rss)}
