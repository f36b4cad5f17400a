"""Fault-run scenario: a submit far too large for a Redis with a small ``maxmemory``, with a queue serving.

The big submit must be refused whole with a clear error and write nothing; submit and cancel at a full Redis
(past maxmemory) must be refused the same way; once memory is freed the queue must run new work, every task
once. ``submit_oom`` returns counts for the fault-run table; all must be zero.

    python -m tests.fault_submit [--short]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from qcgpj import Jobs
from qcgpj.errors import QueueFullError
from qcgpj.store import FINAL_STATES
from tests.cluster import Cluster
from tests.redisproc import RedisServer


def _jobs_view(r, prefix: str) -> tuple:
    """What a submit could have written: the job list, the count of unfinished jobs, ready work, job keys,
    staging lists."""
    return (r.llen(prefix + "jobs"), r.get(prefix + "active"), r.llen(prefix + "pending"),
            sum(1 for _ in r.scan_iter(match=prefix + "job:*", count=10_000)),
            sum(1 for _ in r.scan_iter(match=prefix + "stage:*", count=10_000)))


def ballast(r, mb: int) -> None:
    """About ``mb`` MB in key 'ballast', written a megabyte at a time (one huge value would keep as much again
    in the connection's query buffer for a while after it is deleted)."""
    for _ in range(mb):
        r.rpush("ballast", *["x" * 1000] * 1000)


def _refused(fn, *args) -> bool:
    try:
        fn(*args)
    except QueueFullError:
        return True
    return False


def submit_oom(short: bool) -> dict:
    """A 200,000-job submit into a 20 MB Redis (short: 50,000 into 10 MB) while an InputQueue and a worker serve
    it; then submit and cancel with Redis past maxmemory; then, memory freed, a batch that must run once each."""
    n, maxmemory, after = (50_000, "10mb", 20) if short else (200_000, "20mb", 100)
    wd = Path(tempfile.mkdtemp(prefix="qcgpj-fault-submit-"))
    out = {"jobs": n, "lost": 0, "duplicated": 0, "stuck": 0, "written_on_error": 0, "not_refused": 0}
    try:
        with RedisServer(config={"maxmemory": maxmemory, "maxmemory-policy": "noeviction"}) as server:
            c = Cluster(server.url, wd)
            try:
                m = c.serving(1)
                r = server.client()
                prefix = m.store.keys.prefix
                first = m.submit(Jobs().add(name="first", script="echo run >> runs.first"))
                m.wait4(first, timeout=120)
                before = _jobs_view(r, prefix)
                big = Jobs()
                for i in range(n):
                    big.add(name=f"big{i}", exec="/bin/true")
                out["not_refused"] += not _refused(m.submit, big)
                out["written_on_error"] += _jobs_view(r, prefix) != before
                m.submit(Jobs().add(name="held", script="sleep 600"))
                r.config_set("maxmemory", "0")
                ballast(r, 2 * int(maxmemory[:-2]))                          # Redis now past its limit
                r.config_set("maxmemory", maxmemory)
                before = _jobs_view(r, prefix)
                out["not_refused"] += not _refused(m.submit, Jobs().add(name="late", exec="/bin/true"))
                out["not_refused"] += not _refused(m.cancel, "held")
                out["written_on_error"] += _jobs_view(r, prefix) != before
                r.delete("ballast")                                          # memory freed
                m.cancel("held")
                jobs = Jobs()
                for i in range(after):
                    jobs.add(name=f"a{i}", script=f"echo run >> runs.a{i}")
                names = m.submit(jobs)
                try:
                    states = m.wait4(names, timeout=300)
                except Exception:
                    states = m.status(names)
                runs = {name: len((wd / f"runs.{name}").read_text().split()) if (wd / f"runs.{name}").exists()
                        else 0 for name in names}
                out["stuck"] = sum(1 for s in states.values() if s not in FINAL_STATES)
                out["lost"] = sum(1 for name, s in states.items() if s in FINAL_STATES
                                  and (s != "SUCCEED" or runs[name] == 0))
                out["duplicated"] = sum(k - 1 for k in runs.values() if k > 1)
            finally:
                c.stop()
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true")
    short = ap.parse_args().short
    t0 = time.monotonic()
    res = submit_oom(short)
    print(f"submit_oom: {time.monotonic() - t0:.1f} s " + " ".join(f"{k}={v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
