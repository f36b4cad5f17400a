"""Time an EasyVVUQ campaign of 16 runs (PCE, order 1, 4 parameters) through QCGPJPool, with qcgpj's
QCGPJExecutor and with QCG-PilotJob's own (the qcg-pilotjob-executor-api that easyvvuq installs), interleaved
pairs on the same machine; local mode, 2 cores. Each task is EasyVVUQ's task runner, which imports easyvvuq
(several seconds of CPU), so most of the time is the client's own.

    python -m tests.easyvvuq_timing [--pairs 2] [--cores 2]

Needs easyvvuq (pip install qcgpj[easyvvuq]); prints one line per campaign and a median per executor.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.test_easyvvuq import run_campaign


def one(kind: str, cores: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its children) of one 16-run campaign."""
    if kind == "qcgpj":
        from qcgpj.compat.executor_api import QCGPJExecutor
    else:
        from qcg.pilotjob.executor_api.qcgpj_executor import QCGPJExecutor
    with tempfile.TemporaryDirectory(prefix="easyvvuq-timing-") as tmp:
        cpu0 = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                   for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        t0 = time.monotonic()
        df = run_campaign(Path(tmp), QCGPJExecutor(wd=tmp, resources=str(cores)), vary="abcd")
        wall = time.monotonic() - t0
        cpu = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                  for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) - cpu0
        assert len(df) == 16, df
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    os.environ.pop("QCGPJ_REDIS_URL", None)
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    walls: dict[str, list[float]] = {"qcgpj": [], "qcg-pilotjob": []}
    for i in range(args.pairs):
        for kind in (("qcgpj", "qcg-pilotjob") if i % 2 == 0 else ("qcg-pilotjob", "qcgpj")):
            wall, cpu = one(kind, args.cores)
            walls[kind].append(wall)
            print(f"pair {i + 1} {kind}: 16 runs in {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    for kind, w in walls.items():
        print(f"{kind}: median {statistics.median(w):.1f} s wall ({min(w):.1f}-{max(w):.1f})")


if __name__ == "__main__":
    main()
