"""Redis access of the allocator: its own keys (definitions, status, the allocations it submitted) and the
demand it reads from the queue. Plain commands: each key has one writer (the CLI or the acting allocator)."""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from .alloc import AllocQueue, TaskDemand
from .errors import AllocError
from .keys import Keys

FINAL = frozenset({"SUCCEED", "FAILED", "CANCELED", "OMITTED"})


def _req(text: str | None) -> tuple[int, int]:
    """``cmin|cmax|kmin|kmax[|gpus|mem]`` -> (cores, nodes) a task needs at least."""
    cmin, _cmax, kmin = (text or "1|1|0|0").split("|")[:3]
    return int(cmin), int(kmin)


class AllocStore:
    def __init__(self, client: redis.Redis, namespace: str = "default") -> None:
        self.r = client
        self.namespace = namespace
        self.keys = Keys(namespace)

    # ------------------------------------------------------------------ definitions
    def add(self, q: AllocQueue) -> None:
        if not self.r.hsetnx(self.keys.alloc_queues, q.name, q.to_json()):
            raise AllocError(f"allocation queue '{q.name}' exists (remove it first)")

    def queues(self) -> dict[str, AllocQueue]:
        return {name: AllocQueue.from_json(text) for name, text in sorted(self.r.hgetall(self.keys.alloc_queues).items())}

    def queue(self, name: str) -> AllocQueue:
        text = self.r.hget(self.keys.alloc_queues, name)
        if text is None:
            raise AllocError(f"unknown allocation queue '{name}'")
        return AllocQueue.from_json(text)

    def remove(self, name: str) -> None:
        self.queue(name)
        self.r.hdel(self.keys.alloc_queues, name)
        self.r.delete(self.keys.alloc_status(name), self.keys.alloc_jobs(name))

    # ------------------------------------------------------------------ status
    def status(self, name: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.alloc_status(name))

    def set_status(self, name: str, **values: Any) -> None:
        if values and self.r.hexists(self.keys.alloc_queues, name):   # not for a queue removed meanwhile
            self.r.hset(self.keys.alloc_status(name), mapping={k: str(v) for k, v in values.items()})

    def pause(self, name: str, reason: str) -> None:
        self.queue(name)
        self.set_status(name, paused=reason)

    def resume(self, name: str) -> None:
        self.queue(name)
        self.set_status(name, paused="", failures=0, backoff_until=0)

    # ------------------------------------------------------------------ allocations it submitted
    def jobs(self, name: str) -> dict[str, dict[str, Any]]:
        return {jid: json.loads(v) for jid, v in self.r.hgetall(self.keys.alloc_jobs(name)).items()}

    def put_job(self, name: str, jid: str, info: dict[str, Any]) -> None:
        self.r.hset(self.keys.alloc_jobs(name), jid, json.dumps(info))

    def drop_job(self, name: str, jid: str) -> None:
        self.r.hdel(self.keys.alloc_jobs(name), jid)

    # ------------------------------------------------------------------ what it reads of the queue
    def demand(self, scan: int = 10000) -> list[TaskDemand]:
        """The ready tasks no executor has room for (the first ``scan`` entries of ``pending``), by job."""
        entries = self.r.lrange(self.keys.pending, 0, scan - 1)
        names = sorted({e.split(":", 1)[0] for e in entries})   # "name" or "name:it" (no ':' in job names)
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.job(name), "state", "req", "n", "it0", "next")
        jobs = dict(zip(names, pipe.execute()))
        counts: dict[str, int] = {}
        for entry in entries:
            name, whole = entry.split(":", 1)[0], ":" not in entry
            state, _req_text, n, it0, nxt = jobs[name]
            if state is None or state in FINAL:
                continue
            if whole and n:   # every iteration not yet placed
                left = int(it0 or 0) + int(n) - int(nxt if nxt is not None else it0 or 0)
            else:
                left = 1
            counts[name] = counts.get(name, 0) + max(left, 0)
        return [TaskDemand(name, count, *_req(jobs[name][1])) for name, count in counts.items() if count]

    def slurm_executors(self) -> dict[str, str]:
        """Slurm job id -> the executor it registered (every executor that ever joined, departed ones too)."""
        ids = sorted(self.r.smembers(self.keys.executors))
        pipe = self.r.pipeline(transaction=False)
        for eid in ids:
            pipe.hget(self.keys.exec(eid), "slurm_job")
        return {jid: eid for eid, jid in zip(ids, pipe.execute()) if jid}


def now() -> float:
    return round(time.time(), 3)
