"""Every Redis key name qcgpj uses, in one place.

All keys of one namespace share the prefix ``qcgpj:{NS}:``; the braces are a
Redis Cluster hash tag, so every key of a namespace lives in one slot and a Lua
script may touch any of them.  The Lua scripts get the same names through
:func:`lua_prelude`, generated from the templates below, so no other file
spells a key.

Key (after the prefix)      type     holds
-------------------------   ------   ------------------------------------------------
jobs                        list     job names in submission order
active                      string   count of jobs not yet in a final state
job:<name>                  hash     spec (JSON), state, req ("cmin|cmax|kmin|kmax[|gpus|mem]"), deps, pdeps, n, it0,
                                     next, attempts, executor, created/start/end, exit, message,
                                     usage ("user s,system s,max RSS KiB" of a process), alloc (its cores:
                                     "n0:0-3,n1:0-1+4", node:core ranges), icancel (iterations were canceled),
                                     n_SUCCEED/n_FAILED/n_CANCELED/n_OMITTED, done (iterative),
                                     n_EXECUTING (iterations whose start was reported, not their end),
                                     lost / lost:<it> (executors that died holding the task), retried (an
                                     iteration was requeued: att:<name>), unplaceable (since when no live
                                     executor fits it), spread (maximum-iters' unequal shares), kids / itch
                                     (some job depends on it / on its single iterations)
its:<name>                  hash     iteration -> "STATE|exit|executor|start[@cores]|end|attempt[,usage]|message"
att:<name>                  hash     iteration -> attempt number (only for retried iterations)
itwait:<name>               hash     iteration -> count of per-iteration parents that succeeded
children:<name>             set      "w|child" (whole job), "i<k>|child" (iteration k), "p|child" (per iteration)
pending                     list     ready work not yet placed: "name" (all remaining iterations) or "name:it"
executors                   set      every executor that joined (for listings: departed ones stay for --executor-retention)
live                        set      executors that may take work: placement and checks read only these
free                        zset     the ALIVE executors by placement credit (score = exec:<id> free): placement
                                     reads the few with the most credit, not every executor
shapes                      hash     "total|nnodes|maxnode|gpus|gmax|mem" -> live executors of that shape: what
                                     the largest can run (submit's check, unplaceable jobs) without reading every
                                     executor
exec:<id>                   hash     host, nodes, total, maxnode, nnodes, free (placement credit), state, pid, started,
                                     ttl (seconds without heartbeat before it is dead), slurm_job (its allocation),
                                     gpus, gmax (most on one node), gfree (GPU credit, no look-ahead), mem (most MiB
                                     on one node): see qcgpj.gpus
exec:<id>:alive             string   heartbeat, with a TTL
exec:<id>:ready             list     tasks placed on the executor: "task|cores|nodes|attempt" ("cores+gpus" for a
                                     task with GPUs: that many on each of its nodes)
exec:<id>:running           list     tasks it claimed (the reliable-queue processing list)
exec:<id>:control           list     "cancel <task>" / "cancelack <job>" / "drain" commands
cancel_ack:<name>           list     executors that dropped a canceled follower ("cancelack"), with a TTL: the
                                     canceling client waits for its executor's word
events                      stream   wake-ups and audit: submit, finish, executor joined/lost, stop
inputqueue:leader           string   the acting InputQueue's id, with a TTL (leader lease)
stats                       hash     O(1) counters for `top`: tasks (submitted), SUCCEED/FAILED/CANCELED/OMITTED
                                     (final tasks, iterations counted); removed (jobs removed, ever)
rate                        hash     ring of per-second finished-task counts: s<slot> -> second, c<slot> -> count
failures                    list     the latest failed tasks (capped): "task|end|executor|exit|message"
stage:<batch>:<attempt>     list     a submit being written: name, spec, req, iter, deps per job; read only by
                                     the commit that makes it visible; a TTL drops one a killed client left
batch:<id>                  string   a committed batch's job count, with a TTL: a retried submit is a no-op
omitting                    list     per-iteration omissions left to do, a step per InputQueue pass:
                                     "child|parent|parent's state|child's created|from|last" (iterations)

Python calls (``qcgpj.Executor``) are rq jobs under rq's own global keys, outside the prefix and not touched by
any script (only ``qcgpj.funcjobs`` and ``workers/function.py`` use them, through rq's API):

rq:job:qcgpj-<hex>-<n>      hash     rq's job: data (zlib of the serializer's call tuple), status, meta, ...
rq:results:qcgpj-<hex>-<n>  stream   rq's results of that job (a map's chunks: ...-<n>-<chunk>)

alloc:queues                hash     allocation queue name -> its definition (JSON): ``qcgpj alloc add``
alloc:status:<queue>        hash     paused (reason), failures (in a row), reason (the last failure), toolarge, last (decision)
alloc:jobs:<queue>          hash     Slurm job id -> JSON {submitted, running_since, registered}: its allocations
alloc:leader                string   the acting allocator's id, with a TTL (leader lease)
"""
from __future__ import annotations

import re
from typing import Any

from .errors import ArgumentError

PREFIX_TEMPLATE = "qcgpj:{{{ns}}}:"
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# Executor ids go into keys and into '|'-separated records (its:<name>): the same characters as namespaces.
EXECUTOR_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

# name -> template after the prefix; "{}" is the argument (job name or executor id).
TEMPLATES: dict[str, str] = {
    "jobs": "jobs",
    "active": "active",
    "job": "job:{}",
    "its": "its:{}",
    "att": "att:{}",
    "itwait": "itwait:{}",
    "children": "children:{}",
    "pending": "pending",
    "executors": "executors",
    "live": "executors:live",
    "free": "executors:free",
    "shapes": "executors:shapes",
    "exec": "exec:{}",
    "alive": "exec:{}:alive",
    "ready": "exec:{}:ready",
    "running": "exec:{}:running",
    "control": "exec:{}:control",
    "cancel_ack": "cancel_ack:{}",
    "events": "events",
    "leader": "inputqueue:leader",
    "stats": "stats",
    "rate": "rate",
    "failures": "failures",
    "stage": "stage:{}",
    "batch": "batch:{}",
    "omitting": "omitting",
    "alloc_queues": "alloc:queues",
    "alloc_status": "alloc:status:{}",
    "alloc_jobs": "alloc:jobs:{}",
    "alloc_leader": "alloc:leader",
}

EVENTS_GROUP = "inputqueue"
JOB_KINDS = ("job", "its", "att", "itwait", "children")   # the keys that belong to one job


class Keys:
    """Key names of one namespace."""

    def __init__(self, namespace: str = "default") -> None:
        if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
            raise ArgumentError(f"invalid namespace {namespace!r}: use 1-64 letters, digits, '_', '.', '-'")
        self.namespace = namespace
        self.prefix = PREFIX_TEMPLATE.format(ns=namespace)

    def _k(self, name: str, arg: str = "") -> str:
        return self.prefix + TEMPLATES[name].format(arg)

    @property
    def jobs(self) -> str:
        return self._k("jobs")

    @property
    def active(self) -> str:
        return self._k("active")

    @property
    def pending(self) -> str:
        return self._k("pending")

    @property
    def executors(self) -> str:
        return self._k("executors")

    @property
    def shapes(self) -> str:
        return self._k("shapes")

    @property
    def free(self) -> str:
        return self._k("free")

    @property
    def live(self) -> str:
        return self._k("live")

    @property
    def events(self) -> str:
        return self._k("events")

    @property
    def leader(self) -> str:
        return self._k("leader")

    @property
    def stats(self) -> str:
        return self._k("stats")

    @property
    def rate(self) -> str:
        return self._k("rate")

    @property
    def failures(self) -> str:
        return self._k("failures")

    def job(self, name: str) -> str:
        return self._k("job", name)

    def its(self, name: str) -> str:
        return self._k("its", name)

    def att(self, name: str) -> str:
        return self._k("att", name)

    def children(self, name: str) -> str:
        return self._k("children", name)

    def itwait(self, name: str) -> str:
        return self._k("itwait", name)

    def of_job(self, name: str) -> list[str]:
        """Every key of job ``name`` (a name prefix gives the prefixes of the keys of those jobs)."""
        return [self._k(kind, name) for kind in JOB_KINDS]

    @property
    def alloc_queues(self) -> str:
        return self._k("alloc_queues")

    def alloc_status(self, queue: str) -> str:
        return self._k("alloc_status", queue)

    def alloc_jobs(self, queue: str) -> str:
        return self._k("alloc_jobs", queue)

    def exec(self, eid: str) -> str:
        return self._k("exec", eid)

    def alive(self, eid: str) -> str:
        return self._k("alive", eid)

    def ready(self, eid: str) -> str:
        return self._k("ready", eid)

    def running(self, eid: str) -> str:
        return self._k("running", eid)

    def control(self, eid: str) -> str:
        return self._k("control", eid)

    def cancel_ack(self, job: str) -> str:
        """Where the executor a canceled follower was named to says it dropped it (cancel.lua)."""
        return self._k("cancel_ack", job)

    def stage(self, attempt: str) -> str:
        return self._k("stage", attempt)

    def batch(self, batch_id: str) -> str:
        return self._k("batch", batch_id)

    @property
    def omitting(self) -> str:
        return self._k("omitting")


def check_executor_id(eid: Any) -> str:
    """An executor id that cannot reach other keys nor break the records that hold it."""
    if not isinstance(eid, str) or not EXECUTOR_ID_RE.fullmatch(eid):
        raise ArgumentError(f"invalid executor id {eid!r}: use 1-128 letters, digits, '_', '.', '-'")
    return eid


def lua_prelude() -> str:
    """Lua definitions of the key names: the scripts derive the prefix from KEYS[1] (always the ``jobs`` key)."""
    lines = [f"local P = string.sub(KEYS[1], 1, -{len(TEMPLATES['jobs']) + 1})"]
    for name, template in TEMPLATES.items():
        if "{}" in template:
            head, tail = template.split("{}")
            expr = f"P .. '{head}' .. a" + (f" .. '{tail}'" if tail else "")
            lines.append(f"local function K_{name}(a) return {expr} end")
        else:
            lines.append(f"local K_{name} = P .. '{template}'")
    return "\n".join(lines) + "\n"


def rq_job(rqid: str) -> str:
    """rq's key of the job of a Python call (as ``rq.job.Job.key`` spells it)."""
    return f"rq:job:{rqid}"


def rq_results(rqid: str) -> str:
    """rq's stream of results of that job (as ``rq.results.Result.get_key`` spells it)."""
    return f"rq:results:{rqid}"


def lua_prelude_library() -> str:
    """The key names for a function library (FUNCTION LOAD): loaded once, without KEYS, so the names are
    upvalues that ``set_keys(KEYS[1])`` sets at the start of each call."""
    fixed = [name for name, template in TEMPLATES.items() if "{}" not in template]
    lines = ["local P = ''", "local " + ", ".join(f"K_{name}" for name in fixed)]
    for name, template in TEMPLATES.items():
        if "{}" in template:
            head, tail = template.split("{}")
            expr = f"P .. '{head}' .. a" + (f" .. '{tail}'" if tail else "")
            lines.append(f"local function K_{name}(a) return {expr} end")
    sets = "; ".join(f"K_{name} = P .. '{TEMPLATES[name]}'" for name in fixed)
    lines.append(f"local function set_keys(jobs) P = string.sub(jobs, 1, -{len(TEMPLATES['jobs']) + 1}); "
                 f"{sets} end")
    return "\n".join(lines) + "\n"
