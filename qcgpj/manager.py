"""The client API: submit, query, cancel and wait, against a Redis URL or, with none, in local mode."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Sequence

import redis

from . import arguments as a
from . import scriptend
from .connection import check_settings, connect, url_from_env
from .errors import (ArgumentError, FinishedError, JobSpecError, LostJobsError, QcgpjError, ResourceError,
                     TimeoutError, UnknownJobError, clip)
from .jobs import Jobs
from .batch import check_batch
from .jobspec import JobSpec, parse_job, size_at_submit
from .resources import parse_compact
from .store import (FINAL_STATES, Store, parse_record, parse_usage, unrecorded_info, unrecorded_message,
                    unrecorded_state)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]   # (jobs final, jobs asked for)
CHECK_INTERVAL = 0.02   # seconds: the most often a waiting client re-reads states
LOCAL_CHECK_INTERVAL = 0.1   # ... in local mode, where its reads take the interpreter from the executor
FULL_CHECK = 1.0        # seconds between re-reads of every open name (in between, only the oldest ones)
FRONT = 128             # names read at a time from the oldest open one on


def submit_rows(specs: Sequence[JobSpec]) -> list[tuple[str, str, str, str, str]]:
    """The store's rows, dependencies first, so a batch split over several script calls stays valid."""
    rows = []
    for s in _dependency_order(specs):
        req = f"{s.cores_min}|{s.cores_max or 0}|{s.nodes_min or 0}|{s.nodes_max or 0}"
        if s.gpus or s.mem:   # nodeCrs: GPUs and MiB per node (placement reads them from req)
            req += f"|{s.gpus}|{s.mem}"
        if s.spread:          # submit.lua keeps it apart, as the job's 'spread'
            req += ";" + s.spread
        it = f"{s.iteration.ids().start}|{s.iteration.count}" if s.iteration is not None else ""
        deps = " ".join(d.job if (d.iteration is None and not d.per_iteration)
                        else f"{d.job}:{'*' if d.per_iteration else d.iteration}" for d in s.after)
        rows.append((s.name, s.to_json(), req, it, deps))
    return rows


def _dependency_order(specs: Sequence[JobSpec]) -> list[JobSpec]:
    by_name = {s.name: s for s in specs}
    done: set[str] = set()
    out: list[JobSpec] = []
    for s in specs:   # iterative DFS; check_batch already rejected cycles
        stack = [(s, False)]
        while stack:
            cur, expanded = stack.pop()
            if cur.name in done:
                continue
            if expanded:
                done.add(cur.name)
                out.append(cur)
                continue
            stack.append((cur, True))
            for d in reversed(cur.after):
                if d.job in by_name and d.job not in done:
                    stack.append((by_name[d.job], False))
    return out


def _check_local_models(specs: Sequence[JobSpec]) -> None:
    """Local mode's executor runs in this process, so its models are known here: an unknown one is bad input at
    submit, not a failed task later. (A queue's executors may have plugins this client lacks.)"""
    from .workers import available_models
    known = None
    for s in specs:
        if s.model != "default":
            known = known or set(available_models())
            if s.model not in known:
                raise JobSpecError(s.name, "execution.model", f"unknown execution model '{s.model}' (known: "
                                   f"{', '.join(sorted(known))})")


def _check_node_cores(specs: Sequence[JobSpec], per_node: int | None) -> None:
    for s in specs:
        if per_node is not None and s.nodes_min and s.cores_min > per_node:
            raise ResourceError(s.name, "resources.numCores",
                                f"{s.cores_min} cores per node requested, but the largest node has {per_node}")


def _check_local_crs(specs: Sequence[JobSpec], alloc: Any) -> None:
    """Local mode's one executor is all there will ever be: a job asking more GPUs or memory per node than it
    has is refused now, not left waiting (with a queue, other executors may come: see ``--unplaceable-timeout``)."""
    for s in specs:
        if s.gpus > alloc.gpus_per_node:
            raise ResourceError(s.name, "resources.nodeCrs.gpu",
                                f"{s.gpus} GPU(s) per node requested, but this machine has {alloc.gpus_per_node} "
                                "(declare them with --gpus N or --nodes NAME:CORES:GPUS)")
        if s.mem > alloc.mem_per_node:
            raise ResourceError(s.name, "resources.nodeCrs.mem",
                                f"{s.mem} MiB per node requested, but the largest node has {alloc.mem_per_node} MiB")


def _as_specs(jobs: Jobs | Iterable[JobSpec | dict]) -> list[JobSpec]:
    if isinstance(jobs, Jobs):
        return jobs.jobs()
    return [j if isinstance(j, JobSpec) else parse_job(j) for j in jobs]


class Manager:
    """``Manager()`` runs everything in this process (local mode); ``Manager(url)`` talks to a shared Redis."""

    @a.api(redis_url=a.optional_str, namespace=a.namespace, cores=a.optional_positive, nodes=a.nodes,
           root_wd=a.optional_path, max_attempts=a.positive, client=a.client, store=a.optional_str,
           gpus=a.optional_gpus, mem=a.optional_mem)
    def __init__(self, redis_url: str | None = None, namespace: str = "default", cores: int | None = None,
                 nodes: str | None = None, root_wd: str | None = None, max_attempts: int = 3,
                 client: redis.Redis | None = None, store: str | None = None, gpus: int | None = None,
                 mem: int | None = None) -> None:
        """``store`` (local mode only): "redis-server", "fakeredis" or None (the first when on PATH); ``gpus``
        and ``mem`` (local mode only) declare the GPUs and memory (MiB or '4G') of each node, else detected."""
        self.local: Any = None   # LocalServices in local mode
        self._last_check = 0.0
        self._finished = False
        url = url_from_env(redis_url)
        if url is not None or client is not None:
            _local_only(store=store, cores=cores, nodes=nodes, gpus=gpus, mem=mem)
        if client is not None:
            self.client = client
        elif url is None:
            from .local import LocalServices   # fakeredis is only needed in local mode
            self.local = LocalServices(namespace=namespace, cores=cores, nodes=nodes, root_wd=root_wd,
                                       max_attempts=max_attempts, store=store, gpus=gpus, mem=mem)
            self.client = self.local.client
        else:
            self.client = connect(url)
            check_settings(self.client)
        self.store = Store(self.client, namespace)
        self.store_kind = self.local.store_kind if self.local is not None else None
        self._check_interval = CHECK_INTERVAL if self.local is None else LOCAL_CHECK_INTERVAL
        if self.local is not None:
            self.local.start()
            scriptend.watch(self)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        """Stop the local services (local mode), canceling first what is not final, as QCG-PilotJob's finish does:
        no task outlives them (running ones are killed as by cancel, SIGTERM then SIGKILL 3 s later, while the
        executor drains). A remote queue keeps running for other clients."""
        if self.local is not None:
            try:
                if self.store.active():
                    self.store.cancel([n for n, st in self.list().items() if st not in FINAL_STATES])
            except (QcgpjError, redis.RedisError):   # the services or the store failed: stopping is what is left
                self.local.executor.kill_all()
            self.local.stop()
            self.local = None
            self._finished = True
            scriptend.forget(self)

    def abort(self) -> None:
        """Local mode, at once (a second Ctrl-C): every running task's process group is killed, the store is
        dropped, nothing is reported. The Manager is unusable afterwards."""
        if self.local is not None:
            self.local.abort()
            self.local = None
            self._finished = True
            scriptend.forget(self)

    # ------------------------------------------------------------------ submit
    def limits(self) -> tuple[int | None, int | None, int | None]:
        """The largest executor's cores, nodes and cores per node: the bounds of what a job may ask (None: no
        executor yet, so anything may be asked). Read once per submit, from the live executors only."""
        if self.local is not None:
            return self.local.total_cores, self.local.total_nodes, self.local.max_per_node
        shapes = self.store.shapes()
        if shapes is None:   # some joined before the shapes were counted: read every live executor
            shapes = [(int(e["total"]), int(e["nnodes"]), int(e["maxnode"]))
                      for e in self.store.executors().values()]
        if not shapes:
            return None, None, None
        return max(s[0] for s in shapes), max(s[1] for s in shapes), max(s[2] for s in shapes)

    @a.api(jobs=a.jobs, durable=a.flag)
    def submit(self, jobs: Jobs | Iterable[JobSpec | dict], durable: bool = False,
               batch_id: str | None = None) -> list[str]:
        """Validate the whole batch, then write it, all or none; returns the job names. Nothing is written on
        error. ``batch_id`` makes a retry safe: a batch id that was committed before is not written again.
        ``durable`` returns only once Redis confirms the batch is on disk or on a replica (see durability)."""
        if self._finished:
            raise FinishedError("this Manager is finished: its local services are stopped, so the jobs would "
                                "never run; submit before finish() or use a new Manager")
        max_cores, max_nodes, per_node = self.limits()
        specs = size_at_submit(_as_specs(jobs), max_cores, per_node, max_nodes)
        check_batch(specs, max_cores=max_cores, max_nodes=max_nodes)
        _check_node_cores(specs, per_node)
        if self.local is not None:
            _check_local_crs(specs, self.local.executor.allocator)
            _check_local_models(specs)
        self.store.submit(submit_rows(specs), batch_id=batch_id, durable=durable)
        return [s.name for s in specs]

    # ------------------------------------------------------------------ queries
    @a.api()
    def list(self) -> dict[str, str | None]:
        """All jobs in submission order, with their states."""
        return self.store.states(self.store.job_names())

    @a.api(names=a.optional_names)
    def status(self, names: Sequence[str] | str | None = None) -> dict[str, str | None]:
        if names is None:
            return self.list()
        names = [names] if isinstance(names, str) else list(names)
        out: dict[str, str | None] = {}
        jobs = [n for n in names if ":" not in n]
        out.update(self.store.states(jobs))
        for n in names:
            if ":" in n:
                out[n] = self.info(n)["state"]
        missing = [n for n, st in out.items() if st is None]
        if missing:
            raise UnknownJobError(f"unknown job '{clip(missing[0])}'")
        return {n: out[n] for n in names}

    @a.api(name=a.task)
    def info(self, name: str) -> dict[str, Any]:
        """Details of a job, or of one iteration with ``name:it``."""
        job, _, it = name.partition(":")
        h = self.store.job_hash(job)
        if it:
            return self._iteration_info(job, int(it), h)
        return self.job_info(job, h)

    @staticmethod
    def job_info(job: str, h: dict[str, str]) -> dict[str, Any]:
        """A job's details from its hash (read one by one by ``info``, many at once by the run record)."""
        info: dict[str, Any] = {"name": job, "state": h.get("state"), "spec": JobSpec.from_json(h["spec"]).to_dict(),
                                "attempts": int(h.get("attempts", 0)), "executor": h.get("executor") or None,
                                "created": _f(h.get("created")), "start": _f(h.get("start")),
                                "end": _f(h.get("end")), "exit_code": _i(h.get("exit")),
                                "message": h.get("message", ""), **parse_usage(h.get("usage"))}
        if h.get("alloc") and info["state"] not in ("QUEUED", "READY", "SCHEDULED"):   # not a requeued one's old
            info["nodes"] = parse_compact(h["alloc"])
        if h.get("unplaceable"):   # since when no live executor can fit it (the message says what it needs)
            info["unplaceable"] = float(h["unplaceable"])
        if info["start"] is not None and info["end"] is not None:
            info["runtime"] = round(info["end"] - info["start"], 3)
        if "n" in h:
            counts = {st: int(h.get(f"n_{st}", 0)) for st in ("SUCCEED", "FAILED", "CANCELED", "OMITTED")}
            info["iterations"] = {"total": int(h["n"]), "start": int(h["it0"]), "finished": int(h.get("done", 0)),
                                  **counts}
        return info

    def _iteration_info(self, job: str, it: int, h: dict[str, str]) -> dict[str, Any]:
        if "n" not in h or not int(h["it0"]) <= it < int(h["it0"]) + int(h["n"]):
            raise UnknownJobError(f"unknown iteration '{job}:{it}'")
        rec = self.store.iteration_record(job, it)
        if rec:
            info = parse_record(rec)
        else:
            info = unrecorded_info(h, it)
        return {"name": f"{job}:{it}", **info}

    @a.api(job=a.job)
    def iterations(self, job: str) -> dict[int, dict[str, Any]]:
        """Every iteration's details at once (one read of the records): a dict of the job's size, so not for a job
        of millions of iterations; the run record and ``report`` read only the records and derive the others from
        the job (store.unrecorded_runs)."""
        h = self.store.job_hash(job)
        if "n" not in h:
            raise UnknownJobError(f"job '{job}' is not iterative")
        recs = self.store.iteration_records(job)
        it0, n = int(h["it0"]), int(h["n"])
        why = unrecorded_message(h["state"], h.get("message"))
        return {it: parse_record(recs[str(it)]) if str(it) in recs else
                {"state": unrecorded_state(h, it), "message": why} for it in range(it0, it0 + n)}

    @a.api(departed=a.flag)
    def resources(self, departed: bool = False) -> dict[str, Any]:
        """Cores of the live executors; the list has the departed ones too (``departed``). One read either way:
        an executor is live exactly while its state is ALIVE (the scripts change both together)."""
        execs = {eid: _typed(e) for eid, e in self.store.executors(departed).items()}
        live = {k: e for k, e in execs.items() if e.get("state") == "ALIVE"} if departed else execs
        total = sum(int(e["total"]) for e in live.values())
        used = sum(min(int(e["total"]), int(e["total"]) + int(e["prefetch"]) - int(e["free"])) for e in live.values())
        gpus = sum(int(e.get("gpus") or 0) for e in live.values())
        return {"total_nodes": sum(int(e["nnodes"]) for e in live.values()), "total_cores": total,
                "used_cores": max(used, 0), "free_cores": max(total - max(used, 0), 0),
                "total_gpus": gpus, "used_gpus": gpus - sum(int(e.get("gfree") or 0) for e in live.values()),
                "executors": execs}

    @a.api(names=a.optional_names, finished=a.flag, older_than=a.timeout)
    def remove(self, names: Sequence[str] | str | None = None, *, finished: bool = False,
               older_than: float | None = None) -> list[str]:
        """Remove final jobs with every key they have; returns the removed names.

        ``names``: these jobs, all or none (a :class:`~qcgpj.errors.RemoveError` names the first that is not
        final or on which a job that is not final yet depends). ``finished``: every final job (that ended
        ``older_than`` seconds ago or earlier), keeping those that jobs not final yet depend on.
        """
        from .housekeeping import remove_finished, remove_named
        if finished:
            return remove_finished(self.store, older_than)[0]
        if names is None:
            raise ArgumentError("remove: give names, or finished=True")
        return remove_named(self.store, [names] if isinstance(names, str) else list(names))

    @a.api(names=a.some_names)
    def cancel(self, names: Sequence[str] | str) -> dict[str, str]:
        names = [names] if isinstance(names, str) else list(names)
        res = self.store.cancel(names)
        unknown = [n for n, r in res.items() if r == "unknown"]
        if unknown:   # worded as info words it: an iteration out of range of a job that exists, else the job
            job, colon, _ = unknown[0].partition(":")
            if colon and self.store.states([job])[job] is not None:
                raise UnknownJobError(f"unknown iteration '{clip(unknown[0])}'")
            raise UnknownJobError(f"unknown job '{clip(job)}'")
        return res

    @a.api()
    def cancel_all(self) -> dict[str, str]:
        """Cancel every job of the namespace that is not final, without naming them (a campaign of 100,000 jobs):
        returns the jobs it ended, 'CANCELED', or 'OMITTED' for those that waited on a canceled one. Jobs
        submitted after it read the job list (at its start) are left alone unless they depend on a canceled
        job. Redis is served between its calls of 1,000 names, as for a large :meth:`cancel`."""
        return self.store.cancel_all()

    # ------------------------------------------------------------------ waiting
    @a.api(names=a.names, timeout=a.timeout, progress=a.callback)
    def wait4(self, names: Sequence[str] | str, timeout: float | None = None,
              progress: Progress | None = None) -> dict[str, str | None]:
        """Wait until the named jobs are final; woken by the queue's events, not by polling."""
        names = [names] if isinstance(names, str) else list(names)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._whole_queue(names):
            try:
                self._wait_active(deadline, progress, "all jobs")   # then one read of the states, below
            except TimeoutError:
                raise TimeoutError("timed out waiting for " + _not_final(self._still_open(names, {}, True))) from None
        last = self.store.last_event_id()
        states: dict[str, str | None] = {}
        open_names = names   # a final state never changes: only the others are read again
        full_at = 0.0
        while True:
            full = time.monotonic() >= full_at
            if full:
                full_at = time.monotonic() + FULL_CHECK
            open_names = self._still_open(open_names, states, full, known=bool(states))
            if progress:
                progress(len(names) - len(open_names), len(names))
            if not open_names:
                return {n: states[n] for n in names}
            last = self._wait_event(last, deadline, _not_final(open_names))

    def _whole_queue(self, names: list[str]) -> bool:
        """Local mode waiting for every job of its private queue (``qcgpj run``): then the count of open jobs
        says all, one read per wake-up instead of the states (which, in fakeredis, took the executor's time)."""
        return (self.local is not None and all(":" not in n for n in names)
                and len(set(names)) == self.client.llen(self.store.keys.jobs)
                and set(names) == set(self.store.job_names()))   # not a name that is no job of it

    def _wait_active(self, deadline: float | None, progress: Progress | None, what: str) -> None:
        """Until no job of the queue is open (the ``active`` count)."""
        last = self.store.last_event_id()
        while True:
            active = self.store.active()
            if progress:
                total = self.client.llen(self.store.keys.jobs)
                progress(total - active, total)
            if active <= 0:
                return
            last = self._wait_event(last, deadline, what)

    def _still_open(self, open_names: list[str], states: dict[str, str | None], full: bool,
                    known: bool = True) -> list[str]:
        """The names not final yet, reading their states into ``states``. Jobs mostly end in the order they
        were submitted, so between full re-reads only the oldest are read, FRONT at a time up to the first
        group not all final: a client waiting for 10,000 jobs costs a few hundred reads per wake-up, not
        10,000 (which, every 20 ms, took most of a core from the tasks). A name ``known`` before that is
        gone now was lost by Redis: LostJobsError, not an endless wait."""
        step = max(len(open_names), 1) if full else FRONT
        for i in range(0, len(open_names), step):
            group = open_names[i:i + step]
            try:
                states.update(self.status(group))
            except UnknownJobError:
                if not known:
                    raise
                plain = self.store.states([n for n in group if ":" not in n])
                raise LostJobsError([n for n, st in plain.items() if st is None] or group) from None
            left = [n for n in group if states[n] not in FINAL_STATES]
            if left:
                return left + open_names[i + step:]
        return []

    @a.api(timeout=a.timeout, progress=a.callback)
    def wait4all(self, timeout: float | None = None, progress: Progress | None = None) -> dict[str, str | None]:
        """Wait until every job in the queue is final. Jobs removed meanwhile (``--keep-finished``, another
        user's ``remove``) are not lost: only more names gone than removals counted is Redis losing data."""
        deadline = None if timeout is None else time.monotonic() + timeout
        removed = self._removed()   # before the jobs are read: a removal after it is counted
        # the jobs there now: a removal in progress (its hashes deleted and counted, the names still listed until
        # its end) is neither a job nor counted after `removed`
        names, gone = self.store.listed_jobs()
        known = [n for n in names if n not in gone]
        self._wait_active(deadline, progress, "all jobs")
        states = self.list()
        lost = [n for n in known if states.get(n) is None]
        if len(lost) > self._removed() - removed:   # a Redis that lost its data lost the counter too
            raise LostJobsError(lost)
        return {n: st for n, st in states.items() if st is not None}

    def _removed(self) -> int:
        """Jobs removed from this queue, ever (the ``removed`` count of ``stats``)."""
        return int(self.store.final_counts()[-1] or 0)

    def _wait_event(self, last: str, deadline: float | None, what: str) -> str:
        """The newest event id after waiting up to a second for one past ``last``; past the deadline a
        TimeoutError that says it was waiting for ``what``."""
        # Coalesce: under load events come every few hundred microseconds; re-checking the states at most
        # every CHECK_INTERVAL keeps the waiting client from competing with the executors for the CPU.
        pause = self._last_check + self._check_interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        self._last_check = time.monotonic()
        wait = 1.0
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
        if self.local is not None:
            self.local.check_alive()
        return self.store.wait_event(last, wait)

    def __repr__(self) -> str:
        return f"Manager({'local' if self.local else self.client})"


def _not_final(names: Sequence[str]) -> str:
    """The jobs a wait still waits for, as its timeout names them: how many, and the first few (those that
    ended are not named: in a sweep the first jobs are usually long done)."""
    return f"{len(names):,} job(s) not final: {', '.join(names[:5])}" + (" ..." if len(names) > 5 else "")


_EXEC_INTS = ("total", "maxnode", "nnodes", "free", "prefetch", "pid", "running", "gpus", "gfree", "gmax", "mem")


def _typed(e: dict[str, str]) -> dict[str, Any]:
    """An executor's hash with numbers as numbers (times as Unix seconds) and ``alive`` as a boolean."""
    out: dict[str, Any] = dict(e)
    for k in _EXEC_INTS:
        if k in out:
            out[k] = int(out[k])
    for k in ("started", "ended"):
        if k in out:
            out[k] = _f(out[k])
    if "alive" in out:
        out["alive"] = out["alive"] == "True"
    return out


def _f(v: str | None) -> float | None:
    return float(v) if v else None


def _i(v: str | None) -> int | None:
    return int(v) if v not in (None, "") else None


def _local_only(**given: Any) -> None:
    """Sizes and a store are chosen in local mode only: on a queue the workers declare them (qcgpj-worker
    --cores/--nodes/--gpus/--mem), and these would be ignored without a word."""
    if given.pop("store") is not None:
        raise ArgumentError("a store is chosen only in local mode (no Redis URL)")
    named = [k for k, v in given.items() if v is not None]
    if named:
        raise ArgumentError(f"{'/'.join(named)}: declared by the workers (qcgpj-worker "
                            f"{' '.join('--' + k for k in named)}), here only in local mode (no Redis URL): "
                            "they would be ignored")
