"""A worker that serves campaign after campaign for days: what it keeps per task must go when the task ends."""
from __future__ import annotations

from qcgpj import Jobs
from tests.cluster import executor_pids


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_tasks_with_a_long_walltime_are_not_kept_until_it(cluster):
    """A task's walltime entry (and its slot: argv, environment, process) stayed in the executor until the
    deadline, however soon the task ended: with wt=1d, 20,000 tasks of /bin/true took it from 31 to 100 MB."""
    m = cluster.serving(2)
    pid = executor_pids(m, cluster.procs[-1])[0]
    m.submit(Jobs().add(name="warm", exec="/bin/true", iteration=300, wt="1d"))
    assert set(m.wait4all(timeout=120).values()) == {"SUCCEED"}
    before = rss_kb(pid)
    m.submit(Jobs().add(name="sweep", exec="/bin/true", iteration=2000, wt="1d"))
    assert set(m.wait4all(timeout=300).values()) == {"SUCCEED"}
    grown = rss_kb(pid) - before
    assert grown < 3 * 1024, f"the executor grew by {grown} kB over 2,000 ended tasks (7 MB when kept)"
