"""The progress line's counts (qcgpj run / wait), where they come from: the Tallier over the jobs waited for. Real
services (a queue with its processes, local mode with each store)."""
from __future__ import annotations


from qcgpj import Jobs, Manager
from qcgpj.progress import Tallier
from tests.cluster import Cluster, kill_executor
from tests.test_behaviour import CORES, env, wait   # noqa: F401  (env is a fixture)
from tests.test_reliability import wait_for

GATE = "while [ ! -e go ]; do sleep 0.05; done"


def executing_iterations(m: Manager, job: str, on: set[str] | None = None) -> int:
    """How many iterations the records say are EXECUTING (on these executors only, with ``on``)."""
    return sum(r["state"] == "EXECUTING" and (on is None or r["executor"] in on) for r in m.iterations(job).values())


def running(m: Manager, names: list[str]) -> int:
    return Tallier(m.store, names).tally().running


def test_running_counts_executing_iterations_not_those_claimed_ahead(env):   # noqa: F811
    """A 2-core worker's line said '67 running' for one job of 100,000 iterations: running counted the iterations
    placed and not ended (on the executor's lists, its look-ahead), where single jobs count EXECUTING only."""
    m, wd = env
    m.submit(Jobs().add(name="w", script=GATE, iteration=40)
             .add(name="s", script=GATE, after=["w:0"]))   # a single job, counted beside
    wait_for(m, lambda: executing_iterations(m, "w") == CORES, what=f"{CORES} iterations executing")
    assert running(m, ["w", "s"]) == CORES    # was 4 + the look-ahead claimed and placed (20 and more)
    m.cancel("w:0")                           # an executing one ends: the next claimed one takes its cores
    wait_for(m, lambda: executing_iterations(m, "w") == CORES, what="the next iteration executing")
    assert running(m, ["w", "s"]) == CORES
    (wd / "go").touch()
    assert wait(m, ["w", "s"]) == {"w": "FAILED", "s": "OMITTED"}
    assert m.store.job_hash("w").get("n_EXECUTING", "0") == "0"   # every start counted was matched by its end


def test_running_iterations_of_a_dead_executor_are_counted_once_where_they_run_again(redis_url, tmp_path):
    """The iterations a dead executor was running go back to READY (requeue.lua) and run elsewhere: counted
    running once, there."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        a = c.worker(2, "--ttl", "2", "--heartbeat", "0.5", name="worker-a")
        m = c.manager()
        c.wait_executors(m)
        first = set(m.store.executors())
        m.submit(Jobs().add(name="w", script=GATE, iteration=10))
        wait_for(m, lambda: executing_iterations(m, "w") == 2, what="2 iterations executing on worker a")
        kill_executor(m, a)                      # its tasks are killed with it and go back to READY
        c.worker(2, name="worker-b")
        c.wait_executors(m)
        wait_for(m, lambda: executing_iterations(m, "w", on=set(m.store.executors()) - first) == 2, timeout=90,
                 what="2 iterations executing on worker b")
        assert running(m, ["w"]) == 2            # not 4: those of the dead executor went back to READY
        (tmp_path / "go").touch()
        assert m.wait4(["w"], timeout=90) == {"w": "SUCCEED"}, c.logs()
        assert m.store.job_hash("w").get("n_EXECUTING", "0") == "0"
    finally:
        (tmp_path / "go").touch()
        c.stop()
