"""The only module that talks to Redis: Lua scripts registered once, and thin typed wrappers around them."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable, Sequence

import redis

from .errors import DependencyError, DuplicateJobError, JobSpecError, UnknownJobError
from .keys import EVENTS_GROUP, Keys, lua_prelude

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"SUCCEED", "FAILED", "CANCELED", "OMITTED"})
SCRIPTS = ("submit", "place", "sync", "release", "register", "heartbeat", "requeue", "cancel", "lease")
SUBMIT_CHUNK = 1000


def now() -> str:
    """Timestamps are Unix seconds with milliseconds, as strings: readable with redis-cli, sortable."""
    return f"{time.time():.3f}"


def _load_script(name: str) -> str:
    return (resources.files("qcgpj") / "lua" / f"{name}.lua").read_text()


_SOURCES: dict[str, str] = {}


def script_source(name: str) -> str:
    """Key prelude + shared functions + the script itself, composed once per process."""
    if name not in _SOURCES:
        head = lua_prelude() + (_load_script("common") if name != "lease" else "")
        _SOURCES[name] = head + "\n" + _load_script(name)
    return _SOURCES[name]


@dataclass(frozen=True, slots=True)
class Report:
    """What an executor tells about one finished task."""

    entry: str
    state: str
    exit_code: int | None
    start: str
    end: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """A task as it sits on an executor's lists: ``task|cores|nodes|attempt``."""

    raw: str
    task: str
    cores: int
    nodes: int
    attempt: int

    @property
    def job(self) -> str:
        return self.task.rsplit(":", 1)[0] if ":" in self.task else self.task

    @property
    def iteration(self) -> int | None:
        return int(self.task.rsplit(":", 1)[1]) if ":" in self.task else None

    @classmethod
    def parse(cls, raw: str) -> "Entry":
        task, cores, nodes, attempt = raw.rsplit("|", 3)
        return cls(raw, task, int(cores), int(nodes), int(attempt))


def parse_record(rec: str) -> dict[str, Any]:
    """An iteration record ``STATE|exit|executor|start|end|attempt|message`` as a dict."""
    state, exit_code, eid, t0, t1, att, msg = rec.split("|", 6)
    return {"state": state, "exit_code": int(exit_code) if exit_code else None, "executor": eid or None,
            "start": float(t0) if t0 else None, "end": float(t1) if t1 else None,
            "attempt": int(att or 0), "message": msg}


class Store:
    """Redis access for one namespace. Every state change goes through one atomic Lua script."""

    def __init__(self, client: redis.Redis, namespace: str = "default") -> None:
        self.r = client
        self.keys = Keys(namespace)
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}
        self._conn: Any = None   # the executor's own connection for its round trips

    def _run(self, name: str, args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=[self.keys.jobs], args=list(args))

    def _run_direct(self, name: str, args: Sequence[Any]) -> Any:
        """The executor's hot path: EVALSHA on a connection it keeps, without the pool and retry layers
        (a quarter of a chain hop's round trip). Callers retry on ConnectionError; a script flushed by a
        Redis restart is loaded again."""
        if self._conn is None:
            self._conn = self.r.connection_pool.get_connection()
        script = self._scripts[name]
        try:
            self._conn.send_command("EVALSHA", script.sha, 1, self.keys.jobs, *args)
            return self._conn.read_response()
        except redis.exceptions.NoScriptError:
            self.r.script_load(script.script)
            return self._run(name, args)
        except (redis.ConnectionError, redis.TimeoutError):
            self._conn.disconnect()
            raise

    # ------------------------------------------------------------------ removal (bench clean-up)
    def drop_namespace(self) -> None:
        """Delete every key of the namespace."""
        self._unlink(lambda key: True)

    def drop_jobs(self, prefix: str) -> None:
        """Remove the (final) jobs whose names start with ``prefix`` from a namespace that others go on using:
        their keys, and their names from the job list (rewritten in one transaction)."""
        starts = tuple(self.keys.of_job(prefix))
        self._unlink(lambda key: key.startswith(starts))
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.keys.jobs)
                    kept = [n for n in pipe.lrange(self.keys.jobs, 0, -1) if not n.startswith(prefix)]
                    pipe.multi()
                    pipe.delete(self.keys.jobs)
                    for i in range(0, len(kept), 10_000):
                        pipe.rpush(self.keys.jobs, *kept[i:i + 10_000])
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def _unlink(self, wanted: Callable[[str], bool]) -> None:
        """One SCAN over the namespace; UNLINK of the wanted keys in batches."""
        batch: list[str] = []
        for key in self.r.scan_iter(match=self.keys.prefix + "*", count=10_000):
            if wanted(key):
                batch.append(key)
            if len(batch) >= 10_000:
                self.r.unlink(*batch)
                batch = []
        if batch:
            self.r.unlink(*batch)

    def close(self) -> None:
        """Give back the kept connection."""
        if self._conn is not None:
            self.r.connection_pool.release(self._conn)
            self._conn = None

    # ------------------------------------------------------------------ submit
    def submit(self, rows: list[tuple[str, str, str, str, str]]) -> int:
        """Write a validated, dependency-ordered batch; rows are (name, spec, req, iter, deps). Returns placed count.

        Names and external dependencies are checked for the whole batch before the first chunk is written,
        so a batch larger than one script call is still rejected whole.
        """
        self._precheck(rows)
        placed = 0
        for i in range(0, len(rows), SUBMIT_CHUNK):
            chunk = rows[i:i + SUBMIT_CHUNK]
            args: list[Any] = [now(), len(chunk)]
            for row in chunk:
                args.extend(row)
            res = self._run("submit", args)
            if res[0] == "ERR":
                raise _submit_error(res[1], res[2], res[3])
            placed += int(res[1])
        return placed

    def _precheck(self, rows: list[tuple[str, str, str, str, str]]) -> None:
        names = [row[0] for row in rows]
        for name in self._existing(names):
            raise DuplicateJobError(name, "name", "a job of that name is already in the queue")
        external = sorted({_dep_job(d) for row in rows for d in row[4].split()} - set(names))
        missing = set(external) - set(self._existing(external))
        for row in rows:
            for d in row[4].split():
                if _dep_job(d) in missing:
                    raise DependencyError(row[0], "dependencies.after", f"unknown job '{_dep_job(d)}'")

    def _existing(self, names: list[str]) -> list[str]:
        """Which of these jobs exist: one EXISTS per thousand names; only a hit is looked at name by name."""
        out: list[str] = []
        pipe = self.r.pipeline(transaction=False)
        chunks = [names[i:i + 1000] for i in range(0, len(names), 1000)]
        for chunk in chunks:
            pipe.exists(*[self.keys.job(n) for n in chunk])
        for chunk, count in zip(chunks, pipe.execute()):
            if count:
                pipe = self.r.pipeline(transaction=False)
                for n in chunk:
                    pipe.exists(self.keys.job(n))
                out += [n for n, hit in zip(chunk, pipe.execute()) if hit]
        return out

    # ------------------------------------------------------------------ queries
    def job_names(self) -> list[str]:
        return self.r.lrange(self.keys.jobs, 0, -1)

    def states(self, names: Sequence[str]) -> dict[str, str | None]:
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(self.keys.job(name), "state")
        return dict(zip(names, pipe.execute()))

    def active(self) -> int:
        """Jobs not yet final: the cheap test for 'everything is done'."""
        return int(self.r.get(self.keys.active) or 0)

    def job_hash(self, name: str) -> dict[str, str]:
        h = self.r.hgetall(self.keys.job(name))
        if not h:
            raise UnknownJobError(f"unknown job '{name}'")
        return h

    def iteration_record(self, name: str, it: int) -> str | None:
        return self.r.hget(self.keys.its(name), str(it))

    def iteration_records(self, name: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.its(name))

    def executors(self, departed: bool = False) -> dict[str, dict[str, str]]:
        """The live executors, with (``departed``) those that left or died: every one that ever joined."""
        ids = sorted(self.r.smembers(self.keys.executors if departed else self.keys.live))
        pipe = self.r.pipeline(transaction=False)
        for eid in ids:
            pipe.hgetall(self.keys.exec(eid))
            pipe.exists(self.keys.alive(eid))
            pipe.llen(self.keys.running(eid))
        res = pipe.execute()
        out = {}
        for i, eid in enumerate(ids):
            h = dict(res[3 * i])
            h["alive"] = str(bool(res[3 * i + 1]))
            h["running"] = str(res[3 * i + 2])
            out[eid] = h
        return out

    def specs(self, names: Iterable[str]) -> dict[str, str]:
        names = list(names)
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(self.keys.job(name), "spec")
        return dict(zip(names, pipe.execute()))

    def cancel(self, tasks: Sequence[str]) -> dict[str, str]:
        return dict(zip(tasks, self._run("cancel", [now(), *tasks])))

    # ------------------------------------------------------------------ events (wake-ups)
    def last_event_id(self) -> str:
        info = self.r.xrevrange(self.keys.events, count=1)
        return info[0][0] if info else "0-0"

    def wait_event(self, last_id: str, timeout: float) -> str:
        """Block until an event after last_id (or the timeout); returns the newest id seen."""
        res = self.r.xread({self.keys.events: last_id}, count=1000, block=max(1, int(timeout * 1000)))
        if res:
            return res[0][1][-1][0]
        return last_id

    def emit(self, kind: str, data: str) -> None:
        """An event from Python (the scripts emit their own): wakes waiters, leaves a trail."""
        self.r.xadd(self.keys.events, {"type": kind, "data": data}, maxlen=10000, approximate=True)

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.keys.events, EVENTS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_group(self, consumer: str, timeout: float, count: int = 1000) -> list[str]:
        """Pending (unacknowledged) events first, so a restarted InputQueue re-reads what it had not handled."""
        ids: list[str] = []
        for start in ("0", ">"):
            res = self.r.xreadgroup(EVENTS_GROUP, consumer, {self.keys.events: start}, count=count,
                                    block=None if start == "0" else max(1, int(timeout * 1000)))
            for _stream, entries in res or []:
                ids.extend(eid for eid, _fields in entries)
            if ids:
                break
        return ids

    def place_and_ack(self, ids: Sequence[str]) -> None:
        """The deep pass and the acknowledgement of the events that asked for it, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        self._scripts["place"](keys=[self.keys.jobs], args=[now(), 1000, 100000], client=pipe)
        if ids:
            pipe.xack(self.keys.events, EVENTS_GROUP, *ids)
        pipe.execute()

    def lease(self, candidate: str, ttl_ms: int, role: str = "inputqueue") -> bool:
        """The leader lease of a service: ``role`` 'inputqueue' or 'alloc' (the allocator)."""
        return self._run("lease", [candidate, ttl_ms, role]) == candidate

    def release_lease(self, holder: str, role: str = "inputqueue") -> None:
        """Give the lease up if it is still ours."""
        self._run("lease", [holder, "release", role])

    def dead_executors(self) -> dict[str, float]:
        """Executors without a heartbeat, with their TTL (seconds). Candidates only: one that leaves meanwhile
        looks dead here; ``requeue`` checks again, atomically."""
        ids = sorted(self.r.smembers(self.keys.live))
        pipe = self.r.pipeline(transaction=False)
        for eid in ids:
            pipe.exists(self.keys.alive(eid))
            pipe.hget(self.keys.exec(eid), "ttl")
        res = pipe.execute()
        return {eid: float(res[2 * i + 1] or 10) for i, eid in enumerate(ids) if not res[2 * i]}

    def server_run(self) -> str:
        """The Redis server's run id: it changes when Redis restarts (and its heartbeat keys may have expired).
        '' where INFO is not allowed (an ACL) or not known (fakeredis, in local mode)."""
        try:
            return str(self.r.info("server").get("run_id", ""))
        except redis.ResponseError:
            return ""

    def requeue(self, eid: str, max_attempts: int, reason: str, final: str = "DEAD") -> tuple[int, int] | None:
        """Tasks (requeued, failed), or None when the executor had already left or (for DEAD) is alive again."""
        res = self._run("requeue", [eid, now(), max_attempts, reason, final])
        return (int(res[0]), int(res[1])) if int(res[2]) else None

    # ------------------------------------------------------------------ executor side
    def register(self, eid: str, ttl: int, host: str, nodes: str, total: int, maxnode: int, nnodes: int,
                 prefetch: int, pid: int, slurm_job: str = "") -> None:
        self._run("register", [eid, now(), ttl, host, nodes, total, maxnode, nnodes, prefetch, pid, slurm_job])

    def heartbeat(self, eid: str, ttl: int) -> str:
        return self._run("heartbeat", [eid, now(), ttl])

    def sync(self, eid: str, want: int, adopt: Sequence[str] = (), started: Sequence[tuple[str, str]] = (),
             finished: Sequence[Report] = (), prefetch: int | None = None) -> list[tuple[Entry, str]]:
        """One executor round trip: report started and finished tasks, claim up to ``want`` more, and change
        the executor's prefetch (its placement credit beyond its cores) if ``prefetch`` is given.

        Returns [(entry, spec JSON or '' when the same job as the entry before)] for adopted and claimed work.
        """
        args: list[Any] = [eid, now(), want, len(adopt), len(started), len(finished),
                           "" if prefetch is None else prefetch, *adopt]
        for entry, t0 in started:
            args += [entry, t0]
        for rep in finished:
            args += [rep.entry, rep.state, "" if rep.exit_code is None else rep.exit_code, rep.start, rep.end,
                     rep.message]
        res = self._run_direct("sync", args)
        return [(Entry.parse(res[i]), res[i + 1]) for i in range(0, len(res), 2)]

    def running_entries(self, eid: str) -> list[str]:
        return self.r.lrange(self.keys.running(eid), 0, -1)

    def release(self, eid: str, entries: Sequence[str]) -> int:
        """Give back running-list entries the executor does not know; returns how many went back to READY."""
        return int(self._run("release", [eid, now(), *entries])) if entries else 0

    def wait_ready(self, eid: str, timeout: float) -> str | None:
        """Block on the executor's ready list; the entry moves to running at once (BLMOVE), so it cannot be lost."""
        return self.r.blmove(self.keys.ready(eid), self.keys.running(eid), timeout, "LEFT", "RIGHT")

    def control(self, eid: str, timeout: float) -> str | None:
        res = self.r.blpop([self.keys.control(eid)], timeout=timeout)
        return res[1] if res else None

def _dep_job(dep: str) -> str:
    return dep.split(":", 1)[0]


def _submit_error(kind: str, job: str, detail: str) -> JobSpecError:
    if kind == "duplicate":
        return DuplicateJobError(job, "name", "a job of that name is already in the queue")
    if kind == "unknown":
        return DependencyError(job, "dependencies.after", f"unknown job '{detail}'")
    if kind == "periteration":
        return DependencyError(job, "dependencies.after",
                               f"'{detail}:${{it}}' needs both jobs iterative over the same iterations")
    if kind == "iteration":
        return DependencyError(job, "dependencies.after", f"'{detail}' names no iteration of that job")
    return JobSpecError(job, None, f"rejected by the queue: {kind} {detail}")
