"""A fault run, for the record rather than the test suite: N short tasks on two executors while an executor,
the InputQueue and redis-server are each killed with SIGKILL mid-run. Prints how many tasks ended in each state,
how many ran more than once, how many were lost (never final), and whether the surviving executors got all their
placement credit back.

    python -m tests.faultrun [--tasks 2000]
"""
from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from qcgpj import Jobs, Manager
from tests.cluster import Cluster, credit
from tests.redisproc import RedisServer


def done(m: Manager, names: list[str]) -> int:
    return sum(1 for s in m.status(names).values() if s == "SUCCEED")


def wait_until(m: Manager, names: list[str], count: int) -> None:
    last = "0-0"
    while done(m, names) < count:
        last = m.store.wait_event(last, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    n = ap.parse_args().tasks
    wd = Path(tempfile.mkdtemp(prefix="qcgpj-faultrun-"))
    with RedisServer(aof=True) as server:
        c = Cluster(server.url, wd)
        try:
            iq = c.inputqueue("--max-attempts", "5")
            a = c.worker(1, "--ttl", "2", "--heartbeat", "0.5", name="worker-a")
            c.worker(1, "--ttl", "2", "--heartbeat", "0.5", name="worker-b")
            m = c.manager()
            jobs = Jobs()
            for i in range(n):   # each run appends a line: a task that ran twice has two
                jobs.add(name=f"f{i}", script=f"echo run >> runs.{i}; sleep 0.02")
            names = m.submit(jobs)
            t0 = time.monotonic()
            wait_until(m, names, n // 4)
            os.kill(a.pid, signal.SIGKILL)
            print(f"{done(m, names)} done: killed executor a (SIGKILL)")
            wait_until(m, names, n // 2)
            os.kill(iq.pid, signal.SIGKILL)
            c.inputqueue("--max-attempts", "5")
            print(f"{done(m, names)} done: killed the InputQueue (SIGKILL) and started another")
            wait_until(m, names, 3 * n // 4)
            server.kill()
            server.restart()
            print(f"{done(m, names)} done: killed redis-server (SIGKILL) and restarted it (AOF)")
            c.worker(1, name="worker-c")
            states = Manager(server.url).wait4(names, timeout=600)
            runs = Counter(len((wd / f"runs.{i}").read_text().split()) if (wd / f"runs.{i}").exists() else 0
                           for i in range(n))
            final = Counter(states.values())
            print(f"{n} tasks in {time.monotonic() - t0:.1f} s: {dict(final)}; runs per task {dict(runs)}; "
                  f"lost {n - sum(final.values())}")
            print("placement credit of the live executors (credit, cores + look-ahead):", credit(m))
        finally:
            c.stop()


if __name__ == "__main__":
    main()
