"""``qcgpj top`` on a real redis-server with real services: its figures, its cost, and a real terminal (tmux)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from qcgpj import Jobs, Manager
from qcgpj.top import FRAME_COMMANDS, snapshot
from tests.cluster import Cluster, qcgpj_cmd
from tests.terminal import Terminal


def commands_of(m: Manager, fn) -> int:
    """Redis commands run by fn(), from INFO commandstats (the first INFO counts itself once)."""
    def calls() -> int:
        return sum(v["calls"] for v in m.client.info("commandstats").values())
    before = calls()
    fn()
    return calls() - before - 1


def test_counts_iterations_and_failures(redis_url, tmp_path):
    cluster = Cluster(redis_url, tmp_path)
    try:
        m = cluster.serving(2)
        m.submit(Jobs().add(name="ok", exec="/bin/true")
                 .add(name="bad", script="echo boom >&2; exit 3")
                 .add(name="after_bad", exec="/bin/true", after=["bad"])
                 .add(name="sweep", script="exit $(( ${it} % 4 == 1 ))", iteration=8))
        m.submit(Jobs().add(name="blocker", script="while [ ! -e go ]; do sleep 0.05; done")
                 .add(name="held", exec="/bin/true", iteration=5, after=["blocker"]))
        m.wait4(["ok", "bad", "after_bad", "sweep"], timeout=60)
        snap = snapshot(m.store)
        t = snap["tasks"]
        assert t["total"] == 1 + 1 + 1 + 8 + 1 + 5
        assert (t["SUCCEED"], t["FAILED"], t["OMITTED"], t["CANCELED"]) == (1 + 6, 1 + 2, 1, 0)
        assert t["remaining"] == 6 and t["waiting"] + t["placed"] + t["claimed"] == 6
        m.cancel("held")   # a whole iterative job ends at once: its 5 iterations count
        snap = snapshot(m.store)
        assert snap["tasks"]["CANCELED"] == 5 and snap["tasks"]["remaining"] == 1
        assert {f["task"] for f in snap["failures"]} == {"bad", "sweep:1", "sweep:5"}
        bad = next(f for f in snap["failures"] if f["task"] == "bad")
        assert bad["exit_code"] == 3 and bad["executor"] in m.store.executors()
        assert snap["throughput"]["last_60s"] > 0   # tasks ended within the last minute
        (ex,) = snap["executors"]
        assert ex["cores"] == 2 and ex["state"] == "ALIVE" and ex["claimed"] == 1   # the blocker
        out = subprocess.run(qcgpj_cmd("top", "--json", "--redis-url", redis_url), capture_output=True, text=True)
        assert json.loads(out.stdout)["tasks"]["CANCELED"] == 5
        (tmp_path / "go").touch()
        m.wait4(["blocker"], timeout=60)
        assert snapshot(m.store)["tasks"]["remaining"] == 0
    finally:
        cluster.stop()


def _frame_cost(m: Manager) -> int:
    return commands_of(m, lambda: snapshot(m.store))


def test_frame_cost_does_not_grow_with_100000_tasks(redis_url, tmp_path):
    """The commands of one frame depend on the live executors, not on the jobs: the same after one job and after
    100,000 tasks (20,000 jobs and an 80,000-iteration job). Services are stopped while counting."""
    costs = []
    for n_jobs, iterations in ((1, 0), (20_000, 80_000)):
        # A namespace per round: the probe executor below never beats, and work placed on it would wait its TTL.
        cluster = Cluster(redis_url, tmp_path, namespace=f"big{len(costs)}")
        try:
            m = cluster.serving(2)
            jobs = Jobs()
            for i in range(n_jobs):
                jobs.add(name=f"j{len(costs)}_{i}", exec="/bin/true", model="noop")
            if iterations:
                jobs.add(name="sweep", exec="/bin/true", model="noop", iteration=iterations)
            m.submit(jobs)
            m.wait4all(timeout=600)
        finally:
            cluster.stop()
        m.store.register("probe", 60, "probe-host", "n:4", 4, 4, 1, 0, 1)   # one live executor to read
        costs.append(_frame_cost(m))
        assert snapshot(m.store)["tasks"]["SUCCEED"] == (1 if n_jobs == 1 else 20_000 + 80_000)
    assert costs[0] == costs[1] == FRAME_COMMANDS[0] + FRAME_COMMANDS[1] * 1


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_live_view_in_a_terminal_quits_on_q_and_ctrl_c(redis_url, tmp_path):
    cluster = Cluster(redis_url, tmp_path)
    try:
        m = cluster.serving(2)
        m.submit(Jobs().add(name="bad", script="exit 7"))
        m.wait4(["bad"], timeout=60)
        for i, key in enumerate(("q", "C-c")):
            done = tmp_path / f"exited-{i}"
            cmd = " ".join(qcgpj_cmd("top", "--redis-url", redis_url)) + f"; echo $? > {done}; sleep 60"
            with Terminal(cmd, height=40, env=cluster.env) as term:
                screen = _wait_screen(term, lambda s: "latest failures" in s and "bad" in s)
                assert "ALIVE" in screen and "2/2" not in screen and "FAILED" in screen
                term.send(key)
                _wait_until(done.exists, f"top to exit on {key}")
                assert done.read_text().strip() == "0"
    finally:
        cluster.stop()


def _wait_until(predicate, what: str, timeout: float = 60) -> None:
    """Poll an outside process (a terminal has no event to wait on) until predicate() holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _wait_screen(term: Terminal, predicate) -> str:
    screen = [""]

    def check() -> bool:
        screen[0] = term.screen()
        return predicate(screen[0])
    _wait_until(check, "the screen of top")
    return screen[0]


def test_executors_show_the_slurm_job_they_run_in(redis_url):
    """An executor started inside a Slurm allocation (by hand or by `qcgpj alloc`) says which one."""
    m = Manager(redis_url)
    m.store.register("in-alloc", 60, "node1", "node1=4", 4, 4, 1, 0, 1, "4242")
    m.store.register("by-hand", 60, "node2", "node2=4", 4, 4, 1, 0, 2)
    assert {e["id"]: e["slurm_job"] for e in snapshot(m.store)["executors"]} == {"in-alloc": "4242", "by-hand": None}
    once = subprocess.run(qcgpj_cmd("top", "--once", "--redis-url", redis_url), capture_output=True, text=True,
                          timeout=60)
    assert once.returncode == 0 and "4242" in once.stdout, once.stdout + once.stderr
