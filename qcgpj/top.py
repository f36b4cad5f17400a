"""``qcgpj top``: a live view of one namespace.

One frame costs two pipelined round trips whose length depends on the number of live executors only, never on
the number of jobs: the task counts, the per-second throughput and the latest failures come from the O(1)
counters the scripts keep (keys ``stats``, ``rate``, ``failures``), not from reading jobs.
"""
from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from typing import Any, Iterator

import redis
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .store import Store
from .timefmt import duration, local_time

FINAL = ("SUCCEED", "FAILED", "CANCELED", "OMITTED")
FAILURES_SHOWN = 8
FRAME_COMMANDS = (6, 4)   # Redis commands per frame: fixed, and per live executor
WINDOWS = (10, 60)   # seconds of the throughput figures


def snapshot(store: Store) -> dict[str, Any]:
    """Everything one frame shows, as plain data (raw epochs: ``--json`` prints it as it is)."""
    k = store.keys
    pipe = store.node.pipeline(transaction=False)   # TIME: the shard's own pipeline on a cluster
    pipe.time()
    pipe.hgetall(k.stats)
    pipe.hgetall(k.rate)
    pipe.lrange(k.failures, 0, FAILURES_SHOWN - 1)
    pipe.smembers(k.live)
    pipe.scard(k.executors)
    clock, stats, rate, failures, live, known = pipe.execute(raise_on_error=False)
    for res in (stats, rate, failures, live, known):
        if isinstance(res, Exception):
            raise res
    if isinstance(clock, redis.exceptions.NoPermissionError):   # the minimal ACL has no TIME: this host's clock
        now = time.time()
    elif isinstance(clock, Exception):
        raise clock
    else:
        now = clock[0] + clock[1] / 1e6
    executors = _executors(store, sorted(live), now)
    final = {st: int(stats.get(st, 0)) for st in FINAL}
    claimed = sum(e["claimed"] for e in executors)
    placed = sum(e["placed"] for e in executors)
    total = int(stats.get("tasks", 0))
    remaining = max(total - sum(final.values()), 0)
    tasks = {"total": total, **final, "claimed": claimed, "placed": placed,
             "waiting": max(remaining - claimed - placed, 0), "remaining": remaining}
    rates = {f"last_{w}s": _rate(rate, int(now), w) for w in WINDOWS}
    per_s = rates["last_10s"] or rates["last_60s"]
    return {"namespace": store.keys.namespace, "time": now, "tasks": tasks, "throughput": rates,
            "eta": round(remaining / per_s, 1) if per_s and remaining else (0.0 if not remaining else None),
            "executors": executors, "departed_executors": max(known - len(live), 0),
            "failures": [_failure(f) for f in failures]}


def _executors(store: Store, ids: list[str], now: float) -> list[dict[str, Any]]:
    pipe = store.node.pipeline(transaction=False)   # TIME: the shard's own pipeline on a cluster
    for eid in ids:
        pipe.hmget(store.keys.exec(eid), "host", "state", "total", "free", "prefetch", "nnodes", "slurm_job",
                   "gpus", "gfree")
        pipe.get(store.keys.alive(eid))
        pipe.llen(store.keys.running(eid))
        pipe.llen(store.keys.ready(eid))
    res = pipe.execute()
    out = []
    for i, eid in enumerate(ids):
        (host, state, total, free, prefetch, nnodes, slurm_job, gpus, gfree), beat, claimed, placed = \
            res[4 * i:4 * i + 4]
        total_i = int(total or 0)
        busy = min(total_i, total_i + int(prefetch or 0) - int(free or 0))
        out.append({"id": eid, "host": host, "state": state, "slurm_job": slurm_job or None,
                    "nodes": int(nnodes or 0), "cores": total_i,
                    "cores_busy": max(busy, 0), "claimed": claimed, "placed": placed, "gpus": int(gpus or 0),
                    "gpus_busy": int(gpus or 0) - int(gfree or 0) if state == "ALIVE" else 0,
                    "heartbeat_age": round(now - float(beat), 3) if beat else None})
    return out


def _rate(ring: dict[str, str], now_sec: int, window: int) -> float:
    """Tasks ended per second over the last ``window`` seconds, this one included."""
    done = sum(int(ring.get("c" + slot[1:], 0)) for slot, sec in ring.items()
               if slot[0] == "s" and now_sec - window < int(sec) <= now_sec)
    return round(done / window, 1)


def _failure(rec: str) -> dict[str, Any]:
    task, end, eid, code, msg = (rec.split("|", 4) + [""] * 5)[:5]
    return {"task": task, "end": float(end) if end else None, "executor": eid or None,
            "exit_code": int(code) if code not in ("", None) else None, "message": msg}


# ---------------------------------------------------------------------- rendering
def render(snap: dict[str, Any]) -> Group:
    """A frame as rich renderables: a summary line, the executors, the task counts, the latest failures.
    'placed': on an executor's list, not taken yet; 'claimed': taken by the executor (running, or next in line
    within its look-ahead); 'waiting': for dependencies or cores."""
    t = snap["tasks"]
    rates = snap["throughput"]
    eta = "-" if snap["eta"] is None else ("done" if not t["remaining"] else duration(snap["eta"]))
    head = Text.assemble(("qcgpj top", "bold"), f"  namespace {snap['namespace']}  {local_time(snap['time'])}  ",
                         ("q", "bold"), " quits\n",
                         f"throughput {rates['last_10s']}/s (10 s)  {rates['last_60s']}/s (1 min)   ETA {eta}")
    counts = Table(box=box.SIMPLE_HEAD, title="tasks", title_justify="left")
    cols = ("total", "waiting", "placed", "claimed") + FINAL
    styles = {"SUCCEED": "green", "FAILED": "red", "CANCELED": "yellow", "OMITTED": "yellow", "claimed": "cyan"}
    for c in cols:
        counts.add_column(c, justify="right", style=styles.get(c))
    counts.add_row(*(f"{t[c]:,}" for c in cols))
    ex = Table(box=box.SIMPLE_HEAD, title=f"executors ({len(snap['executors'])} live, "
               f"{snap['departed_executors']} departed)", title_justify="left")
    gpus = any(e.get("gpus") for e in snap["executors"])   # the column only where some executor has GPUs
    for c, j in (("id", "left"), ("host", "left"), ("slurm job", "left"), ("state", "left"), ("cores busy", "right"),
                 *((("gpus busy", "right"),) if gpus else ()), ("claimed", "right"), ("placed", "right"),
                 ("heartbeat", "right")):
        ex.add_column(c, justify=j)
    for e in snap["executors"]:
        age = "-" if e["heartbeat_age"] is None else f"{e['heartbeat_age']:.1f} s ago"
        busy = (f"{e['gpus_busy']}/{e['gpus']}",) if gpus else ()
        ex.add_row(e["id"], e["host"] or "", e["slurm_job"] or "-", e["state"] or "", f"{e['cores_busy']}/{e['cores']}",
                   *busy, str(e["claimed"]), str(e["placed"]), age)
    fails = Table(box=box.SIMPLE_HEAD, title="latest failures", title_justify="left")
    for c in ("task", "ended", "executor", "exit", "message"):
        fails.add_column(c, overflow="fold" if c == "message" else "ellipsis")
    for f in snap["failures"]:
        fails.add_row(f["task"], local_time(f["end"]), f["executor"] or "",
                      "" if f["exit_code"] is None else str(f["exit_code"]), f["message"])
    return Group(head, counts, ex, fails if snap["failures"] else Text("no failures", style="green"))


@contextlib.contextmanager
def _keys_unbuffered() -> Iterator[bool]:
    """The terminal in cbreak mode, so 'q' arrives without Enter; yields whether keys can be read at all."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(timeout: float, keys: bool) -> bool:
    if not keys:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and os.read(sys.stdin.fileno(), 32).lower().startswith(b"q")


def live(store: Store, interval: float = 1.0, console: Console | None = None) -> None:
    """Refresh every ``interval`` seconds until 'q' or Ctrl-C."""
    console = console or Console()
    with _keys_unbuffered() as keys, Live(render(snapshot(store)), console=console, screen=False,
                                          auto_refresh=False) as view:
        try:
            while not _quit_pressed(interval, keys):
                view.update(render(snapshot(store)), refresh=True)
        except KeyboardInterrupt:
            pass
