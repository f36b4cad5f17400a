"""``qcgpj report``: where the time went in a namespace, after (or during) a run.

The figures are computed from rows that a :class:`Source` yields, so that a report can be made from Redis (a
namespace, :class:`RedisSource`) or from another record of a run (for example a local run's record directory):
a source needs only ``tasks()`` and ``executors()``.

What Redis holds decides what can be reported: a task's record has its executor, start and end, but not the
cores it was given (only the job's request: a range counts its minimum) nor when it was claimed or reported, so
launch overhead is measured as the wait from submission to start, and Gantt lanes are packed per executor from
the tasks' core counts (not the concrete cores the executor chose).

An iteration that never started has no record of its own: its state and message come from its job (as
``info`` gives them). A run of more than ``LIST_EACH`` such iterations in a row is one row, ``name:first-last``
with ``count`` iterations, so that a report of a job of 10^12 iterations canceled after a few ran reads and lists
a few rows; both sources follow this one rule (:func:`iteration_rows`), so they agree.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields, replace
from statistics import median
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from .store import Store, parse_record, parse_usage, unrecorded_message, unrecorded_runs

READ_CHUNK = 1000
LIST_EACH = 1000   # iterations without a record in a row listed one by one; a longer run is one row
ITERATION_PATTERN = re.compile(r"(.*):(-?\d+)")    # a name pattern for one iteration: job pattern, iteration
RUN_ROW = re.compile(r".*:(-?\d+)-(-?\d+)")         # the task of a run's row: job:first-last


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task (a job, or one iteration ``job:it``) as a report sees it; times are Unix seconds."""

    task: str
    job: str
    state: str
    executor: str | None
    cores: int
    created: float | None
    start: float | None
    end: float | None
    exit_code: int | None
    message: str
    job_state: str = ""
    cpu_user: float | None = None     # seconds of CPU, and peak memory, of a task that was a process
    cpu_system: float | None = None
    max_rss_kb: int | None = None
    count: int = 1                    # tasks the row stands for: a run of iterations that never started, name:a-b

    @property
    def runtime(self) -> float | None:
        return None if self.start is None or self.end is None else max(self.end - self.start, 0.0)


@dataclass(frozen=True, slots=True)
class ExecutorRow:
    """One executor's life: ``ended`` is None while it is alive."""

    id: str
    host: str
    state: str
    cores: int
    nodes: int
    started: float | None
    ended: float | None


class Source(Protocol):
    """What a report reads: the tasks that ran or were submitted, and the executors that offered cores."""

    def tasks(self) -> Iterable[TaskRow]: ...

    def executors(self) -> Sequence[ExecutorRow]: ...


class RedisSource:
    """A namespace in Redis, read in pipelined chunks (a report reads every job: it is not for every second)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def executors(self) -> list[ExecutorRow]:
        out = []
        for eid, e in self.store.executors(departed=True).items():
            out.append(ExecutorRow(eid, e.get("host", ""), e.get("state", ""), int(e.get("total", 0)),
                                   int(e.get("nnodes", 0)), _f(e.get("started")), _f(e.get("ended"))))
        return out

    def tasks(self) -> Iterator[TaskRow]:
        names = self.store.job_names()
        fields_ = ("state", "req", "n", "it0", "created", "start", "end", "exit", "executor", "message", "usage",
                   "next", "pdeps")
        for i in range(0, len(names), READ_CHUNK):
            chunk = names[i:i + READ_CHUNK]
            rows = self.store.job_fields(chunk, *fields_)
            iterative = [n for n, r in zip(chunk, rows) if r[2] is not None]
            pipe = self.store.r.pipeline(transaction=False)
            for n in iterative:
                pipe.hgetall(self.store.keys.its(n))
            records = dict(zip(iterative, pipe.execute()))
            for name, (state, req, n, it0, created, t0, t1, code, eid, msg, usage, nxt, pdeps) in zip(chunk, rows):
                if state is None:
                    continue   # removed meanwhile
                cores = int((req or "1").split("|")[0])
                if n is None:
                    yield TaskRow(name, name, state, eid or None, cores, _f(created), _f(t0), _f(t1),
                                  int(code) if code not in (None, "") else None, msg or "", state,
                                  **parse_usage(usage))
                    continue
                recs = records[name]
                h = {"state": state, "it0": it0, "next": nxt, "pdeps": pdeps, "message": msg}

                def row(task: str, rec: str, name: str = name, state: str = state, created: str | None = created,
                        cores: int = cores) -> TaskRow:
                    r = parse_record(rec)
                    return TaskRow(task, name, r["state"], r["executor"], cores, _f(created), r["start"], r["end"],
                                   r["exit_code"], r["message"], state, r.get("cpu_user"), r.get("cpu_system"),
                                   r.get("max_rss_kb"))
                yield from iteration_rows(name, h, int(it0), int(n), {int(k): v for k, v in recs.items()}, row,
                                          cores, _f(created))


def iteration_rows(job: str, h: Mapping[str, Any], it0: int, n: int, recorded: Mapping[int, Any],
                   row: Callable[[str, Any], TaskRow], cores: int, created: float | None) -> Iterator[TaskRow]:
    """An iterative job's rows in order: ``row(task, recorded[it])`` for each iteration with a record; those
    without one (``h``: the job's hash fields) as ``info`` has them, one by one in runs of up to ``LIST_EACH``,
    a longer run as one row ``job:first-last`` of ``count`` tasks. In steps of the records, not of the iterations
    (a queue and a run's record share it, so their reports agree)."""
    why = unrecorded_message(h.get("state"), h.get("message"))
    done = sorted(it for it in recorded if it0 <= it < it0 + n)
    k = 0
    for first, last, st in unrecorded_runs(h, it0, n, done):
        while k < len(done) and done[k] < first:
            yield row(f"{job}:{done[k]}", recorded[done[k]])
            k += 1
        if last - first + 1 > LIST_EACH:
            yield TaskRow(f"{job}:{first}-{last}", job, st, None, cores, created, None, None, None, why,
                          h.get("state") or "", count=last - first + 1)
            continue
        for it in range(first, last + 1):
            yield TaskRow(f"{job}:{it}", job, st, None, cores, created, None, None, None, why, h.get("state") or "")
    for it in done[k:]:
        yield row(f"{job}:{it}", recorded[it])


class RecordSource:
    """The record a local ``qcgpj run`` left in its directory (:mod:`qcgpj.record`): a finished run, no queue.

    The record has each job's spec (cores: the request's minimum, as in Redis) and a line per iteration that
    had a record of its own; the others take their state and message from their job's line, as ``info`` gives
    them on a queue (an older record has a line for each iteration).
    """

    def __init__(self, directory: str) -> None:
        from . import record
        self.meta, self.entries = record.load(directory)
        self.its = record.iterations_by_job(self.entries)

    def executors(self) -> list[ExecutorRow]:
        m = self.meta
        if not m.get("executor"):
            return []
        return [ExecutorRow(m["executor"], m.get("host", ""), "LEFT", int(m.get("cores", 0)),
                            int(m.get("nodes", 0)), m.get("started"), m.get("ended"))]

    def tasks(self) -> Iterator[TaskRow]:
        from .jobspec import JobSpec
        from .record import job_fields
        for name, e in self.entries.items():
            if "spec" not in e:
                continue   # an iteration's line: read with its job
            cores = JobSpec.from_json(json.dumps(e["spec"])).cores_min
            its = e.get("iterations")
            if its is None:
                yield _record_row(name, name, e, cores, e, e["state"])
                continue

            def row(task: str, rec: dict[str, Any], name: str = name, cores: int = cores,
                    e: dict[str, Any] = e) -> TaskRow:
                return _record_row(task, name, rec, cores, e, e["state"])
            yield from iteration_rows(name, job_fields(e), its["start"], its["total"], self.its.get(name, {}), row,
                                      cores, e.get("created"))


def _record_row(task: str, job: str, rec: dict[str, Any], cores: int, job_entry: dict[str, Any],
                job_state: str) -> TaskRow:
    return TaskRow(task, job, rec["state"], rec.get("executor"), cores, job_entry.get("created"),
                   rec.get("start"), rec.get("end"), rec.get("exit_code"), rec.get("message", ""), job_state,
                   rec.get("cpu_user"), rec.get("cpu_system"), rec.get("max_rss_kb"))


def _f(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


# ---------------------------------------------------------------------- stats
def stats(source: Source, now: float | None = None) -> dict[str, Any]:
    """Jobs and tasks by state, time spans, core-hours, core utilisation, queue wait, per-executor figures."""
    now = time.time() if now is None else now
    tasks = list(source.tasks())
    execs = list(source.executors())
    ran = [t for t in tasks if t.runtime is not None]
    job_states = Counter({t.job: t.job_state for t in tasks}.values())
    busy = sum(t.cores * t.runtime for t in ran)
    available = sum(_alive_span(e, now) * e.cores for e in execs)
    waits = [t.start - t.created for t in ran if t.created is not None]
    per_exec = []
    for e in execs:
        mine = [t for t in ran if t.executor == e.id]
        e_busy = sum(t.cores * t.runtime for t in mine)
        e_avail = _alive_span(e, now) * e.cores
        per_exec.append({"id": e.id, "host": e.host, "state": e.state, "cores": e.cores, "started": e.started,
                         "ended": e.ended, "tasks": len(mine), "busy_core_seconds": round(e_busy, 3),
                         "available_core_seconds": round(e_avail, 3),
                         "utilisation_pct": _pct(e_busy, e_avail)})
    starts = [e.started for e in execs if e.started is not None]
    return {
        "jobs": sum(job_states.values()),
        "jobs_by_state": dict(job_states),
        "tasks": sum(t.count for t in tasks),
        "tasks_by_state": dict(_counts(tasks)),
        "service_span": _span(starts, [e.ended if e.ended is not None else now for e in execs]),
        "task_span": _span([t.start for t in ran], [t.end for t in ran]),
        "core_hours": round(busy / 3600, 4),
        "busy_core_seconds": round(busy, 3),
        "available_core_seconds": round(available, 3),
        "utilisation_pct": _pct(busy, available),
        "runtime": _summary([t.runtime for t in ran]),
        "queue_wait": _summary(waits),
        "executors": per_exec,
        **usage_of(ran),
    }


def _counts(tasks: Iterable[TaskRow]) -> Counter:
    """Tasks by state, a row of a run of iterations counting as its ``count``."""
    out: Counter = Counter()
    for t in tasks:
        out[t.state] += t.count
    return out


def usage_of(ran: Sequence[TaskRow]) -> dict[str, Any]:
    """CPU seconds and peak memory of the tasks that were processes, and CPU efficiency: CPU seconds over the
    core-seconds they held (cores x wall time; low for tasks that wait or leave cores idle). Per job too."""
    per_job: dict[str, list[TaskRow]] = defaultdict(list)
    for t in ran:
        if t.cpu_user is not None:
            per_job[t.job].append(t)
    jobs = [{"job": job, **_usage_sums(ts)} for job, ts in per_job.items()]
    return {**_usage_sums([t for ts in per_job.values() for t in ts]), "jobs_usage": jobs}


def _usage_sums(ts: Sequence[TaskRow]) -> dict[str, Any]:
    user = sum(t.cpu_user or 0.0 for t in ts)
    system = sum(t.cpu_system or 0.0 for t in ts)
    held = sum(t.cores * (t.runtime or 0.0) for t in ts)
    return {"measured_tasks": len(ts), "cpu_user": round(user, 3), "cpu_system": round(system, 3),
            "cpu_efficiency_pct": _pct(user + system, held),
            "max_rss_kb": max((t.max_rss_kb or 0 for t in ts), default=None)}


def _alive_span(e: ExecutorRow, now: float) -> float:
    if e.started is None:
        return 0.0
    return max((e.ended if e.ended is not None else now) - e.started, 0.0)


def _span(starts: Sequence[float | None], ends: Sequence[float | None]) -> dict[str, float] | None:
    s = [x for x in starts if x is not None]
    e = [x for x in ends if x is not None]
    if not s or not e:
        return None
    return {"start": min(s), "end": max(e), "seconds": round(max(e) - min(s), 3)}


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole > 0 else None


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"count": len(values), "mean": round(sum(values) / len(values), 4), "median": round(median(values), 4),
            "max": round(max(values), 4)}


# ---------------------------------------------------------------------- jobs
SORT_KEYS = ("start", "end", "runtime", "name")


def select_tasks(source: Source, state: str | None = None, executor: str | None = None, name: str | None = None,
                 sort: str = "start") -> list[TaskRow]:
    """Tasks filtered by state, executor and name pattern (shell-style), sorted; those without the sort field
    (not started yet) come last."""
    rows = [t for t in (_named(source.tasks(), name) if name is not None else source.tasks())
            if (state is None or t.state == state.upper()) and (executor is None or t.executor == executor)]
    if sort == "name":
        return sorted(rows, key=lambda t: t.task)
    value = {"start": lambda t: t.start, "end": lambda t: t.end, "runtime": lambda t: t.runtime}[sort]
    return sorted(rows, key=lambda t: (value(t) is None, value(t) or 0.0))


def _named(rows: Iterable[TaskRow], pattern: str) -> Iterator[TaskRow]:
    """The rows whose task matches a shell-style pattern. A pattern naming one iteration (``job:7``) finds it in a
    row of a run of iterations (``job:5-1000``) too: that iteration's row comes out of it."""
    one = ITERATION_PATTERN.fullmatch(pattern)
    for t in rows:
        if fnmatch.fnmatchcase(t.task, pattern):
            yield t
        elif one and t.count > 1 and fnmatch.fnmatchcase(t.job, one.group(1)):
            run = RUN_ROW.fullmatch(t.task)
            if run and int(run.group(1)) <= int(one.group(2)) <= int(run.group(2)):
                yield replace(t, task=f"{t.job}:{int(one.group(2))}", count=1)


def task_dicts(rows: Iterable[TaskRow]) -> list[dict[str, Any]]:
    return [{**asdict(t), "runtime": None if t.runtime is None else round(t.runtime, 3)} for t in rows]


def flat_figures(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The plain values of ``stats`` in one row, nested ones as ``parent.key`` (a span or summary that is None
    stays one empty column); lists (per executor, per job) are left out."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            out.update(flat_figures(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out[prefix + key] = value
    return out


def as_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of plain values as CSV with a header line."""
    out = io.StringIO()
    cols = list(columns or (rows[0].keys() if rows else [f.name for f in fields(TaskRow)]))
    w = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


# ---------------------------------------------------------------------- timelines
def lanes(source: Source) -> list[dict[str, Any]]:
    """Gantt rows: every task that ran, on lanes packed per executor (lane = a core slot, 0 .. cores-1; a task
    of c cores takes c lanes that were free when it started). Sorted by executor and lane."""
    import heapq
    execs = {e.id: e for e in source.executors()}
    by_exec: dict[str, list[TaskRow]] = defaultdict(list)
    for t in source.tasks():
        if t.runtime is not None and t.executor:
            by_exec[t.executor].append(t)
    out = []
    for eid in sorted(by_exec):
        ts = sorted(by_exec[eid], key=lambda t: t.start)
        width = execs[eid].cores if eid in execs else max(t.cores for t in ts)
        free = [(0.0, lane) for lane in range(max(width, 1))]   # (free from, lane)
        for t in ts:
            taken = [heapq.heappop(free) for _ in range(min(t.cores, len(free)))]
            for _at, lane in taken:
                out.append({"executor": eid, "lane": lane, "task": t.task, "job": t.job, "state": t.state,
                            "start": t.start, "end": t.end})
                heapq.heappush(free, (t.end, lane))
    return out


def utilisation(source: Source, now: float | None = None) -> list[dict[str, float]]:
    """Busy and available cores as step functions: a point at every change (time, busy, available)."""
    now = time.time() if now is None else now
    delta: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for t in source.tasks():
        if t.runtime is not None:
            delta[t.start][0] += t.cores
            delta[t.end][0] -= t.cores
    for e in source.executors():
        if e.started is not None:
            delta[e.started][1] += e.cores
            delta[e.ended if e.ended is not None else now][1] -= e.cores
    busy = avail = 0
    out = []
    for at in sorted(delta):
        busy += delta[at][0]
        avail += delta[at][1]
        out.append({"time": at, "busy": busy, "available": avail})
    return out
