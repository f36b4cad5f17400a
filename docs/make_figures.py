"""Regenerate the README's monitoring images from a real run, or measure what monitoring costs.

    python docs/make_figures.py            # docs/top.svg, docs/gantt.png, docs/utilisation.png
    python docs/make_figures.py --measure  # top's frame cost at 100,000 tasks, Gantt time of 10,000 tasks

Both start a private redis-server, an InputQueue and executors as separate processes (needs redis-server on
PATH and matplotlib: pip install 'qcgpj[plot]').
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rich.console import Console  # noqa: E402

from qcgpj import Jobs  # noqa: E402
from qcgpj.plots import gantt, utilisation as plot_utilisation  # noqa: E402
from qcgpj.report import RedisSource, lanes, utilisation  # noqa: E402
from qcgpj.top import render, snapshot  # noqa: E402
from tests.cluster import Cluster  # noqa: E402
from tests.redisproc import RedisServer  # noqa: E402


def figures() -> None:
    """A small mixed run on two executors of 4 cores: short and long tasks, an iterative sweep, failures."""
    with RedisServer() as server, tempfile.TemporaryDirectory() as wd:
        cluster = Cluster(server.url, Path(wd))
        try:
            cluster.inputqueue()
            cluster.worker(4, name="w1")
            cluster.worker(4, name="w2")
            m = cluster.manager()
            cluster.wait_executors(m, 2)
            jobs = Jobs().add(name="prepare", exec="/bin/sleep", args=["0.6"], numCores=2)
            for i in range(24):
                jobs.add(name=f"sim{i}", exec="/bin/sleep", args=[f"{0.3 + (i * 7 % 10) / 10:.1f}"],
                         after=["prepare"])
            jobs.add(name="sweep", script="sleep 0.$(( ${it} % 5 + 1 )); exit $(( ${it} % 17 == 5 ))",
                     iteration=60, after=["prepare"])
            jobs.add(name="wide", exec="/bin/sleep", args=["1.5"], numCores=3, after=["sim3"])
            jobs.add(name="collect", exec="/bin/sleep", args=["0.4"], after=["sweep", "wide"])
            m.submit(jobs)
            deadline = time.monotonic() + 4.0   # a frame in mid-run
            last = m.store.last_event_id()
            while time.monotonic() < deadline:
                last = m.store.wait_event(last, 0.5)
            console = Console(record=True, width=110, file=open("/dev/null", "w"))
            console.print(render(snapshot(m.store)))
            console.save_svg(str(HERE / "top.svg"), title="qcgpj top")
            m.wait4all(timeout=300)
            source = RedisSource(m.store)
            gantt(lanes(source), str(HERE / "gantt.png"), colour_by="job")
            plot_utilisation(utilisation(source), str(HERE / "utilisation.png"))
        finally:
            cluster.stop()
    print("wrote", *(str(HERE / f) for f in ("top.svg", "gantt.png", "utilisation.png")))


def _run_noop(m, cluster, jobs: int, iterations: int) -> None:
    batch = Jobs()
    for i in range(jobs):
        batch.add(name=f"j{i}", exec="/bin/true", model="noop")
    if iterations:
        batch.add(name="sweep", exec="/bin/true", model="noop", iteration=iterations)
    m.submit(batch)
    m.wait4all(timeout=1800)


def measure() -> None:
    with RedisServer() as server, tempfile.TemporaryDirectory() as wd:
        cluster = Cluster(server.url, Path(wd))
        try:
            m = cluster.serving(16)
            _run_noop(m, cluster, 20_000, 80_000)
            calls = lambda: sum(v["calls"] for v in m.client.info("commandstats").values())  # noqa: E731
            times, cmds = [], []
            for _ in range(20):
                c0 = calls()
                t0 = time.perf_counter()
                snapshot(m.store)
                times.append(time.perf_counter() - t0)
                cmds.append(calls() - c0 - 1)
            times.sort()
            print(f"top frame at {snapshot(m.store)['tasks']['total']:,} tasks: median "
                  f"{times[len(times) // 2] * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms, "
                  f"{min(cmds)}-{max(cmds)} Redis commands (services running: theirs are counted too)")
        finally:
            cluster.stop()
    with RedisServer() as server, tempfile.TemporaryDirectory() as wd:
        cluster = Cluster(server.url, Path(wd))
        try:
            cluster.inputqueue()
            for k in range(4):
                cluster.worker(16, name=f"w{k}")
            m = cluster.manager()
            cluster.wait_executors(m, 4)
            _run_noop(m, cluster, 10_000, 0)
            t0 = time.perf_counter()
            rows = lanes(RedisSource(m.store))
            t1 = time.perf_counter()
            n = gantt(rows, str(Path(wd) / "gantt.png"))
            t2 = time.perf_counter()
            print(f"gantt of {len(rows):,} tasks on {n} lanes: {t2 - t0:.2f} s "
                  f"(read {t1 - t0:.2f} s, draw and write PNG {t2 - t1:.2f} s)")
        finally:
            cluster.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="measure instead of drawing the README's images")
    (measure if ap.parse_args().measure else figures)()
