"""Per-task resource usage (user/system CPU seconds, max RSS from wait4) through a real redis-server and executor:
in the task's report, ``info``, and ``report stats``."""
from __future__ import annotations

import json
import subprocess
import sys

from qcgpj import Jobs
from qcgpj.report import RedisSource, stats
from tests.cluster import Cluster, qcgpj_cmd

# Burns >= 0.3 s of its own CPU (process time, whatever the load) and holds ~100 MB it has touched.
BURN = ("import time\nb = b'x' * (100 << 20)\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3:\n    sum(range(1000))\n")


def test_cpu_and_memory_of_a_job_and_an_iteration(redis_url, tmp_path):
    cluster = Cluster(redis_url, tmp_path, namespace="use")
    try:
        m = cluster.serving(2)
        jobs = Jobs().add(name="burn", exec=sys.executable, args=["-c", BURN])
        # an iteration through a shell: the shell waits for python, so wait4 counts python's usage too
        jobs.add(name="sweep", script=f"{sys.executable} -c \"$BURN\"", env={"BURN": BURN}, iteration=2)
        jobs.add(name="idle", exec="/bin/sleep", args=["0.5"])
        m.submit(jobs)
        assert m.wait4all(timeout=120) == {"burn": "SUCCEED", "sweep": "SUCCEED", "idle": "SUCCEED"}
        for info in (m.info("burn"), m.info("sweep:0"), m.info("sweep:1")):
            assert info["cpu_user"] >= 0.2 and info["cpu_system"] >= 0, info
            assert info["max_rss_kb"] >= 80 * 1024, info
            assert info["cpu_user"] + info["cpu_system"] <= (info["end"] - info["start"]) * 1.1 + 0.05, info
        idle = m.info("idle")
        # a small task's peak is the executor's (Linux keeps the forking process's across exec): below burn's
        assert idle["cpu_user"] < 0.2 and idle["max_rss_kb"] < m.info("burn")["max_rss_kb"]
        assert m.info("sweep:0")["attempt"] == 0   # the usage rides on the attempt field, which still parses

        s = stats(RedisSource(m.store))
        assert s["measured_tasks"] == 4 and s["cpu_user"] >= 3 * 0.2 and s["max_rss_kb"] >= 80 * 1024
        per_job = {u["job"]: u for u in s["jobs_usage"]}
        assert per_job["sweep"]["measured_tasks"] == 2 and per_job["sweep"]["cpu_user"] >= 0.4
        assert per_job["idle"]["cpu_efficiency_pct"] < per_job["burn"]["cpu_efficiency_pct"]
        assert 0 < per_job["burn"]["cpu_efficiency_pct"] <= 110

        url = ["--redis-url", redis_url, "-n", "use"]
        out = subprocess.run(qcgpj_cmd("info", "burn", *url), capture_output=True, text=True, env=cluster.env)
        assert out.returncode == 0 and "max_rss_kb: " in out.stdout and "cpu_user: " in out.stdout
        out = subprocess.run(qcgpj_cmd("report", "stats", *url), capture_output=True, text=True, env=cluster.env)
        assert out.returncode == 0, out.stderr
        assert "CPU efficiency" in out.stdout and "  idle  " in out.stdout
        out = subprocess.run(qcgpj_cmd("report", "jobs", "--json", *url), capture_output=True, text=True,
                             env=cluster.env)
        rows = {r["task"]: r for r in json.loads(out.stdout)}
        assert rows["sweep:1"]["max_rss_kb"] >= 80 * 1024
    finally:
        cluster.stop()
