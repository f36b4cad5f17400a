"""Submitting a batch: every check before the first write, then all or none at any size (staged, then one script
makes it visible); and a small batch piped beside a caller's own writes. A part of :class:`qcgpj.store.Store`."""
from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Callable

import redis

from .connection import redis_error
from .durability import Durability, durability_plan
from .errors import ArgumentError, DependencyError, DuplicateJobError, JobSpecError, QcgpjError, QueueFullError
from .fieldcheck import _show
from .keys import Keys
from .timefmt import now

log = logging.getLogger(__name__)

Row = tuple[str, str, str, str, str]   # (name, spec, req, iter, deps), as the submit script reads them
STAGE_CHUNK = 2000        # jobs per RPUSH while a batch is staged
STAGE_TTL = 3600          # seconds a staging list left by a killed client lives
BATCH_TTL = 7 * 86400     # seconds a committed batch id is remembered, so that its retry is a no-op
PIPED_BATCH_TTL = 60      # the same for a batch piped with other writes (submit_on), retried only at once
BATCH_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")   # fullmatch: '$' lets a final newline through
JOB_OVERHEAD = 200        # bytes of Redis per job beyond its strings (hash, list entries): measured 175
EDGE_OVERHEAD = 600       # bytes per dependency (an entry in the parent's children set, often a new set)


class Submission:
    """The submit half of the Store (a mixin): it uses the Store's clients, keys, scripts and acknowledgements."""

    r: redis.Redis
    node: redis.Redis
    keys: Keys
    acks: Any
    _scripts: dict[str, Any]
    _submit_loaded: bool

    _run: Callable[[str, Any], Any]

    def submit(self, rows: list[Row], batch_id: str | None = None, durable: bool = False) -> int:
        """Write a validated, dependency-ordered batch, all or none at any size; rows are (name, spec, req, iter,
        deps). Returns the count of tasks placed at once (0 when ``batch_id`` was committed before: a retry).

        Every check runs before the first write. The rows are then staged in chunks under a key nothing else
        reads, and one script checks again and makes the whole batch visible; a failure before that step
        (a full Redis, a lost connection, a killed client) leaves only the staging list, which is deleted here
        or expires by itself.
        """
        batch_id = uuid.uuid4().hex if batch_id is None else batch_id   # not "": an unset $ID is a mistake
        if not isinstance(batch_id, str) or not BATCH_ID_RE.fullmatch(batch_id):
            raise ArgumentError("invalid batch id: use up to 128 letters, digits, '_', '.', '-', ':', "
                                f"got {_show(batch_id)}")
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
        key = self.keys.stage(attempt)
        try:
            self.r.delete(key)
        except redis.RedisError as exc:   # Redis gone: the staging list expires by itself
            if _surely_absent(self.r, key):   # an ACL that denied the RPUSH too: nothing to warn about
                return
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

    # ------------------------------------------------------------------ submit beside other writes
    def submit_on(self, pipe: Any, rows: list[Row]) -> str:
        """Queue a small validated batch on ``pipe``, staged and committed in the same round trip as the caller's
        own keys (qcgpj.Executor: a call's rq job and its qcgpj job). The commit checks names and dependencies
        itself; pass the pipeline's replies and the attempt this returns to :meth:`submitted`. Its batch id is remembered only
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
        return attempt

    def submitted(self, replies: list, attempt: str) -> int:
        """The replies of a piped submit (its commit's the last): how many jobs were queued, or the error naming
        the job and field. After a Redis restart (scripts flushed) it raises NoScriptError: the caller writes
        again. A refused staging (maxmemory, an ACL) is said as such, not as the incomplete batch the commit then
        found; whatever failed, the staging list goes."""
        reply = replies[-1]
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None or reply[0] == "ERR":
            self._drop_stage(attempt)
        if isinstance(reply, redis.exceptions.NoScriptError):
            self._submit_loaded = False
            raise reply
        if isinstance(failed, redis.exceptions.OutOfMemoryError):
            raise _queue_full(self.node, "a call's job")
        if isinstance(failed, redis.RedisError):
            raise redis_error(failed) from None
        if failed is not None:
            raise failed
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


def _surely_absent(r: redis.Redis, key: str) -> bool:
    """Whether ``key`` is known not to exist (False when Redis cannot tell us)."""
    try:
        return not r.exists(key)
    except redis.RedisError:
        return False


def _queue_full(client: redis.Redis, what: str, state: str = "is full",
                written: str = "nothing was written") -> QueueFullError:
    """The one line for a Redis at (or a batch past) its maxmemory; worded like connection.redis_error's.
    ``written``: what the refused call left done (a cancel in batches may have canceled some)."""
    try:
        mem = client.info("memory")
        detail = f"{mem['used_memory_human']} used of maxmemory {mem['maxmemory_human']}"
    except redis.RedisError:
        detail = "limit unknown"
    return QueueFullError(f"Redis {state}: out of memory (maxmemory reached), {detail}: {what}; {written}; "
                          "free memory (qcgpj remove --finished) or raise maxmemory, then try again")


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
