"""Time a run from an empty cluster: TASKS tasks submitted with no worker anywhere, an allocation queue of
--max-allocations allocations of one whole node, the allocator and an InputQueue; from the submission to the last
task final, and the part of it spent waiting for Slurm: submission until the first worker registered (the
allocator noticing the work and running sbatch, Slurm starting the job, the worker starting up).

    python -m tests.alloc_timing [--tasks 1000] [--seconds 0.2] [--max-allocations 2]

Needs the Slurm of ../shared/slurm and redis-server; prints one line of figures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from qcgpj import Jobs, Manager
from qcgpj import slurm
from qcgpj.allocstore import AllocStore
from qcgpj.connection import ENV_URL
from tests.cluster import Cluster, qcgpj_cmd
from tests.redisproc import RedisServer

REPO = Path(__file__).resolve().parent.parent


def _logged(line: str) -> float:
    """The time of a log line ('2026-11-30 01:49:30,223 INFO ...')."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _slurm_start(job_id: str) -> float:
    """When Slurm started the job (whole seconds), while slurmctld still remembers it."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    start = next(f.split("=", 1)[1] for f in out.split() if f.startswith("StartTime="))
    return datetime.strptime(start, "%Y-%m-%dT%H:%M:%S").timestamp()


def our_jobs(tag: str) -> list[str]:
    return [j.id for j in slurm.our_jobs() if j.name == tag]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=0.2)
    ap.add_argument("--max-allocations", type=int, default=2)
    args = ap.parse_args()
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="qcgpj-alloc-") as tmp:
        wd = Path(tmp)
        cluster = Cluster(server.url, wd)
        subprocess.run(qcgpj_cmd("alloc", "add", "slurm", "--name", "cpu", "--nodes", "1", "--time", "30m",
                                 "--max-allocations", str(args.max_allocations), "--idle-grace", "2",
                                 "--worker-cmd", f"env PYTHONPATH={REPO} {sys.executable} -m qcgpj worker",
                                 "--wd", str(wd), "--dir", str(wd / "alloc")),
                       check=True, env=dict(cluster.env, **{ENV_URL: server.url}), capture_output=True)
        m = Manager(server.url)
        cluster.inputqueue()
        cluster.allocator("--poll", "0.5")
        t0 = time.time()
        m.submit(Jobs().add(name="t", script=f"sleep {args.seconds}", iteration=args.tasks))
        tag = AllocStore(m.client).queue("cpu").tag("default")
        try:
            m.wait4("t", timeout=3600)
            t_end = float(m.store.job_hash("t")["end"])   # when the last task became final
            while our_jobs(tag):      # the workers leave by themselves, while Redis is still there
                time.sleep(0.5)
        finally:
            cluster.stop()
            slurm.cancel(our_jobs(tag))
        execs = m.resources(departed=True)["executors"].values()
        first = min(float(e["started"]) for e in execs)
        sbatch = min(_logged(line) for line in (wd / "alloc.log").read_text().splitlines()
                     if "submitted allocation" in line)
        started = min(_slurm_start(e["slurm_job"]) for e in execs)
        ideal = args.tasks * args.seconds / sum(int(e["total"]) for e in execs)
        print(json.dumps({"tasks": args.tasks, "task_seconds": args.seconds, "allocations": len(execs),
                          "cores": sum(int(e["total"]) for e in execs), "total_s": round(t_end - t0, 2),
                          "waiting_for_slurm_s": round(first - t0, 2),
                          "of_which_to_sbatch_s": round(sbatch - t0, 2), "to_slurm_start_s": round(started - t0, 2), "ideal_compute_s": round(ideal, 2)}))


if __name__ == "__main__":
    main()
