"""``function``: a Python call described by an rq job (``qcgpj.Executor`` submits them), run in a warm,
killable process bound to the task's cores.

The task's ``exec`` is the rq job id (an iteration ``i`` of a map runs ``<id>-<i>``); ``model_opts`` give the
namespace (whose executor connection writes the result), the serializer and the ids of the futures passed as
arguments. One I/O thread per executor process (the pool's) reads the calls' data from Redis, hands them to idle
warm processes, and writes their outcomes through rq's result API, many per round trip. A call ends for the
executor when its outcome is written, so a dependent task finds its parent's result when it starts.

Unlike ``python`` (a call in the executor's own thread, cheap but not killable), a call here can be canceled or
stopped at its walltime (its process and session are killed and replaced), and a crash (a segfault,
``os._exit``) fails that call only.
"""
from __future__ import annotations

import base64
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from typing import Any

from qcgpj import funcjobs
from qcgpj.connection import task_environ
from qcgpj.keys import rq_job, rq_results
from qcgpj.launching import CpuMap
from qcgpj.outage import Outage, transient

from .base import KILL_GRACE, Running, TaskContext, Worker
from .fnproc import read_msg, write_msg

log = logging.getLogger(__name__)

MAX_CALLS = 2000              # a warm process is replaced after this many calls (leaks, fragmentation) ...
MAX_RSS_KB = 2 * 1024 * 1024  # ... or once it has grown beyond this resident size
RESULT_TTL = 86400
CACHED_RESULTS = 4096         # recent results kept for the calls that take them as arguments ...
CACHED_SIZE = 65536           # ... when no larger than this (bytes) ...
CACHED_BYTES = 8 * 1024 * 1024   # ... and no more than this in all: 4096 results of 64 kB held 256 MB for good
KILLED = "killed by qcgpj (canceled, or at its walltime)"


def _root() -> str:
    """The directory the top package (qcgpj) was imported from, for the warm processes' sys.path: in a source
    tree this package is its top-level workers/ folder, not qcgpj/workers (tests run a worktree)."""
    top = sys.modules[__package__.split(".")[0]].__file__
    return os.path.dirname(os.path.dirname(os.path.abspath(top)))


class Call(Running):
    """One task's call: ended when its outcome is in Redis."""

    def __init__(self, ctx: TaskContext, pool: "Pool") -> None:
        opts = ctx.model_opts
        self.ctx, self.pool = ctx, pool
        self.rqid = ctx.argv[0] + (f"-{ctx.iteration}" if ctx.iteration is not None else "")
        self.namespace: str = opts.get("ns", "default")
        self.serializer: str = opts.get("serializer", "json")
        self.parents: list[str] = list(opts.get("futures", ()))
        self.ttl: int = int(opts.get("result_ttl", RESULT_TTL))
        data = opts.get("data")
        self.data: bytes | None = None if data is None else (
            base64.b64decode(data) if opts.get("encoding") == "base64" else data.encode())
        self.proc: Proc | None = None
        self.conn: Any = None   # the bytes client of the executor's Redis, once known
        self.killed = False
        self.code: int | None = None
        self.done = threading.Event()

    def wait(self, timeout: float | None) -> int | None:
        return self.code if self.done.wait(timeout) else None

    def poll(self) -> int | None:
        return self.code if self.done.is_set() else None

    def kill(self) -> None:
        self.pool.kill(self)

    def terminate(self) -> None:
        """SIGTERM to the call's process, from a signal handler (local mode ending on a signal): no lock and no
        timer, which Pool.kill takes and starts; the caller kills what is left after the grace."""
        proc = self.proc
        if proc is not None:
            proc.signal(signal.SIGTERM)


class Proc:
    """A warm process, with the pipes to and from it."""

    def __init__(self, cpus: frozenset[int] | None, env: dict[str, str]) -> None:
        to_r, self.to_child = os.pipe()
        self.from_child, from_w = os.pipe()
        code = f"import sys; sys.path.insert(0, {_root()!r}); from {__package__}.fnproc import main; main()"
        self.popen = subprocess.Popen([sys.executable, "-c", code, str(to_r), str(from_w)], pass_fds=(to_r, from_w),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        os.close(to_r)
        os.close(from_w)
        self.cpus = cpus
        if cpus:
            try:
                os.sched_setaffinity(self.popen.pid, cpus)
            except OSError as exc:
                log.warning("cannot bind a function process to CPUs %s: %s", sorted(cpus), exc)
        self.calls = 0
        self.call: Call | None = None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass


class Pool:
    """The warm processes of this executor process, per CPU binding, and the I/O thread that serves them."""

    def __init__(self) -> None:
        self.cpus = CpuMap()
        self.env = task_environ()
        self._lock = threading.RLock()   # the executor's threads send calls too
        self._new: deque[Call] = deque()
        self._idle: dict[frozenset[int] | None, list[Proc]] = {}
        self._busy: dict[int, Proc] = {}
        self._procs: dict[int, Proc] = {}    # every live process, by the descriptor it answers on
        self._retired: list[Proc] = []
        self._results: OrderedDict[str, bytes] = OrderedDict()   # rq id -> serialized result, written here
        self._cached = 0                                          # bytes in _results
        self._unwritten: list[tuple[Call, tuple]] = []   # outcomes Redis was away for: written once it is back
        self._unread: list[Call] = []                     # calls whose data Redis was away for
        self._outage = Outage("function pool", log)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._epoll = select.epoll()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        threading.Thread(target=self._serve, name="qcgpj-functions", daemon=True).start()

    def submit(self, call: Call) -> None:
        """Called by the executor: a call whose data and arguments are at hand goes to an idle process from here,
        without waking the I/O thread (a hop of a chain of calls); the others go through the I/O thread."""
        with self._lock:
            if call.data is not None and all(p in self._results for p in call.parents):
                try:
                    self._send(call, call.data, {p: self._results[p] for p in call.parents})
                    return
                except OSError:   # the I/O thread tries again (and reports a failure)
                    pass
            self._new.append(call)
        os.write(self._wake_w, b"x")

    def kill(self, call: Call) -> None:
        with self._lock:
            if call.done.is_set() or call.killed:
                return
            call.killed = True
            proc = call.proc
            if proc is None:   # not handed to a process yet: it is dropped when taken from the queue
                os.write(self._wake_w, b"x")
                return
        proc.signal(signal.SIGTERM)
        t = threading.Timer(KILL_GRACE, proc.signal, args=(signal.SIGKILL,))
        t.daemon = True
        t.start()

    # ------------------------------------------------------------------ the I/O thread
    def _serve(self) -> None:
        while True:
            try:
                self._round()
            except Exception:   # the thread must live on: every call still gets an outcome
                log.exception("function pool: unexpected error")

    def _round(self) -> None:
        ended, self._unwritten = self._unwritten, []
        retry, self._unread = self._unread, []
        for fd, _ev in self._epoll.poll(self._outage.delay if ended or retry else 1.0):
            if fd == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                continue
            with self._lock:
                proc = self._busy.pop(fd, None)
                if proc is not None:
                    ended.append(self._reply(proc))
                elif fd in self._procs:   # an idle process died (killed from outside): forget it
                    self._drop(self._procs[fd])
        with self._lock:
            new = retry + list(self._new)
            self._new.clear()
        if new:
            ended.extend(self._dispatch(new))
        if ended:
            self._write(ended)
        with self._lock:
            self._retired = [p for p in self._retired if p.popen.poll() is None]

    def _reply(self, proc: Proc) -> tuple[Call, tuple]:
        call = proc.call
        assert call is not None
        proc.call = call.proc = None   # a kill while its outcome waits for Redis must spare the process's next call
        try:
            msg = read_msg(proc.from_child)
        except OSError:
            msg = None
        if msg is None:   # the process died: a crash, os._exit, or our kill
            self._forget(proc)
            return call, ("died", proc.popen.wait())
        _id, outcome, rss = msg
        proc.calls += 1
        if proc.calls >= MAX_CALLS or rss > MAX_RSS_KB:
            self._retire(proc)
        else:
            self._idle.setdefault(proc.cpus, []).append(proc)
        return call, outcome

    def _retire(self, proc: Proc) -> None:
        self._forget(proc)   # the process ends when it reads the end of its pipe
        self._retired.append(proc)

    def _forget(self, proc: Proc) -> None:
        self._epoll.unregister(proc.from_child)
        self._procs.pop(proc.from_child, None)
        proc.close()

    def _drop(self, proc: Proc) -> None:
        idle = self._idle.get(proc.cpus, [])
        if proc in idle:
            idle.remove(proc)
        self._forget(proc)
        self._retired.append(proc)

    def _dispatch(self, calls: list[Call]) -> list[tuple[Call, tuple]]:
        """Send the calls, reading from Redis (one round trip per namespace) only what is not at hand: a call's
        data travels in its spec when small, and its futures' results were often written by this process."""
        failed: list[tuple[Call, tuple]] = []
        by_conn: dict[int, tuple[Any, list[Call]]] = {}
        for call in calls:
            if call.killed:
                failed.append((call, ("died", -signal.SIGKILL)))
            elif call.data is not None and all(p in self._results for p in call.parents):
                with self._lock:
                    parents = {p: self._results[p] for p in call.parents}
                self._start(call, call.data, parents, failed)
            else:
                try:
                    conn = self._conn(call)
                except Exception as exc:
                    failed.append((call, _error(f"cannot reach the call's Redis: {exc}")))
                    continue
                by_conn.setdefault(id(conn), (conn, []))[1].append(call)
        for conn, group in by_conn.values():
            try:
                pipe = conn.pipeline(transaction=False)
                for call in group:
                    pipe.hget(rq_job(call.rqid), "data")
                    for parent in call.parents:
                        pipe.xrevrange(rq_results(parent), count=1)
                raw = iter(pipe.execute())
            except Exception as exc:
                if transient(exc):   # Redis restarting: read again once it is back, as the executor waits too
                    self._outage.failed(exc)
                    self._unread.extend(group)
                else:
                    failed.extend((call, _error(f"cannot read the call from Redis: {exc}")) for call in group)
                continue
            self._outage.ok()
            for call in group:
                data = next(raw)
                parents = {p: funcjobs.b64_result(next(raw)) for p in call.parents}
                missing = [p for p, v in parents.items() if v is None]
                if data is None or missing:
                    what = f"the result of {missing[0]}" if missing else "its rq job"
                    failed.append((call, _error(f"call {call.rqid}: {what} is not in Redis (expired?)")))
                else:
                    self._start(call, _decompress(data), parents, failed)
        return failed

    def _start(self, call: Call, data: bytes, parents: dict[str, Any], failed: list[tuple[Call, tuple]]) -> None:
        try:
            self._send(call, data, parents)
        except OSError as exc:
            failed.append((call, _error(f"cannot start the call: {exc}")))

    def close(self, grace: float = KILL_GRACE) -> int:
        """The executor process leaves: close the pipes of the idle (and retired) warm processes, which then end,
        and reap them (up to ``grace`` seconds), so that they are not taken for tasks it left running (its
        supervisor killed them, with a warning, at every stop of a worker that had run a call). A process still
        running a call (the executor was told to leave at once) is left to the supervisor. Returns how many
        ended."""
        with self._lock:
            idle = [p for procs in self._idle.values() for p in procs]
            self._idle.clear()
            for proc in idle:
                self._forget(proc)
            ending, self._retired = idle + self._retired, []
        deadline = time.monotonic() + grace
        ended = 0
        for proc in ending:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
                ended += 1
            except subprocess.TimeoutExpired:
                log.warning("function process %d did not end with its pipe closed", proc.popen.pid)
        return ended

    def _cache(self, rqid: str, result: bytes) -> None:
        """Keep a result for the calls that take it as an argument (a chain's next hop starts without reading
        Redis), the oldest going first beyond CACHED_RESULTS or CACHED_BYTES: the cache is a shortcut, not a
        store, and a long-lived executor must not keep its share of every campaign's results."""
        with self._lock:
            old = self._results.pop(rqid, None)
            self._cached += len(result) - (len(old) if old is not None else 0)
            self._results[rqid] = result
            while len(self._results) > CACHED_RESULTS or self._cached > CACHED_BYTES:
                self._cached -= len(self._results.popitem(last=False)[1])

    @staticmethod
    def _conn(call: Call) -> Any:
        if call.conn is None:
            call.conn = funcjobs.client_for(call.namespace, call.rqid)
        return call.conn

    def _send(self, call: Call, data: bytes, parents: dict[str, bytes | None]) -> None:
        ctx = call.ctx
        key = self.cpus.binding(ctx.local_cores())
        env = {k: v for k, v in ctx.env.items() if self.env.get(k) != v}
        with self._lock:
            idle = self._idle.get(key)
            proc = idle.pop() if idle else Proc(key, self.env)
            call.proc = proc
            proc.call = call
            self._busy[proc.from_child] = proc
            if proc.from_child not in self._procs:
                self._procs[proc.from_child] = proc
                self._epoll.register(proc.from_child, select.EPOLLIN)
            try:
                write_msg(proc.to_child, {"id": call.rqid, "serializer": call.serializer, "data": data,
                                          "parents": parents, "cwd": ctx.cwd, "env": env, "stdout": ctx.stdout,
                                          "stderr": ctx.stderr})
            except OSError:   # the process died while idle: forget it, the call stays unsent
                del self._busy[proc.from_child]
                proc.call = call.proc = None
                self._forget(proc)
                self._retired.append(proc)
                raise
            if call.killed:   # canceled while its data was read: the kill found no process
                proc.signal(signal.SIGKILL)

    def _write(self, ended: list[tuple[Call, tuple]]) -> None:
        """Outcomes through rq's result API, one round trip per namespace; then the calls end."""
        by_conn: dict[int, tuple[Any, list[tuple[Call, tuple]]]] = {}
        for call, outcome in ended:
            try:
                conn = self._conn(call)
            except Exception:
                log.exception("function pool: no connection for %s", call.rqid)
                call.code = 1
                call.done.set()
                continue
            by_conn.setdefault(id(conn), (conn, []))[1].append((call, outcome))
        for conn, group in by_conn.values():
            try:
                pipe = conn.pipeline(transaction=False)
                for call, outcome in group:
                    _record(pipe, conn, call, outcome)
                pipe.execute()
            except Exception as exc:
                if transient(exc):   # a call ends once its outcome is in Redis (else: SUCCEED, no result)
                    self._outage.failed(exc)
                    self._unwritten.extend(group)
                    continue
                log.exception("function pool: cannot write the outcome of %d call(s)", len(group))
                for call, _outcome in group:   # not SUCCEED without a result
                    call.code = 1
                    call.done.set()
                continue
            self._outage.ok()
            for call, outcome in group:
                if outcome[0] == "ok" and len(outcome[1]) <= CACHED_SIZE:
                    self._cache(call.rqid, outcome[1])
                call.code = _code(outcome)
                call.done.set()


def _decompress(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)   # rq compresses a job's data
    except zlib.error:
        return data


def _error(text: str) -> tuple:
    return ("error", "", text, text)


def _code(outcome: tuple) -> int:
    if outcome[0] == "ok":
        return 0
    if outcome[0] == "died":
        return outcome[1] or 1   # os._exit(0) before answering is still a failure of the call
    return 1


def _record(pipe: Any, conn: Any, call: Call, outcome: tuple) -> None:
    if outcome[0] == "ok":
        funcjobs.write_success(pipe, conn, call.rqid, call.serializer, outcome[1], call.ttl)
    elif outcome[0] == "died":
        code = outcome[1]
        if call.killed:
            text = KILLED
        elif code < 0:
            text = f"the process running the call died of signal {signal.Signals(-code).name}"
        else:
            text = f"the process running the call exited with code {code} before returning"
        funcjobs.write_failure(pipe, conn, call.rqid, call.serializer, text, call.ttl)
    else:
        _kind, exc_type, message, text, *args = outcome
        funcjobs.write_failure(pipe, conn, call.rqid, call.serializer, text, call.ttl, exc_type, message,
                               args=args[0] if args else None)


class FunctionWorker(Worker):
    name = "function"
    _pool: Pool | None = None
    _pool_lock = threading.Lock()

    def start(self, ctx: TaskContext) -> Running:
        pool = FunctionWorker._pool
        if pool is None:
            with FunctionWorker._pool_lock:
                if FunctionWorker._pool is None:
                    FunctionWorker._pool = Pool()
                pool = FunctionWorker._pool
        call = Call(ctx, pool)
        pool.submit(call)
        return call

    @classmethod
    def close(cls) -> None:
        """End this process's warm processes (a worker's executor leaves): see :meth:`Pool.close`."""
        with cls._pool_lock:
            pool, cls._pool = cls._pool, None
        if pool is not None:
            log.debug("function pool: %d warm process(es) ended", pool.close())
