"""``qcgpj.Executor``: Python functions as qcgpj jobs, behind the standard ``concurrent.futures`` interface.

    from qcgpj import Executor
    with Executor() as ex:                       # local mode; Executor("redis://host:6379/0") for a shared queue
        f = ex.submit(pow, 2, 10)
        g = ex.options(numCores=4, wt="10m").submit(mymod.simulate, f, seed=1)   # f's result is passed in
        print(g.result(), list(ex.map(mymod.square, range(100), chunksize=10)))

Each call is an rq job (``funcjobs``) referenced by a qcgpj job of model ``function``, so calls and executable
jobs share the queue, its placement, walltimes, retries and dependencies. One resolver thread per Executor waits
on the queue's ``events`` stream and, when jobs become final, reads their results in one round trip.
"""
from __future__ import annotations

import base64
import functools
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from concurrent.futures import CancelledError, Future
from concurrent.futures import Executor as _StdExecutor
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Iterator

import redis

from . import funcjobs
from .batch import check_batch
from .connection import redis_error
from .fieldcheck import _show
from .errors import ArgumentError, QcgpjError
from .funcjobs import FUTURE_KEY, DependencyFailed, FunctionError
from .jobspec import JobSpec, make_job
from .keys import rq_job
from .manager import Manager, submit_rows
from .scriptend import at_exit, leave_exit_to
from .taskrecords import FINAL_STATES

log = logging.getLogger(__name__)

FRONT = 16         # open jobs read at a time, the oldest first; all of them every FULL_CHECK seconds
ITER_WINDOW = 256   # iterations of a map read at a time, the oldest open ones first
CHECK_INTERVAL = 0.002   # seconds between reads at the most: under load events come every few hundred µs
FULL_CHECK = 1.0
WAKE_TIMEOUT = 0.5
INLINE_DATA = 2048   # bytes of a call's data copied into its job spec
LIMITS_AGE = 2.0   # seconds the executors' sizes are trusted for checking resources


@dataclass(frozen=True)
class Options:
    """Per-call job settings (QCG-PilotJob's names): ``numCores``, ``numNodes``, ``wt``, ``after`` (futures or job
    names), ``name``, ``stdout``, ``stderr``, ``wd`` (default: the submitting directory), ``env``."""

    numCores: Any = None
    numNodes: Any = None
    wt: Any = None
    after: tuple = ()
    name: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    wd: str | None = None
    env: dict = field(default_factory=dict)


@dataclass(eq=False)
class _Task:
    """A submitted qcgpj job and the futures it resolves (a map chunk holds several)."""

    name: str
    rqid: str
    serializer: str
    futures: list[list[Future]]       # per iteration (one entry for a single call)
    chunked: bool = False
    iterative: bool = False
    done: set[int] = field(default_factory=set)
    messages: dict[int, str] = field(default_factory=dict)   # why iterations failed, from their records
    open_its: list[int] = field(default_factory=list)        # iterations not resolved yet, oldest first

    def __post_init__(self) -> None:
        self.open_its = list(range(len(self.futures))) if self.iterative else []


class FunctionFuture(Future):
    """A Future whose ``cancel`` also cancels its job in the queue (and kills the call if it runs)."""

    job: str = ""       # the qcgpj job (``name`` or ``name:it``), for ``after`` of executable jobs
    rq_id: str = ""     # the rq job that holds the call and its result

    def __init__(self, executor: "Executor") -> None:
        super().__init__()
        self._owner = executor

    def running(self) -> bool:
        """Whether the call's task runs now: the state its executor reported to the queue (one read while not
        done). The Future's own state stays PENDING until the result, so that ``cancel`` still kills a running call
        (a standard RUNNING future cannot be canceled)."""
        if self.done():
            return False
        return self._owner._executing(self.job)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._owner._cancel_job(self.job)
        return True



def _run_at_exit(ref: "weakref.ref[Executor]") -> None:
    """Local mode: a script that ends without waiting for its calls (no shutdown, or shutdown(wait=False)) still
    has them run to their end first, as the standard library's executors do; the services, in this process, would
    otherwise die with it and the calls be lost. A Ctrl-C meanwhile kills what runs, as Manager.finish does."""
    ex = ref()
    if ex is None or ex._closed:
        return
    try:
        ex.shutdown(wait=True)
    except KeyboardInterrupt:
        ex._close()

class _Bound:
    """``ex.options(...)``: submit and map with these settings."""

    def __init__(self, ex: "Executor", opts: Options) -> None:
        self._ex, self._opts = ex, opts

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> FunctionFuture:
        return self._ex._submit(self._opts, fn, args, kwargs)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        return self._ex._map(self._opts, fn, iterables, timeout, chunksize)


class Executor(_StdExecutor):
    """A ``concurrent.futures.Executor`` over a qcgpj queue; no URL: local mode (through ``Manager()``)."""

    def __init__(self, redis_url: str | None = None, namespace: str = "default", *, serializer: str = "json",
                 result_ttl: int = 86400, cores: int | None = None,
                 max_attempts: int = 3, root_wd: str | None = None, client: redis.Redis | None = None) -> None:
        funcjobs.serializer_for(serializer)
        if type(result_ttl) is not int or not (result_ttl >= 1 or result_ttl == -1):
            # rq's own check says nothing of the argument; 0 drops a result before its future can read it
            raise ArgumentError(f"Executor: 'result_ttl' must be seconds >= 1, or -1 (kept for ever), "
                                f"got {_show(result_ttl)}")
        self.serializer, self.result_ttl = serializer, result_ttl
        self.manager = Manager(redis_url, namespace, cores=cores, root_wd=root_wd, max_attempts=max_attempts,
                               client=client)
        self.namespace = namespace
        self._conn = funcjobs.bytes_client(self.manager.client)
        self._store = self.manager.store
        self.prefix = uuid.uuid4().hex[:16]   # of this Executor's job names and rq ids
        self._count = itertools.count()
        self._lock = threading.Lock()
        self._open: dict[str, _Task] = {}
        self._shutdown = False
        self._stop = threading.Event()
        self._last = self._store.last_event_id()
        self._full_at = 0.0
        self._checked_at = 0.0
        self._limits: tuple = (None, None, None)
        self._limits_at = 0.0
        self._thread = threading.Thread(target=self._resolve_loop, name="qcgpj-futures", daemon=True)
        self._thread.start()
        self._closed = False
        if self.manager.local is not None:   # the services live in this process: see _run_at_exit
            leave_exit_to(self.manager)      # not canceled at exit as a bare Manager's jobs are: run to their end
            at_exit(functools.partial(_run_at_exit, weakref.ref(self)))

    # ------------------------------------------------------------------ the concurrent.futures interface
    def options(self, **opts: Any) -> _Bound:
        known = [f.name for f in fields(Options)]
        for name in opts:
            if name not in known:
                raise ArgumentError(f"Executor.options: unknown option '{name}' (known: {', '.join(known)})")
        if "after" in opts:
            after = opts["after"]
            if not isinstance(after, (str, Future, list, tuple, set, frozenset)):
                raise ArgumentError("Executor.options: 'after' must be futures or job names, one or a list, got "
                                    f"{_show(after)}")
            opts["after"] = tuple([after] if isinstance(after, (str, Future)) else after)
        return _Bound(self, Options(**opts))

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> FunctionFuture:
        return self._submit(Options(), fn, args, kwargs)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        return self._map(Options(), fn, iterables, timeout, chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = [f for t in self._open.values() for fs in t.futures for f in fs]
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            for f in pending:
                try:
                    f.exception()
                except CancelledError:
                    pass
            self._close()

    def drop_calls(self) -> int:
        """Delete this Executor's rq jobs and results now, instead of after ``result_ttl`` (the bench cleans up)."""
        keys = list(self._conn.scan_iter(match=f"rq:*:qcgpj-{self.prefix}-*", count=1000))
        return self._conn.delete(*keys) if keys else 0

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self.manager.finish()

    # ------------------------------------------------------------------ submitting
    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _ids(self, opts: Options) -> tuple[str, str]:
        n = next(self._count)
        return opts.name or f"fn-{self.prefix}-{n}", f"qcgpj-{self.prefix}-{n}"

    def _submit(self, opts: Options, fn: Callable, args: tuple, kwargs: dict) -> FunctionFuture:
        self._check_open()
        name, rqid = self._ids(opts)
        after, parents = _dependencies(opts.after)
        args = [_argument(a, after, parents) for a in args]
        kwargs = {k: _argument(v, after, parents) for k, v in kwargs.items()}
        func, args = self._function(name, fn, args, kwargs)
        fut = self._future(name, rqid)
        self._write(opts, name, rqid, [(func, args, kwargs)], after, parents, _Task(name, rqid, self.serializer,
                                                                                 [[fut]]))
        return fut

    def _map(self, opts: Options, fn: Callable, iterables: tuple, timeout: float | None,
             chunksize: int) -> Iterator[Any]:
        self._check_open()
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        end = None if timeout is None else time.monotonic() + timeout
        calls = [list(a) for a in zip(*iterables)]
        if not calls:
            return iter(())
        name, rqid = self._ids(opts)
        after, parents = _dependencies(opts.after)
        chunks = [calls[i:i + chunksize] for i in range(0, len(calls), chunksize)]
        if chunksize == 1:
            func, _ = self._function(name, fn, chunks[0][0], {})
            rows = [(func, self._checked(name, c[0]), {}) for c in chunks]
        else:
            ref = funcjobs.function_name(fn, self.serializer) or fn
            rows = [("qcgpj.funcjobs.starmap", self._checked(name, [ref, c]), {}) for c in chunks]
        futs = [[self._future(f"{name}:{i}", f"{rqid}-{i}") for _ in c] for i, c in enumerate(chunks)]
        task = _Task(name, rqid, self.serializer, futs, chunked=chunksize > 1, iterative=True)
        self._write(opts, name, rqid, rows, after, parents, task)
        flat = [f for fs in futs for f in fs]
        return _results(flat, end)

    def _function(self, name: str, fn: Callable, args: list, kwargs: dict) -> tuple[str, list]:
        ref = funcjobs.function_name(fn, self.serializer)
        if ref is None:   # cloudpickle, by value
            return "qcgpj.funcjobs.apply", [fn, *self._checked(name, args, kwargs)]
        return ref, self._checked(name, args, kwargs)

    def _checked(self, name: str, args: list, kwargs: dict | None = None) -> list:
        if self.serializer == "json":
            funcjobs.check_json(name, args, kwargs or {})
        return args

    def _future(self, job: str, rqid: str) -> FunctionFuture:
        fut = FunctionFuture(self)
        fut.job, fut.rq_id = job, rqid
        return fut

    def _write(self, opts: Options, name: str, rqid: str, rows: list[tuple[str, list, dict]], after: list[str],
               parents: list[str], task: _Task) -> None:
        """The rq jobs and the qcgpj job that runs them, in one round trip; nothing is left if it fails."""
        from rq.job import Job, JobStatus
        ids = [f"{rqid}-{i}" for i in range(len(rows))] if task.iterative else [rqid]
        ser = funcjobs.serializer_for(self.serializer)
        status = JobStatus.DEFERRED if after else JobStatus.QUEUED
        jobs = [Job.create(func, args=args, kwargs=kwargs, connection=self._conn, serializer=ser, id=jid,
                           result_ttl=self.result_ttl, failure_ttl=self.result_ttl, status=status,
                           description=f"qcgpj job {name}") for jid, (func, args, kwargs) in zip(ids, rows)]
        try:
            for job in jobs:   # serialized now (rq keeps it), so that a failure names the call
                job.data
        except Exception as exc:
            raise funcjobs.SerializationError(f"call {name}: cannot be serialized with {self.serializer}: "
                                              f"{type(exc).__name__}: {exc}") from None
        opts_ = {"ns": self.namespace, "serializer": self.serializer, "futures": parents,
                 "result_ttl": self.result_ttl}
        if not task.iterative and len(jobs[0].data) <= INLINE_DATA:   # saves the executor a read per call
            opts_.update(_inline(jobs[0].data, self.serializer))
        spec = make_job(name, exec=rqid, model="function", wd=opts.wd or os.getcwd(), stdout=opts.stdout,
                        stderr=opts.stderr, env=opts.env or None, numCores=opts.numCores, numNodes=opts.numNodes,
                        wt=opts.wt, after=after or None, iteration={"stop": len(rows)} if task.iterative else None,
                        model_opts=opts_)
        self._validate(spec)
        with self._lock:
            self._open[name] = task
        try:
            try:
                self._write_once(jobs, spec)
            except redis.exceptions.NoScriptError:   # Redis restarted meanwhile: the script is loaded again
                self._write_once(jobs, spec)
        except BaseException as exc:
            with self._lock:
                self._open.pop(name, None)
            try:
                self._conn.delete(*[rq_job(j) for j in ids])
            except redis.RedisError:   # an ACL without DEL, a Redis gone: exc is what to say
                pass
            if isinstance(exc, redis.RedisError):   # an ACL, a lost connection: one line, as Manager.submit
                raise redis_error(exc) from None
            raise

    def _write_once(self, jobs: list, spec: JobSpec) -> None:
        """The rq jobs and the qcgpj job that runs them in one round trip (rq's values are bytes, sent as they are)."""
        pipe = self.manager.client.pipeline(transaction=False)
        for job in jobs:
            job.save(pipeline=pipe)
        attempt = self._store.submit_on(pipe, submit_rows([spec]))
        self._store.submitted(pipe.execute(raise_on_error=False), attempt)

    def _validate(self, spec: JobSpec) -> None:
        """What Manager.submit checks, with the executors' sizes read at most every LIMITS_AGE seconds: the
        rest (names, dependencies) the submit script checks in the same round trip as the rq jobs' writes."""
        now = time.monotonic()
        if now >= self._limits_at:
            self._limits, self._limits_at = self.manager.limits(), now + LIMITS_AGE
        check_batch([spec], max_cores=self._limits[0], max_nodes=self._limits[1])

    def _executing(self, job: str) -> bool:
        """Whether a call's job (``name``) or map chunk (``name:it``) was reported started and has not ended."""
        name, _, it = job.partition(":")   # (a job name holds no ':')
        try:
            if not it:
                state = self._store.states([name]).get(name)
            else:
                state = (self._store.iteration_record(name, int(it)) or "").partition("|")[0]
        except redis.RedisError as exc:   # an ACL, a lost connection: one line, as Manager's queries
            raise redis_error(exc) from None
        return state == "EXECUTING"

    def _cancel_job(self, job: str) -> None:
        try:
            self.manager.cancel([job])
        except Exception as exc:   # already final, or the queue is gone: the future is canceled either way
            log.debug("cancel %s: %s", job, exc)

    # ------------------------------------------------------------------ resolving
    def _resolve_loop(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self._checked_at + CHECK_INTERVAL - time.monotonic()
                if pause > 0:   # coalesce: the client must not take the CPU from the executors it waits for
                    time.sleep(pause)
                self._last = self._store.wait_event(self._last, WAKE_TIMEOUT)
                self._checked_at = time.monotonic()
                if self.manager.local is not None:
                    self.manager.local.check_alive()
                self._check()
            except QcgpjError as exc:   # local mode's services died: nothing will resolve these futures
                self._fail_all(exc)
            except Exception as exc:   # keep serving: a lost Redis connection is retried by the client
                log.warning("resolving futures: %s", exc)
                self._stop.wait(0.5)
            with self._lock:
                idle = self._shutdown and not self._open
            if idle and not self._stop.is_set():
                self._close()   # shutdown(wait=False): the last future is resolved

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            tasks, self._open = list(self._open.values()), {}
        for t in tasks:
            for fs in t.futures:
                for f in fs:
                    if f.set_running_or_notify_cancel():
                        f.set_exception(exc)

    def _check(self) -> None:
        """Read the open jobs' states, oldest first: calls mostly end in the order they were submitted, so
        between full passes (every FULL_CHECK seconds) reading stops at the first group still running."""
        with self._lock:
            tasks = list(self._open.values())
        now = time.monotonic()
        full = now >= self._full_at
        step = (len(tasks) or 1) if full else FRONT
        if full:
            self._full_at = now + FULL_CHECK
        for i in range(0, len(tasks), step):
            group = tasks[i:i + step]
            states = self._store.states([t.name for t in group])
            ready: list[tuple[_Task, int, str]] = []   # (task, iteration index, state)
            running = False
            for t in group:
                st = states.get(t.name)
                if t.iterative:
                    ready.extend(self._iterations(t, st, full))
                elif st in FINAL_STATES:
                    ready.append((t, 0, st))
                running = running or st not in FINAL_STATES
            if ready:
                self._settle(ready)
            if running:
                return

    def _iterations(self, t: _Task, job_state: str | None, full: bool) -> list[tuple[_Task, int, str]]:
        """The iterations that ended: the oldest open ones (ITER_WINDOW), or all on a full pass."""
        final = job_state in FINAL_STATES
        window = t.open_its if (full or final) else t.open_its[:ITER_WINDOW]
        recs = self._store.r.hmget(self._store.keys.its(t.name), window) if window else []
        out = []
        for i, rec in zip(window, recs):
            st = rec.split("|", 1)[0] if rec else None
            if st in FINAL_STATES or (final and st is None):
                out.append((t, i, st or job_state))
                t.done.add(i)
                if st == "FAILED":
                    t.messages[i] = rec.split("|", 6)[-1]
        if out:
            t.open_its = [i for i in window if i not in t.done] + t.open_its[len(window):]
        return out

    def _settle(self, ready: list[tuple[_Task, int, str]]) -> None:
        with_result = [(t, i, st) for t, i, st in ready if st in ("SUCCEED", "FAILED")]
        outcomes = funcjobs.read_outcomes(self._conn, [_rqid(t, i) for t, i, _ in with_result],
                                          [t.serializer for t, _, _ in with_result])
        by_key = {(id(t), i): o for (t, i, _), o in zip(with_result, outcomes)}
        messages = self._messages([t for t, i, st in ready if st == "FAILED" and not t.iterative])
        for t, i, st in ready:
            t.done.add(i)
            kind, value = by_key.get((id(t), i), ("none", None))
            _resolve(t, i, st, kind, value, t.messages.get(i) or messages.get(t.name, ""))
            if len(t.done) == len(t.futures):
                with self._lock:
                    self._open.pop(t.name, None)

    def _messages(self, failed: list[_Task]) -> dict[str, str]:
        return {t.name: self._store.job_hash(t.name).get("message", "") for t in failed}


def _inline(data: bytes, serializer: str) -> dict[str, str]:
    """A copy of a small call's rq data for its spec (JSON as it is, cloudpickle in base64)."""
    if serializer == "json":
        return {"data": data.decode()}
    return {"data": base64.b64encode(data).decode(), "encoding": "base64"}


def _rqid(t: _Task, i: int) -> str:
    return f"{t.rqid}-{i}" if t.iterative else t.rqid


def _resolve(t: _Task, i: int, state: str, kind: str, value: Any, message: str) -> None:
    futs = t.futures[i]
    if state == "CANCELED":   # canceled in the queue (``qcgpj cancel``, a sibling of a map chunk): cancelled(),
        for f in futs:        # and result()/exception() raise CancelledError, as the standard library's
            Future.cancel(f)  # (not FunctionFuture.cancel: the job is canceled already)
            f.set_running_or_notify_cancel()   # wakes wait() and as_completed(), as a pool's worker does
        return
    if state == "SUCCEED" and kind == "ok":
        values = value if t.chunked else [value]
        outcomes: list[tuple[bool, Any]] = [(True, v) for v in values]
    else:
        if state == "OMITTED":
            exc: BaseException = DependencyFailed(f"job {t.name} was not run: a job it depends on did not succeed")
        elif kind == "error" and not (isinstance(value, FunctionError) and message):
            exc = value
        else:
            text = getattr(value, "remote_traceback", "")
            # the rebuilt error's one line ('mymod.MyErr: x'), not the traceback it carries: that is a note
            why = str(value).strip() if isinstance(value, BaseException) else text.strip()
            exc = FunctionError(f"job {t.name}: {message or 'failed'}" + (f" ({why})" if why else ""), text)
            if "\n" in text.strip() and hasattr(exc, "add_note"):   # 3.11+
                exc.add_note("remote traceback:\n" + text.rstrip())
        outcomes = [(False, exc)] * len(futs)
    for f, (ok, v) in zip(futs, outcomes):
        if not f.set_running_or_notify_cancel():
            continue
        if ok:
            f.set_result(v)
        else:
            f.set_exception(v)


def _dependencies(after: Iterable[Any]) -> tuple[list[str], list[str]]:
    names: list[str] = []
    parents: list[str] = []
    for a in after:
        names.append(a.job if isinstance(a, FunctionFuture) else a)
    return names, parents


def _argument(value: Any, after: list[str], parents: list[str]) -> Any:
    """A future passed as an argument: a dependency, replaced by its result when the call runs."""
    if not isinstance(value, FunctionFuture):
        return value
    if value.job not in after:
        after.append(value.job)
    marker = {FUTURE_KEY: value.rq_id}
    if value.rq_id not in parents:
        parents.append(value.rq_id)
    return marker


def _results(futs: list[Future], end: float | None) -> Iterator[Any]:
    """In order, as the standard library's map; the rest are canceled if the caller stops early."""
    try:
        futs.reverse()
        while futs:
            f = futs.pop()
            yield f.result(None if end is None else end - time.monotonic())
    finally:
        for f in futs:
            f.cancel()


__all__ = ["Executor", "FunctionFuture", "FunctionError", "DependencyFailed"]
