"""The only module that talks to Redis: Lua scripts registered once, and thin typed wrappers around them."""
from __future__ import annotations

import logging
import re
import time
from collections import Counter
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable, Sequence

import redis

from .durability import Durability, durability_plan
from .functions import LIBRARY_SCRIPTS, Library
from .topology import node_client, replica_wait
from .errors import (DependencyError, DuplicateJobError, JobSpecError, QcgpjError, QueueFullError, RemoveError,
                     UnknownJobError)
from .keys import EVENTS_GROUP, Keys, lua_prelude
from .resources import parse_compact

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({"SUCCEED", "FAILED", "CANCELED", "OMITTED"})
SCRIPTS = ("submit", "place", "sync", "release", "register", "heartbeat", "requeue", "cancel", "lease", "remove")
STAGE_CHUNK = 2000        # jobs per RPUSH while a batch is staged
STAGE_TTL = 3600          # seconds a staging list left by a killed client lives
BATCH_TTL = 7 * 86400     # seconds a committed batch id is remembered, so that its retry is a no-op
PIPED_BATCH_TTL = 60      # the same for a batch piped with other writes (submit_on), retried only at once
BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
JOB_OVERHEAD = 200        # bytes of Redis per job beyond its strings (hash, list entries): measured 175
EDGE_OVERHEAD = 600       # bytes per dependency (an entry in the parent's children set, often a new set)
Row = tuple[str, str, str, str, str]   # name, spec JSON, req, iter, deps


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
    start: str          # "time@cores": the cores it ran on (Allocation.compact) ride on the start, if it got any
    end: str
    message: str = ""
    usage: str = ""     # "user CPU s,system CPU s,max RSS KiB" of a process (format_usage); '' when unknown


@dataclass(frozen=True, slots=True)
class Entry:
    """A task as it sits on an executor's lists: ``task|cores|nodes|attempt``; a task with GPUs has
    ``cores+gpus`` (GPUs per node) in the cores field."""

    raw: str
    task: str
    cores: int
    nodes: int
    attempt: int
    gpus: int = 0

    @property
    def job(self) -> str:
        return self.task.rsplit(":", 1)[0] if ":" in self.task else self.task

    @property
    def iteration(self) -> int | None:
        return int(self.task.rsplit(":", 1)[1]) if ":" in self.task else None

    @classmethod
    def parse(cls, raw: str) -> "Entry":
        task, cores, nodes, attempt = raw.rsplit("|", 3)
        if "+" in cores:
            cores, gpus = cores.split("+")
            return cls(raw, task, int(cores), int(nodes), int(attempt), int(gpus))
        return cls(raw, task, int(cores), int(nodes), int(attempt))


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


class Store:
    """Redis access for one namespace. Every state change goes through one atomic Lua script."""

    def __init__(self, client: redis.Redis, namespace: str = "default") -> None:
        self.r = client
        self.keys = Keys(namespace)
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}
        self._conn: Any = None   # the executor's own connection for its round trips
        self._submit_loaded = False
        self._lib = Library(_load_script)   # the hot scripts as Redis functions, where the server has them
        self.acks = replica_wait(client)   # replicas that must acknowledge submits and reports (URL wait=N)
        self._short_acks = 0               # reports that fewer replicas acknowledged (warned once per run of them)

    @property
    def node(self) -> redis.Redis:
        """The server that holds this namespace: the client itself, or on a cluster the namespace's shard, for
        the commands that speak of one server (INFO, CONFIG, WAIT, SCAN, a kept connection)."""
        return node_client(self.r, self.keys.jobs)

    def _run(self, name: str, args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=[self.keys.jobs], args=list(args))

    def _run_direct(self, name: str, args: Sequence[Any], evalsha: bool = False) -> Any:
        """The executor's hot path: FCALL (or EVALSHA) on a connection it keeps, without the pool and retry
        layers (a quarter of a chain hop's round trip). Callers retry on ConnectionError; a script or function
        library lost by a Redis restart is loaded again. ``evalsha``: not as a function (see below)."""
        if self._conn is None:
            self._pool = self.node.connection_pool
            self._conn = self._pool.get_connection()
        script = self._scripts[name]
        fn = None if evalsha else self._function(name)
        call = ("FCALL", fn, 1, self.keys.jobs, *args) if fn else ("EVALSHA", script.sha, 1, self.keys.jobs, *args)
        try:
            if self.acks is None:
                self._conn.send_command(*call)
                return self._conn.read_response()
            # WAIT counts the replicas that have this connection's writes: sent together, one round trip.
            self._conn.send_packed_command(self._conn.pack_commands([
                call, ("WAIT", self.acks.replicas, self.acks.timeout_ms)]))
            try:
                res = self._conn.read_response()
            finally:
                acked = self._conn.read_response()
            self._check_acks(int(acked))
            return res
        except redis.exceptions.NoScriptError:
            self.r.script_load(script.script)
            return self._run(name, args)
        except redis.OutOfMemoryError:
            # A function is refused whole past maxmemory; a script only at its first write that may grow
            # memory, after reports that free some (LREM): past maxmemory the script's behaviour is kept.
            if fn is None:
                raise
            return self._run_direct(name, args, evalsha=True)
        except (redis.ConnectionError, redis.TimeoutError):
            self._conn.disconnect()
            raise
        except redis.exceptions.MovedError:   # the namespace's slot moved to another shard: find it again
            self.close()
            raise redis.ConnectionError("the namespace's slot moved") from None
        except redis.ResponseError as exc:   # a master demoted in a fail-over refuses WAIT: ask for the master again
            if fn is not None and "function not found" in str(exc).lower():   # flushed, or a restarted server
                self._lib.usable = None
                return self._run_direct(name, args, evalsha=True)
            if not str(exc).startswith("WAIT cannot be used with replica"):
                raise
            self._conn.disconnect()
            raise redis.ConnectionError(f"the master is now a replica ({exc})") from None

    def _function(self, name: str) -> str | None:
        """The function to FCALL for script ``name``, loading the library first if needed; None: use EVALSHA."""
        if name not in LIBRARY_SCRIPTS or self._lib.usable is False:
            return None
        if self._lib.usable is None and not self._lib.ensure(self.node):
            return None
        return self._lib.name(name)

    def _check_acks(self, acked: int) -> None:
        """Fewer replicas than asked acknowledged a report: it stands on this master alone until they catch up
        (a fail-over now may lose it; the task then runs again). One warning per run of such reports."""
        if acked >= self.acks.replicas:
            if self._short_acks:
                log.info("replicas acknowledge reports again (%d were acknowledged by fewer)", self._short_acks)
            self._short_acks = 0
            return
        if not self._short_acks:
            log.warning("a report was acknowledged by %d of %d replica(s) within %d ms; going on", acked,
                        self.acks.replicas, self.acks.timeout_ms)
        self._short_acks += 1

    # ------------------------------------------------------------------ removal (bench clean-up)
    def drop_namespace(self) -> None:
        """Delete every key of the namespace."""
        self._unlink(lambda key: True)

    def drop_jobs(self, prefix: str) -> None:
        """Remove the (final) jobs whose names start with ``prefix`` from a namespace that others go on using:
        their keys, and their names from the job list (rewritten in one transaction)."""
        starts = tuple(self.keys.of_job(prefix))
        self._unlink(lambda key: key.startswith(starts))
        self._rewrite_jobs(lambda names: [n for n in names if not n.startswith(prefix)])

    def _rewrite_jobs(self, keep: Callable[[list[str]], list[str]]) -> None:
        """Replace the job list by ``keep(list)`` in one transaction (retried if a submit comes meanwhile)."""
        with self.node.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.keys.jobs)
                    kept = keep(pipe.lrange(self.keys.jobs, 0, -1))
                    pipe.multi()
                    pipe.delete(self.keys.jobs)
                    for i in range(0, len(kept), 10_000):
                        pipe.rpush(self.keys.jobs, *kept[i:i + 10_000])
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def remove_jobs(self, names: Sequence[str], how: str) -> list[tuple[str, str]]:
        """Run remove.lua over one batch (``how``: 'check' removes nothing, 'strict' all or nothing, 'skip'
        what can be): a (status, detail) pair per name, or raises :class:`RemoveError` (strict)."""
        res = self._run("remove", ["jobs", now(), how, *names])
        if res and res[0] == "ERR":
            raise RemoveError.of(res[2], res[1], res[3])
        return [(res[i], res[i + 1]) for i in range(0, len(res), 2)]

    def unlist_jobs(self, names: Iterable[str]) -> None:
        """Take removed jobs off the job list: the first entry of each name (a job of the same name submitted
        since then comes later)."""
        gone = Counter(names)

        def keep(listed: list[str]) -> list[str]:
            left, out = Counter(gone), []
            for n in listed:
                if left[n] > 0:
                    left[n] -= 1
                else:
                    out.append(n)
            return out
        self._rewrite_jobs(keep)

    def job_fields(self, names: Sequence[str], *fields: str) -> list[list[str | None]]:
        """The given fields of many jobs, one pipeline."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.job(name), *fields)
        return pipe.execute()

    def prune_executors(self, retention: float) -> int:
        """Forget executors that left or died ``retention`` seconds ago or earlier; returns how many."""
        return int(self._run("remove", ["executors", now(), retention]))

    def trim_events(self, keep: int) -> None:
        """Shorten the events stream (wake-ups and audit trail) to about ``keep`` entries."""
        self.r.xtrim(self.keys.events, maxlen=keep, approximate=False)

    def _unlink(self, wanted: Callable[[str], bool]) -> None:
        """One SCAN over the namespace; UNLINK of the wanted keys in batches."""
        batch: list[str] = []
        for key in self.node.scan_iter(match=self.keys.prefix + "*", count=10_000):
            if wanted(key):
                batch.append(key)
            if len(batch) >= 10_000:
                self.node.unlink(*batch)
                batch = []
        if batch:
            self.node.unlink(*batch)

    def close(self) -> None:
        """Give back the kept connection."""
        if self._conn is not None:
            self._pool.release(self._conn)
            self._conn = None

    # ------------------------------------------------------------------ submit
    def submit(self, rows: list[Row], batch_id: str | None = None, durable: bool = False) -> int:
        """Write a validated, dependency-ordered batch, all or none at any size; rows are (name, spec, req, iter,
        deps). Returns the count of tasks placed at once (0 when ``batch_id`` was committed before: a retry).

        Every check runs before the first write. The rows are then staged in chunks under a key nothing else
        reads, and one script checks again and makes the whole batch visible; a failure before that step
        (a full Redis, a lost connection, a killed client) leaves only the staging list, which is deleted here
        or expires by itself.
        """
        batch_id = batch_id or uuid.uuid4().hex
        if not BATCH_ID_RE.match(batch_id):
            raise QcgpjError(f"invalid batch id {batch_id!r}: use up to 128 letters, digits, '_', '.', '-', ':'")
        if self.r.exists(self.keys.batch(batch_id)):
            if durable or self.acks:
                self._confirm_again(batch_id, durable)
            return 0
        self._precheck(rows)
        self._check_room(rows)
        confirm = durability_plan(self.node, self.acks, durable) if durable or self.acks else None
        attempt = f"{batch_id}:{uuid.uuid4().hex[:8]}"
        try:
            self._stage(self.keys.stage(attempt), rows)
            res = self._commit(attempt, batch_id, len(rows), confirm)
        except redis.OutOfMemoryError:
            self._drop_stage(attempt)
            raise _queue_full(self.node, f"a batch of {len(rows)} job(s)") from None
        except BaseException:
            self._drop_stage(attempt)
            raise
        if res[0] == "ERR":   # another client took a name or removed a dependency since our checks
            self._drop_stage(attempt)
            raise _submit_error(res[1], res[2], res[3])
        return int(res[1]) if res[0] == "OK" else 0

    def _check_room(self, rows: list[Row]) -> None:
        """Refuse a batch that would take Redis past its maxmemory. Checked here because Redis checks only
        before a command: a script, once it wrote, runs to its end however far past maxmemory that takes it.
        The staging list and the jobs written from it exist together until the commit ends."""
        try:
            mem = self.node.info("memory")
        except redis.ResponseError:   # INFO not offered (local mode's fakeredis): no limit known
            return
        limit = int(mem.get("maxmemory", 0))
        if not limit:
            return
        payload = sum(len(f) for row in rows for f in row)
        need = 2 * payload + JOB_OVERHEAD * len(rows) + EDGE_OVERHEAD * sum(row[4].count(" ") + 1
                                                                            for row in rows if row[4])
        used = int(mem["used_memory"])
        if used >= limit:
            raise _queue_full(self.node, f"a batch of {len(rows)} job(s)")
        if used + need > limit:
            raise _queue_full(self.node, f"the batch of {len(rows)} job(s) needs about {need / 2**20:.1f} MB more",
                              "would exceed its maxmemory")

    def _stage(self, key: str, rows: list[Row]) -> None:
        """RPUSH the rows in chunks, in one pipeline; the TTL is set with the first chunk."""
        pipe = self.r.pipeline(transaction=False)
        for i in range(0, len(rows), STAGE_CHUNK):
            pipe.rpush(key, *[f for row in rows[i:i + STAGE_CHUNK] for f in row])
            if i == 0:
                pipe.expire(key, STAGE_TTL)
        pipe.execute()

    def _commit(self, attempt: str, batch_id: str, count: int, confirm: "Durability | None") -> list:
        args = [now(), batch_id, attempt, count, BATCH_TTL]
        try:
            if confirm is None:
                return self._run("submit", args)
            # WAIT and WAITAOF count the writes of their own connection: a pipeline keeps both on one.
            pipe = self.node.pipeline(transaction=False)
            self._scripts["submit"](keys=[self.keys.jobs], args=args, client=pipe)
            confirm.queue(pipe)
            res, *acks = pipe.execute()
            if res[0] == "OK":
                confirm.check(acks, batch_id)
            return res
        except (redis.TimeoutError, redis.ResponseError) as exc:
            if isinstance(exc, redis.ResponseError) and not str(exc).startswith("BUSY"):
                raise
        # A large batch held Redis longer than the client's socket timeout, and the client's retry found it
        # busy: wait until the commit ends, then ask again (a committed batch id answers DONE).
        self._wait_not_busy()
        res = self._run("submit", args)
        if res[0] == "DONE" and confirm is not None:
            self._confirm_again(batch_id, confirm.local)
        return res

    def _wait_not_busy(self, patience: float = 600.0) -> None:
        deadline = time.monotonic() + patience
        while True:
            try:
                self.r.ping()
                return
            except (redis.TimeoutError, redis.ResponseError) as exc:
                if time.monotonic() > deadline or (isinstance(exc, redis.ResponseError) and "BUSY" not in str(exc)):
                    raise
                time.sleep(0.1)

    def _confirm_again(self, batch_id: str, durable: bool) -> None:
        """A durable retry of a batch written before (its confirmation may have timed out): a write after that
        batch, once confirmed, confirms the batch too, as the AOF and the replication stream keep their order."""
        confirm = durability_plan(self.node, self.acks, durable)
        pipe = self.node.pipeline(transaction=False)
        pipe.expire(self.keys.batch(batch_id), BATCH_TTL)
        confirm.queue(pipe)
        _, *acks = pipe.execute()
        confirm.check(acks, batch_id)

    def _drop_stage(self, attempt: str) -> None:
        try:
            self.r.delete(self.keys.stage(attempt))
        except redis.RedisError as exc:   # Redis gone: the staging list expires by itself
            log.warning("staging list of batch %s not deleted (%s); it expires in %d s", attempt, exc, STAGE_TTL)

    def _precheck(self, rows: list[Row]) -> None:
        """The checks against the queue, before anything is written: names free, dependencies outside the
        batch exist, and an iteration named of one of them (``a:3``, ``a:${it}``) exists there."""
        names = [row[0] for row in rows]
        for name in self._existing(names):
            raise DuplicateJobError(name, "name", "a job of that name is already in the queue")
        own = {row[0]: row[3] for row in rows}
        external = sorted({_dep_job(d) for row in rows for d in row[4].split()} - own.keys())
        pipe = self.r.pipeline(transaction=False)
        for name in external:
            pipe.hmget(self.keys.job(name), "state", "it0", "n")
        found = {name: h for name, h in zip(external, pipe.execute())}
        for row in rows:
            for d in row[4].split():
                job, _, sel = d.partition(":")
                h = found.get(job)
                if h is not None:
                    _check_external(row[0], row[3], job, sel, h)

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

    def job_hashes(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Several jobs' hashes in one round trip (the run record); a missing job maps to {}."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.job(name))
        return dict(zip(names, pipe.execute()))

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

    def shapes(self) -> list[tuple[int, ...]] | None:
        """(total cores, nodes, most cores on a node, GPUs, most GPUs on a node, MiB on a node) of each shape of
        live executor, at a cost that does not grow with the executors; None when the counts do not add up
        (executors that joined before they were counted)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.shapes)
        pipe.scard(self.keys.live)
        counts, live = pipe.execute()
        if sum(int(v) for v in counts.values()) != live:
            return None
        return [tuple(int(x) for x in shape.split("|")) for shape in counts]   # type: ignore[misc]

    def specs(self, names: Iterable[str]) -> dict[str, str]:
        names = list(names)
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(self.keys.job(name), "spec")
        return dict(zip(names, pipe.execute()))

    def cancel(self, tasks: Sequence[str]) -> dict[str, str]:
        try:
            return dict(zip(tasks, self._run("cancel", [now(), *tasks])))
        except redis.OutOfMemoryError:   # the script's first write was refused: nothing changed
            raise _queue_full(self.node, f"cancel of {len(tasks)} name(s)") from None

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

    def place_and_ack(self, ids: Sequence[str], unplaceable: float | None = None) -> None:
        """The deep pass and the acknowledgement of the events that asked for it, in one round trip; with
        ``unplaceable`` (a timeout in seconds, 0: none) it also flags, and past the timeout fails, the ready jobs
        that no live executor could ever fit."""
        pipe = self.node.pipeline(transaction=False)   # a cluster's pipelines take no scripts: the shard's does
        self._scripts["place"](keys=[self.keys.jobs], client=pipe,
                               args=[now(), 1000, 100000, "" if unplaceable is None else unplaceable])
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
            return str(self.node.info("server").get("run_id", ""))
        except redis.ResponseError:
            return ""

    def requeue(self, eid: str, max_attempts: int, reason: str, final: str = "DEAD") -> tuple[int, int] | None:
        """Tasks (requeued, failed), or None when the executor had already left or (for DEAD) is alive again."""
        res = self._run("requeue", [eid, now(), max_attempts, reason, final])
        return (int(res[0]), int(res[1])) if int(res[2]) else None

    # ------------------------------------------------------------------ executor side
    def register(self, eid: str, ttl: int, host: str, nodes: str, total: int, maxnode: int, nnodes: int,
                 prefetch: int, pid: int, slurm_job: str = "", gpus: int = 0, gpus_per_node: int = 0,
                 mem_per_node: int = 0) -> None:
        self._run("register", [eid, now(), ttl, host, nodes, total, maxnode, nnodes, prefetch, pid, slurm_job,
                               gpus, gpus_per_node, mem_per_node])

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
                     rep.message, rep.usage]
        res = self._run_direct("sync", args)
        return [(Entry.parse(res[i]), res[i + 1]) for i in range(0, len(res), 2)]

    def running_entries(self, eid: str) -> list[str]:
        return self.r.lrange(self.keys.running(eid), 0, -1)

    def release(self, eid: str, entries: Sequence[str]) -> int:
        """Give back running-list entries the executor does not know; returns how many went back to READY."""
        return int(self._run("release", [eid, now(), *entries])) if entries else 0

    def wait_ready(self, eid: str, timeout: float) -> str | None:
        """Block on the executor's ready list; the entry moves to running at once (BLMOVE), so it cannot be lost.
        fakeredis's BLMOVE never blocks (a waiter spun on it): there, BLPOP then RPUSH, which in one process
        loses nothing either."""
        if type(self.r).__module__.startswith("fakeredis"):
            got = self.r.blpop([self.keys.ready(eid)], timeout=timeout)
            if got:
                self.r.rpush(self.keys.running(eid), got[1])
            return got[1] if got else None
        return self.r.blmove(self.keys.ready(eid), self.keys.running(eid), timeout, "LEFT", "RIGHT")

    def control(self, eid: str, timeout: float) -> str | None:
        res = self.r.blpop([self.keys.control(eid)], timeout=timeout)
        return res[1] if res else None

    # ------------------------------------------------------------------ submit beside other writes
    def submit_on(self, pipe: Any, rows: list[Row]) -> None:
        """Queue a small validated batch on ``pipe``, staged and committed in the same round trip as the caller's
        own keys (qcgpj.Executor: a call's rq job and its qcgpj job). The commit checks names and dependencies
        itself; pass its reply (the pipeline's last) to :meth:`submitted`. Its batch id is remembered only
        briefly (PIPED_BATCH_TTL): nothing retries such a batch later than the caller does at once."""
        attempt = uuid.uuid4().hex
        key = self.keys.stage(attempt)
        pipe.rpush(key, *[f for row in rows for f in row])
        pipe.expire(key, STAGE_TTL)
        script = self._scripts["submit"]
        if not self._submit_loaded:   # EVALSHA itself: a script object in a pipeline asks SCRIPT EXISTS each time
            self.r.script_load(script.script)
            self._submit_loaded = True
        pipe.evalsha(script.sha, 1, self.keys.jobs, now(), attempt, attempt, len(rows), PIPED_BATCH_TTL)

    def submitted(self, reply: Any) -> int:
        """The reply of a piped submit: how many jobs were queued, or the error naming the job and field. After
        a Redis restart (scripts flushed) it raises NoScriptError: the caller writes again."""
        if isinstance(reply, redis.exceptions.NoScriptError):
            self._submit_loaded = False
            raise reply
        if isinstance(reply, Exception):
            raise reply
        if reply[0] == "ERR":
            raise _submit_error(reply[1], reply[2], reply[3])
        return int(reply[1])


def _dep_job(dep: str) -> str:
    return dep.split(":", 1)[0]


def _check_external(job: str, iters: str, parent: str, sel: str, h: list[str | None]) -> None:
    """A dependency on a job already in the queue: it exists, and so does the iteration it names."""
    if h[0] is None:
        raise DependencyError(job, "dependencies.after", f"unknown job '{parent}'")
    if not sel:
        return
    span = None if h[2] is None else (int(h[1]), int(h[2]))
    if sel == "*":
        mine = tuple(int(x) for x in iters.split("|")) if iters else None
        if span is None or span != mine:
            raise _submit_error("periteration", job, parent)
    elif span is None or not span[0] <= int(sel) < span[0] + span[1]:
        raise _submit_error("iteration", job, f"{parent}:{sel}")


def _queue_full(client: redis.Redis, what: str, state: str = "is full") -> QueueFullError:
    """The one line for a Redis at (or a batch past) its maxmemory; worded like connection.redis_error's."""
    try:
        mem = client.info("memory")
        detail = f"{mem['used_memory_human']} used of maxmemory {mem['maxmemory_human']}"
    except redis.RedisError:
        detail = "limit unknown"
    return QueueFullError(f"Redis {state}: out of memory (maxmemory reached), {detail}: {what}; nothing was "
                          "written; free memory (qcgpj remove --finished) or raise maxmemory, then try again")


def _submit_error(kind: str, job: str, detail: str) -> QcgpjError:
    if kind == "staging":
        return QcgpjError(f"the staged batch of {detail} job(s) was incomplete (it expired, or Redis lost it): "
                          "nothing was written; submit again")
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
