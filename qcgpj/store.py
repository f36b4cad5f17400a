"""The only module that talks to Redis: Lua scripts registered once, and thin typed wrappers around them."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .functions import LIBRARY_SCRIPTS, Library
from .topology import node_client, replica_wait
from .errors import RemoveError, UnknownJobError, clip
from .keys import EVENTS_GROUP, Keys, lua_prelude, rq_job, rq_results
from .submission import Submission, _queue_full
from .timefmt import now
# a task's record as the queue keeps it (re-exported: the other modules know them as store's)
from .taskrecords import (FINAL_STATES, format_usage, parse_record, parse_usage, unrecorded_info,  # noqa: F401
                          unrecorded_message, unrecorded_runs, unrecorded_state)

log = logging.getLogger(__name__)

# A round trip the executor makes while none of its tasks runs (a hop of a dependency chain) watches its
# connection for the answer this long before it sleeps on it: waking a thread whose CPU has gone idle costs
# a virtual machine tens of µs, about a tenth of a hop (the answer mostly comes within 0.15 ms).
SPIN_FOR_REPLY = 0.0003
SCRIPTS = ("submit", "place", "sync", "release", "register", "heartbeat", "requeue", "cancel", "lease", "remove",
           "idle")
CANCEL_BATCH = 1000   # names per cancel.lua call, as remove's: 3-14 ms of Redis each on the 2-core test VM
CANCEL_ACK_WAIT = 10.0   # seconds a cancel waits at most for the executor a follower was named to (_cancel_run)
IDLE_SCAN = 1000   # ready entries an idle executor looks at for work it could run (idle.lua)


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
    follower: str = ""  # the entry of its follower, started on its cores as it succeeded (sync.lua), if any
    follower_start: str = ""


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


class Synced(list):
    """What a round trip gave the executor (sync.lua): the claimed work as (entry, spec JSON or '' when the same
    job as the entry before) pairs; and followers named to it, and those started here that may not run."""

    def __init__(self) -> None:
        super().__init__()
        self.followers: dict[str, tuple[Entry, str]] = {}   # task -> (its follower's entry, spec JSON)
        self.stopped: list[str] = []                        # entries of followers started here that may not run


def _spin_for_reply(conn: Any, limit: float) -> None:
    """Until the answer can be read or ``limit`` seconds passed; only where the CPU would idle meanwhile."""
    end = time.perf_counter() + limit
    while not conn.can_read(timeout=0) and time.perf_counter() < end:
        pass


class Store(Submission):
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

    def _kept(self) -> Any:
        """The executor's own connection, taken from the pool once, and without redis-py's retries: while Redis is
        away a call on it fails at once (the client's retries would hold the dispatcher for up to ~15 s, and a
        task ending meanwhile would be reaped, and its end time taken, only when Redis came back). The executor
        retries on its own schedule (``Outage``). One thread at a time uses it: the syncer's round trips, or the
        dispatcher's calls, which it makes only while no round trip is in flight."""
        if self._conn is None:
            self._pool = self.node.connection_pool
            self._conn = self._pool.get_connection()
            self._conn_retry, self._conn.retry = self._conn.retry, Retry(NoBackoff(), 0)
        return self._conn

    def _direct(self, *command: Any) -> Any:
        """One command on the kept connection (see _kept): for the executor's dispatcher."""
        conn = self._kept()
        try:
            conn.send_command(*command)
            return conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            raise

    def _run_direct(self, name: str, args: Sequence[Any], evalsha: bool = False, spin: bool = False) -> Any:
        """The executor's hot path: FCALL (or EVALSHA) on a connection it keeps, without the pool and retry
        layers (a quarter of a chain hop's round trip). Callers retry on ConnectionError; a script or function
        library lost by a Redis restart is loaded again. ``evalsha``: not as a function (see below). ``spin``:
        watch for the answer before sleeping (SPIN_FOR_REPLY)."""
        self._kept()
        script = self._scripts[name]
        fn = None if evalsha else self._function(name)
        call = ("FCALL", fn, 1, self.keys.jobs, *args) if fn else ("EVALSHA", script.sha, 1, self.keys.jobs, *args)
        try:
            if self.acks is None:
                self._conn.send_command(*call)
                if spin:
                    _spin_for_reply(self._conn, SPIN_FOR_REPLY)
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
            return self._run_direct(name, args, evalsha=True, spin=spin)
        except (redis.ConnectionError, redis.TimeoutError):
            self._conn.disconnect()
            raise
        except redis.exceptions.MovedError:   # the namespace's slot moved to another shard: find it again
            self.close()
            raise redis.ConnectionError("the namespace's slot moved") from None
        except redis.ResponseError as exc:   # a master demoted in a fail-over refuses WAIT: ask for the master again
            if fn is not None and "function not found" in str(exc).lower():   # flushed, or a restarted server
                self._lib.usable = None
                return self._run_direct(name, args, evalsha=True, spin=spin)
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

    def listed_jobs(self, window: int = 10_000) -> tuple[list[str], set[str]]:
        """The job list, and the names on it whose job is gone (a removal under way has deleted them and not yet
        taken them off): in windows of ``window`` names, each one script call that sees both at one moment, with
        the existence checked in Redis (not a read per job by the client: 10,000 of them took 0.2 s of its CPU)."""
        names: list[str] = []
        gone: set[str] = set()
        while True:
            got, missing = self._run("remove", ["listed", now(), len(names), len(names) + window - 1])
            names += got
            gone.update(missing)
            if len(got) < window:
                return names, gone

    def unlist_jobs(self, names: Sequence[str], within: int | None = None) -> int:
        """Take removed jobs off the job list: the first entry of each name (a job of the same name submitted
        since then comes later); returns how many entries went. ``within``: the names were read before that
        index (entries only move towards the head), which bounds the search. One script call (remove.lua's
        'unlist')."""
        if not names:
            return 0
        return int(self._run("remove", ["unlist", now(), "" if within is None else within, *names]))

    def drop_rq_calls(self, calls: Sequence[str]) -> None:
        """Delete the rq keys of removed Python calls (remove.lua's details: an rq id, or 'id|it0|n' for a map's
        iterations, ids id-<it>): outside the namespace, so not the script's; else they stayed for result_ttl, and
        for ever those of calls that never ran."""
        ids: list[str] = []
        for call in calls:
            rqid, _, its = call.partition("|")
            if its:
                it0, n = map(int, its.split("|"))
                ids += [f"{rqid}-{it}" for it in range(it0, it0 + n)]
            else:
                ids.append(rqid)
        pipe = self.r.pipeline(transaction=False)   # one round trip per 10,000 ids, not per 500
        for i in range(0, len(ids), 500):
            pipe.delete(*[k for rqid in ids[i:i + 500] for k in (rq_job(rqid), rq_results(rqid))])
            if len(pipe) == 20 or i + 500 >= len(ids):
                pipe.execute()

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
            self._conn.retry = self._conn_retry   # the pool's other users keep its retries
            self._pool.release(self._conn)
            self._conn = None

    # ------------------------------------------------------------------ queries
    def job_names(self, start: int = 0, stop: int = -1) -> list[str]:
        """The job names in submission order (a range of them: LRANGE's indexes)."""
        return self.r.lrange(self.keys.jobs, start, stop)

    def states(self, names: Sequence[str]) -> dict[str, str | None]:
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(self.keys.job(name), "state")
        return dict(zip(names, pipe.execute()))

    def active(self, direct: bool = False) -> int:
        """Jobs not yet final: the cheap test for 'everything is done'. ``direct``: on the executor's kept
        connection, failing at once while Redis is away (_kept)."""
        return int((self._direct("GET", self.keys.active) if direct else self.r.get(self.keys.active)) or 0)

    def idle(self, eid: str) -> tuple[int, bool]:
        """For an idle executor with --exit-when-idle: (jobs not final, whether to stay), see idle.lua; on the
        kept connection, failing at once while Redis is away (_kept)."""
        active, stay = self._run_direct("idle", [eid, IDLE_SCAN], evalsha=True)
        return int(active), bool(int(stay))

    def job_hash(self, name: str) -> dict[str, str]:
        h = self.r.hgetall(self.keys.job(name))
        if not h:
            raise UnknownJobError(f"unknown job '{clip(name)}'")
        return h

    def job_hashes(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Several jobs' hashes in one round trip (the run record); a missing job maps to {}."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.job(name))
        return dict(zip(names, pipe.execute()))

    def final_counts(self) -> tuple[str | None, ...]:
        """The counts of tasks gone final, by state (iterations counted), then of jobs removed, ever (``stats``):
        only a removal takes from the first, so while none moved no job or iteration ended: a client looking for
        new ends reads the jobs only when they did."""
        return tuple(self.r.hmget(self.keys.stats, *sorted(FINAL_STATES), "removed"))

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
        """Cancel jobs or iterations: 'canceled' or 'final' per name; with a name unknown, nothing is canceled
        ('unknown' for those, 'skipped' for the others).

        Up to CANCEL_BATCH names go in one atomic cancel.lua call. More would hold Redis, and every executor and
        client with it, for the whole call (100,000 names: 669 ms), so they go in calls of CANCEL_BATCH: a first
        pass checks every name and writes nothing, then the batches cancel. Between two calls other clients run:
        a submit cannot make a checked name unknown (names are unique); one that depends on a job of a later
        batch is omitted when that batch cancels it, as after a cancel in one call. A remove can take a checked
        job away only once it is final, so a name gone by its batch is answered 'final'; a job removed and
        submitted again under its name meanwhile is the one canceled, being the one the name now names. We chose
        this over one call because the check keeps the promise that matters (a mistyped name cancels nothing)
        without blocking the queue for the length of the list."""
        tasks = list(tasks)
        if len(tasks) <= CANCEL_BATCH:
            try:
                return dict(zip(tasks, self._cancel_run([now(), "all", *tasks])))
            except redis.OutOfMemoryError:   # the script's first write was refused: nothing changed
                raise _queue_full(self.node, f"cancel of {len(tasks)} name(s)") from None
        batches = [tasks[i:i + CANCEL_BATCH] for i in range(0, len(tasks), CANCEL_BATCH)]
        checked = [res for batch in batches for res in self._run("cancel", [now(), "check", *batch])]
        if "unknown" in checked:
            return {t: "skipped" if res == "known" else "unknown" for t, res in zip(tasks, checked)}
        out: dict[str, str] = {}
        for batch in batches:
            try:
                out.update(zip(batch, self._cancel_run([now(), "known", *batch])))
            except redis.OutOfMemoryError:   # this batch wrote nothing; the ones before it did
                done = sum(res == "canceled" for res in out.values())
                written = (f"{done} were canceled, the last {len(tasks) - len(out)} names were not looked at"
                           if out else "nothing was written")
                raise _queue_full(self.node, f"cancel of {len(tasks)} name(s)", written=written) from None
        return out

    def _cancel_run(self, args: list[Any]) -> list[str]:
        """One cancel.lua call: its answer per id. A follower named to an executor (sync.lua) may be started there
        the moment its dependency ends, and a cancel reaches the executor a moment after it is written: the
        executor started it then in about every second cancel made just before the dependency ended. So for each
        such follower the call waits until that executor says it dropped it ('cancelack'), or is gone (its
        heartbeat expired: its tasks were killed with it), or CANCEL_ACK_WAIT passed (a hung executor)."""
        res = self._run("cancel", args)
        n = len(args) - 2
        acks = res[n:]
        for eid, job in zip(acks[::2], acks[1::2]):
            key, deadline = self.keys.cancel_ack(job), time.monotonic() + CANCEL_ACK_WAIT
            while time.monotonic() < deadline:
                got = self.r.blpop([key], timeout=0.5)
                if got is not None and got[1] == eid:
                    break
                if got is None and not self.r.exists(self.keys.alive(eid)):
                    break
            else:
                log.warning("cancel of %s: executor %s did not say it dropped it", job, eid)
        return res[:n]

    def cancel_all(self) -> dict[str, str]:
        """End every job of the namespace that is not final; returns the jobs it ended, each 'CANCELED' or
        'OMITTED' (a job that waited on one that did not succeed: mostly one it canceled, or one that failed
        while it ran).

        The job list is read once, at the start: a job submitted after that is left alone, unless it depends on
        one this cancels (then it is OMITTED, at its submit or when its dependency is canceled). After one read of
        every state, jobs are canceled by name, CANCEL_BATCH per cancel.lua call (as Store.cancel: Redis serves
        others between them), in two passes: first the jobs that could run or are running (not QUEUED), whose
        cancels omit the jobs waiting on them; then the QUEUED jobs still open (their dependencies succeeded
        since the read). So a job that waited on others ends OMITTED whatever batch it fell in, not CANCELED for
        sharing a batch with its dependency."""
        names = list(dict.fromkeys(self.job_names()))
        ended: dict[str, str] = {}

        def cancel(batch: list[str]) -> None:
            try:
                res = self._cancel_run([now(), "known", *batch])
            except redis.OutOfMemoryError:   # this batch wrote nothing; the ones before it did
                written = f"{len(ended)} job(s) were ended" if ended else "nothing was written"
                raise _queue_full(self.node, "cancel of every job", written=written) from None
            ended.update((n, "CANCELED") for n, r in zip(batch, res) if r == "canceled")

        waiting: list[str] = []
        runnable: list[str] = []
        for i in range(0, len(names), CANCEL_BATCH):   # every state first: those waiting, before any is omitted
            for n, st in self.states(names[i:i + CANCEL_BATCH]).items():
                if st == "QUEUED":
                    waiting.append(n)
                elif st is not None and st not in FINAL_STATES:
                    runnable.append(n)
        for i in range(0, len(runnable), CANCEL_BATCH):
            cancel(runnable[i:i + CANCEL_BATCH])
        for i in range(0, len(waiting), CANCEL_BATCH):
            states = self.states(waiting[i:i + CANCEL_BATCH])
            ended.update((n, "OMITTED") for n, st in states.items() if st == "OMITTED")
            still = [n for n, st in states.items() if st is not None and st not in FINAL_STATES]
            if still:
                cancel(still)
        log.info("canceled %d job(s), omitted %d", sum(st == "CANCELED" for st in ended.values()),
                 sum(st == "OMITTED" for st in ended.values()))
        return ended

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

    def place_and_ack(self, ids: Sequence[str], unplaceable: float | None = None) -> int:
        """The deep pass and the acknowledgement of the events that asked for it, in one round trip; with
        ``unplaceable`` (a timeout in seconds, 0: none) it also flags, and past the timeout fails, the ready jobs
        that no live executor could ever fit. The pass first makes one step of the per-iteration omissions
        left to do (keys: omitting); returns how many are left."""
        pipe = self.node.pipeline(transaction=False)   # a cluster's pipelines take no scripts: the shard's does
        self._scripts["place"](keys=[self.keys.jobs], client=pipe,
                               args=[now(), 1000, 100000, "" if unplaceable is None else unplaceable])
        if ids:
            pipe.xack(self.keys.events, EVENTS_GROUP, *ids)
        return int(pipe.execute()[0][1])

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
                 mem_per_node: int = 0) -> tuple[bool, str, str] | None:
        """Join; None, or (its heartbeat is fresh, host, pid) of the live registration of that id (register.lua)."""
        res = self._run("register", [eid, now(), ttl, host, nodes, total, maxnode, nnodes, prefetch, pid, slurm_job,
                                     gpus, gpus_per_node, mem_per_node])
        return (bool(res[1]), res[2], res[3]) if res[0] == "INUSE" else None

    def heartbeat(self, eid: str, ttl: int) -> str:
        return self._run("heartbeat", [eid, now(), ttl])

    def sync(self, eid: str, want: int, adopt: Sequence[str] = (), started: Sequence[tuple[str, str]] = (),
             finished: Sequence[Report] = (), prefetch: int | None = None, spin: bool = False) -> Synced:
        """One executor round trip: report started and finished tasks (with the followers started as they
        succeeded), claim up to ``want`` more, and change the executor's prefetch (its placement credit beyond its
        cores) if ``prefetch`` is given. ``spin``: none of the executor's tasks runs, so it watches for the answer
        instead of sleeping (SPIN_FOR_REPLY)."""
        follows: list[Any] = []
        args: list[Any] = [eid, now(), want, len(adopt), len(started), len(finished),
                           "" if prefetch is None else prefetch, 0, *adopt]
        for entry, t0 in started:
            args += [entry, t0]
        for i, rep in enumerate(finished, 1):
            args += [rep.entry, rep.state, "" if rep.exit_code is None else rep.exit_code, rep.start, rep.end,
                     rep.message, rep.usage]
            if rep.follower:
                follows += [i, rep.follower, rep.follower_start]
        args[7] = len(follows) // 3
        res = self._run_direct("sync", args + follows, spin=spin)
        got = Synced()
        for i in range(0, len(res), 2):
            raw = res[i]
            if raw[0] == "?":
                task, entry = raw[1:].split(" ", 1)
                got.followers[task] = (Entry.parse(entry), res[i + 1])
            elif raw[0] == "!":
                got.stopped.append(raw[1:])
            else:
                got.append((Entry.parse(raw), res[i + 1]))
        return got

    def running_entries(self, eid: str) -> list[str]:
        """The executor's running list, read by its dispatcher: on the kept connection (_kept)."""
        return self._direct("LRANGE", self.keys.running(eid), 0, -1)

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

    def cancel_acked(self, eid: str, job: str) -> None:
        """Tell the canceling client that the follower ``job`` named to us was dropped (see _cancel_run)."""
        key = self.keys.cancel_ack(job)
        self.r.pipeline(transaction=False).rpush(key, eid).expire(key, 60).execute()

    def control(self, eid: str, timeout: float) -> str | None:
        res = self.r.blpop([self.keys.control(eid)], timeout=timeout)
        return res[1] if res else None
