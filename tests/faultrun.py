"""Fault runs, for the record and (with --short) for CI: named scenarios on real redis-servers and real processes.
Each prints one line: scenario, tasks, lost (never ran, or vanished from the queue), duplicated (ran more than
once), stuck (not final at the deadline), seconds, and what else the scenario checks.

    python -m tests.faultrun [--short] [SCENARIO...]      (default: every scenario)

kills     short tasks on two executors while an executor, the InputQueue and redis-server are each SIGKILLed
outage    Redis down 30 s (short: a few seconds past the TTL) during a run on two workers: none exits
restarts  20 Redis restarts (SIGKILL or clean stop, alternately) while the InputQueue and a worker serve
poison    a task that kills its worker, with four workers: FAILED after 3 attempts, at least one worker left
submit-oom  a 200,000-job submit into a 20 MB Redis (short: 50,000 into 10 MB): refused whole, nothing written;
          submit and cancel past maxmemory refused; once memory is freed the queue runs new work once each

A scenario is a function registered with ``@scenario("name")``: it gets the sizes and a work directory and
returns a :class:`Result`; the runner adds the timing and prints the line.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qcgpj import Jobs, Manager
from qcgpj.store import FINAL_STATES
from tests.cluster import Cluster, kill_executor
from tests.redisproc import RedisServer


@dataclass
class Sizes:
    short: bool
    tasks: int            # jobs per scenario
    outage: float         # seconds Redis is down in 'outage'
    restarts: int         # Redis restarts in 'restarts'
    ttl: str              # the workers' --ttl
    deadline: float       # seconds a run may take before what is open counts as stuck


FULL = Sizes(False, 2000, 30.0, 20, "10", 600.0)
SHORT = Sizes(True, 150, 4.5, 3, "3", 120.0)   # the outage still past the TTL


@dataclass
class Result:
    tasks: int
    lost: int
    duplicated: int
    stuck: int
    seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def line(self, name: str) -> str:
        more = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"{name:<9} tasks={self.tasks} lost={self.lost} duplicated={self.duplicated} stuck={self.stuck} "
                f"seconds={self.seconds:.1f} {more}").rstrip()


SCENARIOS: dict[str, Callable[[Sizes, Path], Result]] = {}


def scenario(name: str) -> Callable[[Callable[[Sizes, Path], Result]], Callable[[Sizes, Path], Result]]:
    """Register a scenario under ``name`` (another module may add its own: ``submit-oom``, ...)."""
    def register(fn: Callable[[Sizes, Path], Result]) -> Callable[[Sizes, Path], Result]:
        SCENARIOS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------------- helpers
def submit_marked(m: Manager, n: int, prefix: str = "f", sleep: float = 0.02) -> list[str]:
    """n jobs that each append a line to runs.<name> in the work directory: a task that ran twice has two."""
    jobs = Jobs()
    for i in range(n):
        jobs.add(name=f"{prefix}{i}", script=f"echo run >> runs.{prefix}{i}; sleep {sleep}")
    return m.submit(jobs)


def done(m: Manager, names: list[str]) -> int:
    return sum(1 for s in m.status(names).values() if s == "SUCCEED")


def wait_until(m: Manager, names: list[str], count: int, deadline: float) -> None:
    last = "0-0"
    while done(m, names) < count and time.monotonic() < deadline:
        last = m.store.wait_event(last, 0.5)


def tally(url: str, wd: Path, names: list[str], deadline: float) -> Result:
    """Wait (on events, until the deadline) for the jobs to end, then count what was lost, doubled or stuck."""
    m = Manager(url)
    last = "0-0"
    while time.monotonic() < deadline:
        st = m.status(names)
        if all(s in FINAL_STATES or s is None for s in st.values()):
            break
        last = m.store.wait_event(last, 0.5)
    st = m.status(names)
    runs = {n: len((wd / f"runs.{n}").read_text().split()) if (wd / f"runs.{n}").exists() else 0 for n in names}
    lost = sum(1 for n in names if st[n] is None or (st[n] == "SUCCEED" and runs[n] == 0))
    stuck = sum(1 for n in names if st[n] is not None and st[n] not in FINAL_STATES)
    return Result(len(names), lost, sum(1 for r in runs.values() if r > 1), stuck)


def exited(procs) -> int:
    return sum(1 for p in procs if p.poll() is not None)


# ---------------------------------------------------------------------- scenarios
@scenario("kills")
def kills(sz: Sizes, wd: Path) -> Result:
    n = sz.tasks
    with RedisServer(aof=True) as server:
        c = Cluster(server.url, wd)
        try:
            iq = c.inputqueue("--max-attempts", "5")
            a = c.worker(1, "--ttl", "2", "--heartbeat", "0.5", name="worker-a")
            c.worker(1, "--ttl", "2", "--heartbeat", "0.5", name="worker-b")
            m = c.manager()
            names = submit_marked(m, n)
            deadline = time.monotonic() + sz.deadline
            wait_until(m, names, n // 4, deadline)
            kill_executor(m, a)   # the executor process: its command then kills its tasks
            wait_until(m, names, n // 2, deadline)
            os.kill(iq.pid, signal.SIGKILL)
            c.inputqueue("--max-attempts", "5")
            wait_until(m, names, 3 * n // 4, deadline)
            server.kill()
            server.restart()
            c.worker(1, name="worker-c")
            return tally(server.url, wd, names, deadline)
        finally:
            c.stop()


@scenario("outage")
def outage(sz: Sizes, wd: Path) -> Result:
    n = sz.tasks
    with RedisServer(aof=True) as server:
        c = Cluster(server.url, wd)
        try:
            c.inputqueue()
            workers = [c.worker(1, "--ttl", sz.ttl, "--heartbeat", "0.5", name=f"worker-{i}") for i in range(2)]
            m = c.manager()
            names = submit_marked(m, n)
            deadline = time.monotonic() + sz.deadline + sz.outage
            wait_until(m, names, n // 4, deadline)
            server.stop()
            time.sleep(sz.outage)                # the outage itself
            server.restart()
            res = tally(server.url, wd, names, deadline)
            res.extra = {"down_s": sz.outage, "workers_exited": exited(workers)}
            return res
        finally:
            c.stop()


@scenario("restarts")
def restarts(sz: Sizes, wd: Path) -> Result:
    n = sz.tasks
    with RedisServer(aof=True) as server:
        c = Cluster(server.url, wd)
        try:
            iq = c.inputqueue()
            workers = [c.worker(2, "--ttl", sz.ttl, "--heartbeat", "0.5")]
            m = c.manager()
            names = submit_marked(m, n, sleep=0.05)
            deadline = time.monotonic() + sz.deadline
            time.sleep(1.5)                      # the submit is on disk (appendfsync everysec) before the first kill
            for i in range(sz.restarts):
                if i % 2:
                    server.stop()
                else:
                    server.kill()
                server.restart()
                time.sleep(0.5)                  # let the services reconnect and work a little between faults
            res = tally(server.url, wd, names, deadline)
            res.extra = {"restarts": sz.restarts, "inputqueue_died": int(iq.poll() is not None),
                         "workers_exited": exited(workers)}
            return res
        finally:
            c.stop()


@scenario("poison")
def poison(sz: Sizes, wd: Path) -> Result:
    with RedisServer() as server:
        c = Cluster(server.url, wd)
        try:
            c.inputqueue("--max-attempts", "3")
            workers = [c.worker(1, "--ttl", "2", "--heartbeat", "0.5", name=f"worker-{i}") for i in range(4)]
            m = c.manager()
            c.wait_executors(m, 4)
            m.submit(Jobs().add(name="poison", script="kill -9 $PPID"))
            deadline = time.monotonic() + sz.deadline
            res = tally(server.url, wd, ["poison"], deadline)
            info = m.info("poison")
            res.lost = 0    # it never writes its mark: by design, not a loss
            spent = re.search(r"after (\d+) attempts", info["message"])
            res.extra = {"poison": info["state"], "attempts": spent.group(1) if spent else "?",
                         "workers_left": len(workers) - exited(workers)}
            fine = submit_marked(m, 10, prefix="fine")   # the workers left still serve
            more = tally(server.url, wd, fine, deadline)
            res.tasks += more.tasks
            res.lost += more.lost
            res.duplicated += more.duplicated
            res.stuck += more.stuck
            return res
        finally:
            c.stop()


# ---------------------------------------------------------------------- runner
@scenario("submit-oom")
def submit_oom(sz: Sizes, _wd: Path) -> Result:
    """A submit far too large for a Redis with a small maxmemory (tests/fault_submit.py): refused whole."""
    from tests.fault_submit import submit_oom as oom
    out = oom(sz.short)
    return Result(out.pop("jobs", 0), out.pop("lost"), out.pop("duplicated"), out.pop("stuck"), extra=out)


def run(name: str, sz: Sizes) -> Result:
    wd = Path(tempfile.mkdtemp(prefix=f"qcgpj-faultrun-{name}-"))
    t0 = time.monotonic()
    res = SCENARIOS[name](sz, wd)
    res.seconds = time.monotonic() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="small sizes, for CI")
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)}")
    args = ap.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    sz = SHORT if args.short else FULL
    for name in args.scenarios or list(SCENARIOS):
        print(run(name, sz).line(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
