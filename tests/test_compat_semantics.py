"""What QCG-PilotJob's own API and local-manager tests expect of canceling, listing, removing and job information,
checked on ``qcgpj.compat`` in our words: in local mode and on a real Redis with an executor."""
from __future__ import annotations

import time

import pytest

from qcgpj.compat import Jobs, LocalManager, Manager
from qcgpj.compat.errors import TimeoutElapsed
from qcgpj.errors import FinishedError, RemoveError
from tests.cluster import Cluster

GATE = "while [ ! -e go ]; do sleep 0.05; done"
GATE_IT = "while [ ! -e go_${it} ]; do sleep 0.05; done"   # each iteration its own


@pytest.fixture(params=["local", "redis"])
def open_queue(request, tmp_path, monkeypatch):
    """A function (cores) -> a compat Manager whose tasks run in tmp_path."""
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    made: list = []

    def make(cores: int):
        if request.param == "local":
            m = LocalManager(["--nodes", f"n0:{cores}", "--wd", str(tmp_path)])
        else:
            cluster = Cluster(request.getfixturevalue("redis_url"), tmp_path)
            made.append(cluster)
            cluster.serving(cores)
            m = Manager(cluster.url)
        made.append(m)
        return m
    yield make
    for x in reversed(made):
        x.finish() if isinstance(x, Manager) else x.stop()


def wait_state(m: Manager, name: str, state: str, timeout: float = 60) -> None:
    """Until a job or iteration reaches a state, woken by the queue's events."""
    deadline = time.monotonic() + timeout
    last = m.m.store.last_event_id()
    while m.status(name)["jobs"][name]["data"]["status"] != state:
        assert time.monotonic() < deadline, f"{name} never reached {state}"
        last = m.m.store.wait_event(last, 0.5)


def children(m: Manager, name: str) -> list[tuple[str, str, int | None, int]]:
    return [(c.name, c.status, c.total_cores, len(c.nodes or {})) for c in
            m.info_parsed(name, withChilds=True)[name].childs]


@pytest.mark.parametrize("canceled", [[2, 3], [0, 1]], ids=["waiting", "running"])
def test_canceled_iterations_make_the_job_failed(open_queue, tmp_path, canceled):
    m = open_queue(2)
    m.submit(Jobs().add(name="sw", script=GATE, iteration=4))
    wait_state(m, "sw:1", "EXECUTING")
    m.cancel([f"sw:{i}" for i in canceled])
    (tmp_path / "go").touch()
    assert m.wait4(m.list()) == {"sw": "FAILED"}
    info = m.info_parsed("sw", withChilds=True)["sw"]
    assert info.iterations == {"start": 0, "stop": 4, "total": 4, "finished": 4, "failed": 2}
    # a canceled iteration that was running still tells where it ran (sw:0 and sw:1 started on the 2 cores)
    ran = {i: (1, 1) if i < 2 or i not in canceled else (None, 0) for i in range(4)}
    assert children(m, "sw") == [(f"sw:{i}", "CANCELED" if i in canceled else "SUCCEED", *ran[i]) for i in range(4)]
    m.remove("sw")
    assert m.list() == {}


def test_a_job_canceled_whole_is_canceled_with_all_its_iterations(open_queue):
    m = open_queue(2)
    m.submit(Jobs().add(name="w", script=GATE, iteration={"start": 2, "stop": 12}))
    wait_state(m, "w:3", "EXECUTING")
    m.cancel("w")
    assert m.wait4(m.list()) == {"w": "CANCELED"}
    info = m.info_parsed("w", withChilds=True)["w"]
    assert info.iterations == {"start": 2, "stop": 12, "total": 10, "finished": 10, "failed": 10}
    assert [(c.name, c.status) for c in info.childs] == [(f"w:{i}", "CANCELED") for i in range(2, 12)]
    # told once, as itself (QCG-PilotJob tells each iteration it cancels, then the job)
    assert m.wait4_any_job_finish(60) == ("w", "CANCELED")
    with pytest.raises(TimeoutElapsed):
        m.wait4_any_job_finish(0)


def test_an_iteration_that_ended_unseen_before_its_job_was_canceled_is_told(open_queue, tmp_path):
    m = open_queue(2)
    m.submit(Jobs().add(name="w", script=GATE_IT, iteration=6))
    (tmp_path / "go_0").touch()
    wait_state(m, "w:0", "SUCCEED")
    wait_state(m, "w:2", "EXECUTING")   # on the core w:0 left
    m.cancel("w")   # no wait4_any_job_finish came between: w:0's end is found with the job's
    assert [m.wait4_any_job_finish(60) for _ in range(2)] == [("w:0", "SUCCEED"), ("w", "CANCELED")]
    with pytest.raises(TimeoutElapsed):
        m.wait4_any_job_finish(0)


def test_a_large_job_canceled_whole_is_told_once_without_its_iterations(redis_url):
    """wait4_any_job_finish read every iteration of a canceled job and told each (10,000 calls before the job's
    own end); now the job once, as itself."""
    m = Manager(redis_url)
    m.submit(Jobs().add(name="big", exec="/bin/true", iteration=10_000))   # no executor: none starts
    m.cancel("big")
    assert m.wait4_any_job_finish(60) == ("big", "CANCELED")
    with pytest.raises(TimeoutElapsed):
        m.wait4_any_job_finish(0)


def test_cancel_omits_what_depends_on_it(open_queue, tmp_path):
    m = open_queue(4)
    m.submit(Jobs().add(name="j1", script=GATE).add(name="j2", exec="/bin/true", after=["j1"])
             .add(name="c1", script=GATE, iteration={"start": 2, "stop": 6})
             .add(name="c2", exec="/bin/true", iteration={"start": 2, "stop": 6}, after=["c1:${it}"])
             .add(name="c3", exec="/bin/true", iteration={"start": 2, "stop": 6}, after=["c2:${it}"]))
    wait_state(m, "j1", "EXECUTING")
    m.cancel(["j1", "c1:3"])
    (tmp_path / "go").touch()
    assert m.wait4(m.list()) == {"j1": "CANCELED", "j2": "OMITTED", "c1": "FAILED", "c2": "FAILED", "c3": "FAILED"}
    for name, why in (("c1", "CANCELED"), ("c2", "OMITTED"), ("c3", "OMITTED")):
        info = m.info_parsed(name, withChilds=True)[name]
        assert info.iterations["finished"] == 4 and info.iterations["failed"] == 1
        assert [c.status for c in info.childs] == ["SUCCEED", why, "SUCCEED", "SUCCEED"]
    got = [m.wait4_any_job_finish(60) for _ in range(17)]   # a job omitted whole: only its own end, as there
    assert sorted(got) == sorted([("j1", "CANCELED"), ("j2", "OMITTED")] + [
        (f"{j}:{i}", "SUCCEED" if i != 3 else why) for j, why in (("c1", "CANCELED"), ("c2", "OMITTED"),
                                                                ("c3", "OMITTED")) for i in range(2, 6)]
        + [(j, "FAILED") for j in ("c1", "c2", "c3")])
    assert all(got.index((j, "FAILED")) > max(i for i, (n, _) in enumerate(got) if n.startswith(j + ":"))
               for j in ("c1", "c2", "c3"))   # a job after its iterations


# ---------------------------------------------------------------------- wait4_any_job_finish
def test_every_end_is_reported_once_also_those_between_calls(open_queue, tmp_path):
    """QCG-PilotJob's manager queues an end notification for each job from the Manager's start: ``for _ in
    range(n): wait4_any_job_finish()`` gets all n, also of jobs that ended before the call or together."""
    m = open_queue(2)
    m.submit(Jobs().add(name="a", script=GATE).add(name="b", script=GATE))
    (tmp_path / "go").touch()
    assert m.wait4(["a", "b"], timeout=60) == {"a": "SUCCEED", "b": "SUCCEED"}   # both ended before the call
    assert sorted(m.wait4_any_job_finish(60) for _ in range(2)) == [("a", "SUCCEED"), ("b", "SUCCEED")]
    m.submit(Jobs().add(name="c", script="exit 3"))
    m.wait4("c", timeout=60)   # ended between two calls
    assert m.wait4_any_job_finish(60) == ("c", "FAILED")
    m.remove("c")
    m.submit(Jobs().add(name="c", script="exit 3"))   # another job of that name, ending as the first did
    m.wait4("c", timeout=60)
    assert m.wait4_any_job_finish(60) == ("c", "FAILED")
    with pytest.raises(TimeoutElapsed):   # as QCG-PilotJob: no (None, None), each end told once
        m.wait4_any_job_finish(0)


def test_iterations_ends_are_reported_oldest_first_then_the_job(open_queue, tmp_path):
    m = open_queue(2)
    m.submit(Jobs().add(name="it", script=GATE_IT + "; [ ${it} != 1 ]", iteration=3))
    (tmp_path / "go_1").touch()
    assert m.wait4_any_job_finish(60) == ("it:1", "FAILED")   # told while its job runs
    wait_state(m, "it:2", "EXECUTING")   # on the core it:1 left
    (tmp_path / "go_2").touch()
    wait_state(m, "it:2", "SUCCEED")
    (tmp_path / "go_0").touch()
    assert m.wait4("it", timeout=60) == {"it": "FAILED"}
    assert [m.wait4_any_job_finish(60) for _ in range(3)] == [("it:2", "SUCCEED"), ("it:0", "SUCCEED"),
                                                               ("it", "FAILED")]
    with pytest.raises(TimeoutElapsed):
        m.wait4_any_job_finish(0.1)


def test_ends_before_the_manager_are_not_reported(open_queue, tmp_path):
    """QCG-PilotJob's Manager hears of ends from its start: a second client on the queue hears of none before."""
    m = open_queue(2)
    m.submit(Jobs().add(name="old", exec="/bin/true").add(name="half", script=GATE_IT, iteration=2))
    (tmp_path / "go_0").touch()
    wait_state(m, "half:0", "SUCCEED")
    assert m.wait4("old", timeout=60) == {"old": "SUCCEED"}
    late = Manager(None, client=m.m.client)   # the same queue, as Manager(url) on it
    (tmp_path / "go_1").touch()
    assert [late.wait4_any_job_finish(60) for _ in range(2)] == [("half:1", "SUCCEED"), ("half", "SUCCEED")]
    with pytest.raises(TimeoutElapsed):
        late.wait4_any_job_finish(0)
    assert sorted(m.wait4_any_job_finish(60) for _ in range(4)) == [
        ("half", "SUCCEED"), ("half:0", "SUCCEED"), ("half:1", "SUCCEED"), ("old", "SUCCEED")]


def test_list_tells_the_place_of_jobs_waiting_to_start(open_queue, tmp_path):
    m = open_queue(2)
    m.submit(Jobs().add(name="blk", script=GATE, numCores=2).add(name="x", exec="/bin/true", numCores=2)
             .add(name="y", exec="/bin/true").add(name="z", exec="/bin/true", after=["x"]))
    wait_state(m, "blk", "EXECUTING")
    listed = m.list()
    assert {n: d.get("inQueue") for n, d in listed.items()} == {"blk": None, "x": 0, "y": 1, "z": None}
    assert listed["z"]["status"] == "QUEUED"
    (tmp_path / "go").touch()
    m.wait4all()
    assert all("inQueue" not in d for d in m.list().values())


def test_a_running_job_is_not_removed(open_queue, tmp_path):
    """QCG-PilotJob refuses too (its API says nothing about it); here the refusal is an error naming the job, and
    the job stays. Canceled and final, it goes, and its name may be used again."""
    m = open_queue(2)
    m.submit(Jobs().add(name="r", script=GATE))
    wait_state(m, "r", "EXECUTING")
    with pytest.raises(RemoveError, match="job 'r': is EXECUTING"):
        m.remove("r")
    assert list(m.list()) == ["r"]
    m.cancel("r")
    m.wait4("r")
    m.remove("r")
    m.submit(Jobs().add(name="r", exec="/bin/true"))
    assert m.wait4("r", timeout=60) == {"r": "SUCCEED"}   # the new job, not the old one's late report


def test_info_has_the_cores_each_task_ran_on(tmp_path, monkeypatch):
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    m = LocalManager(["--nodes", "n0:2,n1:2", "--wd", str(tmp_path)])
    try:
        m.submit(Jobs().add(name="wide", exec="/bin/true", numNodes=2, numCores=2)
                 .add(name="its", exec="/bin/true", iteration=2, numCores=1))
        m.wait4all()
        wide = m.info_parsed("wide")["wide"]
        assert (wide.nodes, wide.total_cores) == ({"n0": [0, 1], "n1": [0, 1]}, 4)
        raw = m.info("wide")["jobs"]["wide"]["data"]["runtime"]["allocation"]
        assert raw == "n0[0:1],n1[0:1]"   # QCG-PilotJob's text
        assert [c.total_cores for c in m.info_parsed("its", withChilds=True)["its"].childs] == [1, 1]
    finally:
        m.finish()



def test_info_parsed_children_tell_their_iteration(open_queue):
    """QCG-PilotJob's JobInfo of an iteration has ``iteration`` (its index) beside ``name``; here it had none
    (AttributeError in scripts that read it)."""
    m = open_queue(2)
    m.submit(Jobs().add(name="its", exec="/bin/true", iteration={"start": 2, "stop": 4}))
    m.wait4all()
    kids = m.info_parsed("its", withChilds=True)["its"].childs
    assert [(c.name, c.iteration) for c in kids] == [("its:2", 2), ("its:3", 3)]
    assert m.info_parsed("its")["its"].iteration is None and m.info_parsed("its:3")["its:3"].iteration == 3

def test_asking_a_finished_local_manager_is_a_clear_error(tmp_path, monkeypatch):
    """Its store went with its services: a FinishedError at once, not a connection error after retries."""
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    m = LocalManager(["--nodes", "n0:1", "--wd", str(tmp_path)])
    m.finish()
    for ask in (m.list, m.system_status, lambda: m.info("x"), lambda: m.wait4("x"), lambda: m.remove("x"),
                lambda: m.wait4_any_job_finish(1)):
        with pytest.raises(FinishedError, match="finished"):
            ask()


def test_local_manager_takes_unnamed_nodes_as_qcg_pilotjob_does():
    """`--nodes 4` (or `2,3`) is QCG-PilotJob's form without node names: nodes n0, n1... with those cores."""
    from qcgpj.compat import LocalManager
    m = LocalManager(["--nodes", "2,3"])
    try:
        res = m.resources()
        assert (res["total_nodes"], res["total_cores"]) == (2, 5)
    finally:
        m.finish()
