"""QCG-PilotJob's ``qcg.pilotjob.api`` (``Manager``, ``LocalManager``, ``Jobs``) as a thin layer over qcgpj.

Return shapes are QCG-PilotJob's (``status()`` -> ``{'jobs': {name: {'status': 0, 'data': {...}}}}``), errors
are qcgpj's (QcgpjError subclasses naming the job)."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence

from .. import arguments as a
from .. import jobs as _jobs
from .. import manager as _manager
from ..connection import url_from_env
from ..errors import ArgumentError, TimeoutError
from ..jobspec import JobSpec, placement_of, resolved, task_variables
from ..requests import SUBMIT_RE, substitute_submit
from ..store import Store, parse_record

log = logging.getLogger(__name__)

FINAL = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")
RAN = ("n_SUCCEED", "n_FAILED", "n_OMITTED")   # an iterative job's counts of iterations that ended not canceled
SERVICE_OPTIONS = {"--nodes": "nodes", "--wd": "root_wd"}   # the service options that mean something here


class Jobs(_jobs.Jobs):
    """qcgpj's Jobs, with QCG-PilotJob's views: ``jobs()`` and ``ordered_jobs()`` as job descriptions."""

    __slots__ = ()

    def jobs(self) -> list[dict[str, Any]]:   # type: ignore[override]
        return [s.to_dict() for s in self]

    ordered_jobs = jobs


def _submit_variables(jobs: Any, rcnt: int) -> Any:
    """The jobs with the submit-time variables substituted; as given when they use none (or are no list of job
    descriptions: the Manager's checks word that)."""
    if not isinstance(jobs, (list, tuple)):
        return jobs
    descs = [j.to_dict() if isinstance(j, JobSpec) else j for j in jobs]
    try:
        text = json.dumps(descs)
    except (TypeError, ValueError):
        return jobs
    return jobs if SUBMIT_RE.search(text) is None else substitute_submit(descs, "", rcnt)


def _names(v: Any) -> list[str]:
    """Names as QCG-PilotJob takes them: also the dict its ``list()`` returns (``wait4(m.list())``)."""
    return a.names(list(v) if isinstance(v, dict) else v)


def _some_names(v: Any) -> list[str]:
    return a.some_names(list(v) if isinstance(v, dict) else v)


class Manager:
    """QCG-PilotJob's client API. ``address``: a Redis URL (its ZMQ address has no meaning here); None: the
    ``QCGPJ_REDIS_URL`` variable, else local mode."""

    def __init__(self, address: str | None = None, cfg: dict | None = None, *, ends_of: str = "queue",
                 **local: Any) -> None:
        """``ends_of``: whose ends ``wait4_any_job_finish`` tells: "queue", every job's (as QCG-PilotJob's manager
        tells those of its service), or "own", only those submitted through this Manager (QCGPJExecutor's on a
        shared queue), which needs no read of the queue's other jobs when made."""
        if ends_of not in ("queue", "own"):
            raise ArgumentError(f"Manager: 'ends_of' must be 'queue' or 'own', got {ends_of!r}")
        self.m = _manager.Manager(address, **local)
        self.rcnt = 0   # submits so far: ${rcnt}
        # from now on, as QCG-PilotJob's subscription to its manager
        self._finishes = _Finishes(self.m.store, own=ends_of == "own")

    @property
    def _finished(self) -> bool:
        """Finished in local mode: its store is gone, so each call says so at once (``arguments.api``)."""
        return self.m._finished

    # ------------------------------------------------------------------ submit and queries
    def submit(self, jobs: _jobs.Jobs | list) -> list[str]:
        """As QCG-PilotJob's service does for its API, the submit-time variables are substituted (``${rcnt}``,
        ``${uniq}``, ``${sname}``, ``${date}``, ``${time}``, ``${dateTime}``, ``$$``: see the README's Job
        description); ``${rcnt}`` counts this Manager's submits, from 1 (there: its service's)."""
        self.rcnt += 1
        ids = self.m.submit(_submit_variables(list(jobs) if isinstance(jobs, _jobs.Jobs) else jobs, self.rcnt))
        self._finishes.submitted(ids)
        return ids

    @a.api()   # a wrong argument is an ArgumentError, as for the methods that take some
    def resources(self) -> dict[str, int]:
        res = self.m.resources()
        return {k: res[k] for k in ("total_nodes", "total_cores", "used_cores", "free_cores")}

    @a.api()
    def list(self) -> dict[str, dict[str, Any]]:
        """``inQueue``: a job's place among those ready to run and not started yet (dependencies met, waiting for
        cores or just handed to an executor), in submission order; only such jobs have one. (QCG-PilotJob keeps
        the place a job had when it entered its scheduling queue, also after it ran.)"""
        out: dict[str, dict[str, Any]] = {}
        waiting = 0
        for n, st in self.m.list().items():
            out[n] = {"status": st}
            if st in ("READY", "SCHEDULED"):
                out[n]["inQueue"] = waiting
                waiting += 1
        return out

    @a.api(names=_some_names)
    def status(self, names: Sequence[str] | str) -> dict[str, Any]:
        states = self.m.status(names)
        return {"jobs": {n: {"status": 0, "data": {"jobName": n, "status": st}} for n, st in states.items()}}

    @a.api(names=_some_names, withChilds=a.flag)
    def info(self, names: Sequence[str] | str, withChilds: bool = False, **_kw: Any) -> dict[str, Any]:
        return {"jobs": {n: {"status": 0, "data": self._info(n, withChilds)} for n in names}}

    def _info(self, name: str, children: bool) -> dict[str, Any]:
        i = self.m.info(name)
        data: dict[str, Any] = {"jobName": name, "status": i["state"], "messages": i.get("message") or None}
        job, _, it = name.partition(":")
        its = i.get("iterations")
        if i.get("exit_code") is not None or i.get("start") is not None:
            data["runtime"] = _runtime(i, self._wd(job, int(it) if it else None, i) if not its else None)
        if its:
            data["iterations"] = {"start": its["start"], "stop": its["start"] + its["total"], "total": its["total"],
                                  "finished": its["finished"],
                                  "failed": its["FAILED"] + its["CANCELED"] + its["OMITTED"]}   # as QCG-PilotJob counts
            if children and ":" not in name:
                spec = JobSpec.from_json(json.dumps(i["spec"]))
                data["childs"] = [{"iteration": k, "state": c["state"], "runtime": _runtime(c, self._wd(spec, k, c))}
                                  for k, c in self.m.iterations(name).items()]
        data["history"] = "".join(f"\n{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}: {what}"
                                  for t, what in ((i.get("created"), "QUEUED"), (i.get("start"), "EXECUTING"),
                                                  (i.get("end"), i["state"])) if t)
        return data

    def _wd(self, job: str | JobSpec, it: int | None, task: dict[str, Any]) -> str | None:
        """The working directory a task started in, as its executor made it (``${it}``, ``${jname}``... in ``wd``
        substituted), where known: a started task in local mode, whose executor's root is this process's, or
        with an absolute ``wd``; QCG-PilotJob gives it for tasks only, not for an iterative job as a whole."""
        if task.get("start") is None:
            return None
        spec = job if isinstance(job, JobSpec) else JobSpec.from_json(self.m.store.job_hash(job)["spec"])
        root = self.m.local.executor.root_wd if self.m.local is not None else None
        if not spec.wd:
            return root
        nodes = task.get("nodes")
        var = task_variables(spec.name, spec.iteration, it, root, placement_of(nodes) if nodes else None)
        wd = resolved(spec.wd, var)
        if wd is not None and os.path.isabs(wd):
            return wd
        return None if root is None or wd is None else os.path.join(root, wd) if wd else root

    @a.api(names=_some_names, withChilds=a.flag)
    def info_parsed(self, names: Sequence[str] | str, withChilds: bool = False, **kw: Any) -> dict[str, JobInfo]:
        return {n: JobInfo.from_data(d["data"]) for n, d in self.info(names, withChilds, **kw)["jobs"].items()}

    @a.api()
    def system_status(self) -> dict[str, Any]:
        res, states = self.m.resources(), self.m.list()
        count = sum(1 for st in states.values() if st in FINAL)
        return {"System": {"Store": self.m.store_kind or "redis", "Local": self.m.local is not None},
                "Resources": {"TotalNodes": res["total_nodes"], "TotalCores": res["total_cores"],
                              "UsedCores": res["used_cores"], "FreeCores": res["free_cores"]},
                "JobStats": {"TotalJobs": len(states), "InScheduleJobs": len(states) - count,
                             "FailedJobs": sum(1 for st in states.values() if st == "FAILED"),
                             "FinishedJobs": count,
                             "ExecutingJobs": sum(1 for st in states.values() if st == "EXECUTING")}}

    # ------------------------------------------------------------------ changes
    @a.api(names=_some_names)
    def remove(self, names: Sequence[str] | str) -> None:
        self._finishes.collect()   # their ends, if not seen yet, are still told (QCG-PilotJob's are queued)
        self.m.remove(names)

    @a.api(names=_some_names)
    def cancel(self, names: Sequence[str] | str) -> None:
        self.m.cancel(names)

    def cleanup(self) -> None:
        """QCG-PilotJob deletes its service's auxiliary files; qcgpj keeps none on the client side."""

    def finish(self) -> None:
        self.m.finish()

    # ------------------------------------------------------------------ waiting
    @a.api(names=_names, timeout=a.timeout)
    def wait4(self, names: Sequence[str] | str, timeout: float | None = None) -> dict[str, str | None]:
        return self.m.wait4(names, timeout=timeout)

    @a.api(timeout_secs=a.timeout)
    def wait4all(self, timeout_secs: float | None = None) -> None:
        self.m.wait4all(timeout=timeout_secs)

    @a.api(timeout_secs=a.timeout)
    def wait4_any_job_finish(self, timeout_secs: float | None = None) -> tuple[str, str]:
        """The next end not reported yet, of a job (``'name'``) or of an iteration (``'name:3'``), with its state,
        as QCG-PilotJob's manager hears of them: every end since this Manager was made, each once, an iterative
        job's after its iterations'. Waits for one (woken by the queue's events); TimeoutElapsed when
        ``timeout_secs`` run out first (as QCG-PilotJob; its docstring says (None, None))."""
        deadline = None if timeout_secs is None else time.monotonic() + timeout_secs
        last = self.m.store.last_event_id()   # before looking: an end after the look wakes the wait
        while True:
            got = self._finishes.next()
            if got is not None:
                return got
            last = self.m._wait_event(last, deadline, "any job or iteration to finish")

    @staticmethod
    def is_status_finished(status: str) -> bool:
        return status in FINAL


class _Finishes:
    """The ends of jobs and iterations since it was made, for ``wait4_any_job_finish``: a record of those reported
    (with those before it, never reported) and a queue of those found and not reported yet. The queue's jobs are
    read only when its counts of final tasks moved, and an iterative job's records only when its finished count
    did (or it ended), so a 10,000-job sweep is not read whole on every wake-up. ``own``: only the jobs submitted
    through its Manager, none of which existed when it was made: nothing to read then (the queue's other jobs, a
    shared queue's thousands, are not its concern)."""

    def __init__(self, store: Store, own: bool = False) -> None:
        self.store = store
        self.own: list[str] | None = [] if own else None   # own: the names submitted, in order
        self.ready: deque[tuple[str, str]] = deque()   # found, not reported yet, oldest end first
        self.final: set[str] = set()                   # jobs whose end is reported, queued, or came before
        self.done: dict[str, int] = {}                 # an iterative job not final: its finished count, as last read
        self.its: dict[str, set[int]] = {}             # ... and its iterations reported, queued, or ended before
        self.ran: dict[str, int] = {}                  # ... and how many of those ended not CANCELED (see RAN)
        self.created: dict[str, str] = {}              # submission time of each of those: which job of the name
        self.counts = store.final_counts()             # read before the jobs: an end after it moves them
        if self.own is None:
            self._scan(report=False)

    def submitted(self, names: list[str]) -> None:
        """Jobs its Manager submitted: with ``own``, those whose ends it tells."""
        if self.own is not None:
            self.own += names

    def next(self) -> tuple[str, str] | None:
        if not self.ready:
            self.collect()
        return self.ready.popleft() if self.ready else None

    def collect(self) -> None:
        """Queue the ends since the last look, if any."""
        counts = self.store.final_counts()
        if counts != self.counts:
            removed = counts[-1] != self.counts[-1]
            self.counts = counts
            self._scan(report=True, removed=removed)

    def _scan(self, report: bool, removed: bool = False) -> None:
        # a name removed and submitted again: listed twice
        listed = list(dict.fromkeys(self.store.job_names() if self.own is None else self.own))
        if removed:
            self._forget_removed(listed)
        names = [n for n in listed if n not in self.final]
        found: list[tuple[float, int, str, str]] = []   # (end, order found, name, state)
        for name, (state, n, it0, done, end, created, *ran) in zip(names, self.store.job_fields(
                names, "state", "n", "it0", "done", "end", "created", *RAN)):
            if state is None:   # removed since the names were read
                continue
            final = state in FINAL
            if final and not report:   # ended before: nothing of it is reported
                self.final.add(name)
                self.created[name] = created
                continue
            job_end = float(end) if final and end else math.inf
            last = -math.inf
            if n is not None and self._read_iterations(name, state, int(done or 0), ran):
                self.done[name] = int(done or 0)
                self.created[name] = created
                for t, task, st in self._iterations(name, state if final else None, int(it0), int(n), job_end):
                    found.append((t, len(found), task, st))
                    last = max(last, t)
            if final:   # after its iterations, as QCG-PilotJob publishes them
                found.append((max(job_end, last), len(found), name, state))
                self.final.add(name)
                self.created[name] = created
                for d in (self.done, self.its, self.ran):
                    d.pop(name, None)
        if report:
            self.ready.extend((task, st) for _, _, task, st in sorted(found))

    def _read_iterations(self, name: str, state: str, done: int, ran: list[str | None]) -> bool:
        """Whether an iterative job's records may hold ends not seen: its finished count moved, or it ended; but a
        job canceled whole counts all its iterations finished at the cancel, so for it only a move of the counts
        of iterations that ran (or were omitted) says that one ended before the cancel unseen."""
        if state == "CANCELED":
            return sum(int(x or 0) for x in ran) != self.ran.get(name, 0)
        return state in FINAL or done != self.done.get(name, 0)

    def _forget_removed(self, listed: list[str]) -> None:
        """After removals: drop what is known of the jobs gone, so that a job submitted again under one of their
        names is reported (told apart by its submission time)."""
        known = [n for n in listed if n in self.created]
        same = {n for n, (c,) in zip(known, self.store.job_fields(known, "created")) if c == self.created[n]}
        for n in set(self.created) - same:
            self.final.discard(n)
            for d in (self.done, self.its, self.created):
                d.pop(n, None)

    def _iterations(self, name: str, final: str | None, it0: int, n: int,
                    job_end: float) -> list[tuple[float, str, str]]:
        """Its iterations ended and not seen yet, with their ends; once the job is ``final``, also those that ended
        with it without a record (failed unplaceable: counted at once). A job canceled whole, or omitted whole,
        is reported once as itself, not each iteration it ended: QCG-PilotJob tells each iteration it cancels,
        but a sweep of a million iterations would then take a million calls (and this a list as long) before its
        own end; the iterations that ended before the cancel are told, as their ends came."""
        seen = self.its.setdefault(name, set())
        recs = self.store.iteration_records(name)
        out = []
        for k, rec in recs.items():
            it, st = int(k), rec.partition("|")[0]
            if st in FINAL and it not in seen:
                seen.add(it)
                t = parse_record(rec)["end"] or job_end
                if st != "CANCELED":
                    self.ran[name] = self.ran.get(name, 0) + 1
                elif final == "CANCELED" and t >= job_end:   # ended by the cancel of the whole job
                    continue
                out.append((t, f"{name}:{it}", st))
        if final is not None and final not in ("OMITTED", "CANCELED"):
            out += [(job_end, f"{name}:{it}", final) for it in range(it0, it0 + n)
                    if it not in seen and str(it) not in recs]
        return sorted(out, key=lambda e: (e[0], int(e[1].rpartition(":")[2])))   # oldest end, then lowest index


def qcg_nodes(text: str) -> str:
    """QCG-PilotJob's ``[name:]cores[,...]`` in qcgpj's ``name:cores,...``: an unnamed node is ``n<index>``, as
    QCG-PilotJob names it (``resources="4"`` is four cores on node n0)."""
    return ",".join(part if ":" in part else f"n{i}:{part}" for i, part in enumerate(text.split(",")))


class LocalManager(Manager):
    """QCG-PilotJob's LocalManager: a service in this process, here qcgpj's local mode. ``server_args`` are its
    service's options; ``--nodes`` and ``--wd`` are honoured, the others (logging, ZMQ, reports) have no meaning
    here and are logged and skipped."""

    def __init__(self, server_args: Sequence[str] | None = None, cfg: dict | None = None) -> None:
        opts: dict[str, Any] = {}
        if isinstance(server_args, (str, bytes)) or not all(isinstance(x, str) for x in server_args or []):
            raise ArgumentError(f"LocalManager: 'server_args' must be a list of strings (its service's options, "
                                f"e.g. ['--nodes', 'n0:4']), got {server_args!r}")
        args = list(server_args or [])
        while args:
            arg = args.pop(0)
            key, eq, value = arg.partition("=")
            if key in SERVICE_OPTIONS:
                if not eq:
                    if not args:
                        raise ArgumentError(f"LocalManager: '{key}' needs a value")
                    value = args.pop(0)
                opts[SERVICE_OPTIONS[key]] = qcg_nodes(value) if key == "--nodes" else value
            elif key.startswith("--"):
                if not eq and args and not args[0].startswith("--"):
                    args.pop(0)
                log.info("LocalManager: service option %s has no meaning in qcgpj and is skipped", key)
        if url_from_env(None) is not None:   # before Manager() takes it: a local run must not contact that queue
            raise ArgumentError("local mode (LocalManager, QCGPJExecutor without redis_url) was asked for, but "
                                "QCGPJ_REDIS_URL is set: unset it, or give the queue's URL (Manager(url), "
                                "QCGPJExecutor(redis_url=url))")
        super().__init__(None, cfg, **opts)

    def kill_manager_process(self) -> None:
        self.m.abort()


@dataclass
class JobInfo:
    """QCG-PilotJob's parsed job information (``info_parsed``)."""
    name: str
    status: str
    total_cores: int | None = None
    nodes: dict[str, list[int]] | None = None
    wdir: str | None = None
    exit_code: int | None = None
    time: timedelta | None = None   # the run time (QCG-PilotJob's type)
    iterations: dict[str, int] | None = None
    childs: list[JobInfo] = field(default_factory=list)
    messages: str | None = None
    history: str = ""
    iteration: int | None = None   # an iteration's index (``name:it``), None for a whole job

    @classmethod
    def from_data(cls, d: dict[str, Any], name: str | None = None) -> JobInfo:
        rt = d.get("runtime") or {}
        nodes = _nodes(rt.get("allocation"))
        name = name or d.get("jobName", "")
        it = d.get("iteration")
        if it is None and ":" in name:
            it = int(name.rpartition(":")[2])
        return cls(name, d.get("status") or d.get("state", ""),
                   sum(map(len, nodes.values())) if nodes else None, nodes, rt.get("wd"), rt.get("exit_code"),
                   _timedelta(rt.get("rtime")),
                   d.get("iterations"),
                   [cls.from_data(c, f"{d.get('jobName')}:{c['iteration']}") for c in d.get("childs", [])],
                   d.get("messages"), d.get("history", ""), it)


def _runtime(i: dict[str, Any], wd: str | None) -> dict[str, Any]:
    """Exit code, run time, working directory (when known) and, in QCG-PilotJob's text (``n0[0:1],n1[0:1]``),
    the cores the task ran on."""
    out: dict[str, Any] = {"exit_code": i.get("exit_code")}
    if wd is not None:
        out["wd"] = wd
    if i.get("start") is not None and i.get("end") is not None:
        td = timedelta(seconds=round(i["end"] - i["start"], 3))
        out["rtime"] = str(td) if td.microseconds else f"{td}.000000"   # QCG-PilotJob's text, always with a fraction
    if i.get("nodes"):
        out["allocation"] = ",".join(f"{n}[{':'.join(map(str, c))}]" for n, c in i["nodes"].items())
    return out


def _timedelta(rtime: str | None) -> timedelta | None:
    """``runtime.rtime`` ('0:00:02.027000', '1 day, 2:00:00.000000') back to a timedelta."""
    if not rtime:
        return None
    days, _, clock = rtime.rpartition(", ")
    h, m, s = clock.split(":")
    return timedelta(days=int(days.split()[0]) if days else 0, hours=int(h), minutes=int(m), seconds=float(s))


def _nodes(allocation: str | None) -> dict[str, list[int]] | None:
    """``n0[0:1],n1[0:1]`` back to {node: [cores]} (QCG-PilotJob gives the cores as strings; here they are ints)."""
    if not allocation:
        return None
    return {part[:part.index("[")]: [int(c) for c in part[part.index("[") + 1:-1].split(":")]
            for part in allocation.split(",")}


__all__ = ["Manager", "LocalManager", "Jobs", "JobInfo", "TimeoutError"]
