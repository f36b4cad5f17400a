"""The behaviour suite: the same tests on a real redis-server with real service processes, and in local mode
(with each of its stores)."""
from __future__ import annotations

import os
import select
import sys
import time
import pytest
import redis

from qcgpj import DependencyError, DuplicateJobError, Jobs, JobSpecError, Manager, ResourceError, UnknownJobError
from qcgpj import TimeoutError as QTimeout

from qcgpj.connection import connect
from qcgpj.executor import ADAPT_ENDS, PREFETCH_MAX, Executor
from qcgpj.resources import Node
from tests.cluster import Cluster, credit

CORES = 4


@pytest.fixture(params=["redis", "local", "fakeredis"])
def env(request, tmp_path):
    """(manager, run directory) for each mode: a shared Redis with service processes, and local mode with each
    store (a private redis-server, fakeredis)."""
    if request.param in ("local", "fakeredis"):
        m = Manager(cores=CORES, root_wd=str(tmp_path), store="fakeredis" if request.param == "fakeredis" else None)
        yield m, tmp_path
        m.finish()
        return
    url = request.getfixturevalue("redis_url")
    cluster = Cluster(url, tmp_path)
    cluster.inputqueue()
    cluster.worker(CORES)
    m = cluster.manager()
    cluster.wait_executors(m)
    try:
        yield m, tmp_path
        for eid, (free, whole) in credit(m).items():
            assert free == whole, f"executor {eid}: placement credit {free}, but its cores and look-ahead are {whole}"
    finally:
        cluster.stop()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(cluster.logs())


def wait(m: Manager, names, timeout: float = 60):
    return m.wait4(names, timeout=timeout)


def wait_state(m: Manager, name: str, state: str, timeout: float = 30) -> None:
    """Wait, woken by the queue's events, until a job or iteration reaches a state."""
    deadline = time.monotonic() + timeout
    last = m.store.last_event_id()
    while m.info(name)["state"] != state:
        assert time.monotonic() < deadline, f"{name} never reached {state}"
        last = m.store.wait_event(last, 0.5)


def test_single_job_runs_and_reports(env):
    m, wd = env
    m.submit(Jobs().add(name="hello", exec="/bin/sh", args=["-c", "echo hi $GREETING"], env={"GREETING": "there"},
                        stdout="hello.out"))
    assert wait(m, ["hello"]) == {"hello": "SUCCEED"}
    assert (wd / "hello.out").read_text() == "hi there\n"
    info = m.info("hello")
    assert info["exit_code"] == 0 and info["runtime"] >= 0 and info["executor"]


def test_failure_omits_dependents_transitively(env):
    m, _ = env
    jobs = (Jobs().add(name="bad", exec="/bin/false")
            .add(name="child", exec="/bin/true", after=["bad"])
            .add(name="grandchild", exec="/bin/true", after=["child"])
            .add(name="other", exec="/bin/true"))
    m.submit(jobs)
    states = wait(m, ["bad", "child", "grandchild", "other"])
    assert states == {"bad": "FAILED", "child": "OMITTED", "grandchild": "OMITTED", "other": "SUCCEED"}
    assert "exit code 1" in m.info("bad")["message"]
    assert "bad" in m.info("child")["message"]


def test_dependency_order_is_respected(env):
    m, wd = env
    jobs = (Jobs().add(name="first", script="sleep 0.2; echo first >> order.txt")
            .add(name="second", script="echo second >> order.txt", after=["first"])
            .add(name="third", script="echo third >> order.txt", after=["second"]))
    m.submit(jobs)
    assert set(wait(m, ["first", "second", "third"]).values()) == {"SUCCEED"}
    assert (wd / "order.txt").read_text().split() == ["first", "second", "third"]
    assert m.info("second")["start"] >= m.info("first")["end"]


def test_iterative_job_substitutes_and_reports_per_iteration(env):
    m, wd = env
    m.submit(Jobs().add(name="sweep", exec="/bin/sh", args=["-c", "echo ${it} ${ncores} ${jname}"],
                        stdout="out/sweep.${it}", iteration={"start": 2, "stop": 7}))
    assert wait(m, ["sweep"]) == {"sweep": "SUCCEED"}
    for it in range(2, 7):
        assert (wd / "out" / f"sweep.{it}").read_text() == f"{it} 1 sweep\n"
        assert m.info(f"sweep:{it}")["state"] == "SUCCEED"
    info = m.info("sweep")
    assert info["iterations"] == {"total": 5, "start": 2, "finished": 5, "SUCCEED": 5, "FAILED": 0,
                                  "CANCELED": 0, "OMITTED": 0}
    with pytest.raises(UnknownJobError):
        m.info("sweep:7")


def test_iteration_values_and_partial_failure(env):
    m, wd = env
    m.submit(Jobs().add(name="vals", exec="/bin/sh", args=["-c", "echo ${itval}; test ${itval} != b"],
                        stdout="v.${it}", iteration={"values": ["a", "b", "c"]}))
    assert wait(m, ["vals"]) == {"vals": "FAILED"}
    assert [(wd / f"v.{i}").read_text() for i in range(3)] == ["a\n", "b\n", "c\n"]
    assert [m.info(f"vals:{i}")["state"] for i in range(3)] == ["SUCCEED", "FAILED", "SUCCEED"]


def test_per_iteration_and_single_iteration_dependencies(env):
    m, wd = env
    jobs = (Jobs().add(name="gen", script="test ${it} != 1 && echo ${it} > gen.${it}", iteration=3)
            .add(name="use", script="cat gen.${it} > use.${it}", iteration=3, after=["gen:${it}"])
            .add(name="after2", script="cat gen.2 > after2.out", after=["gen:2"]))
    m.submit(jobs)
    states = wait(m, ["gen", "use", "after2"])
    assert states == {"gen": "FAILED", "use": "FAILED", "after2": "SUCCEED"}   # use: one iteration OMITTED
    assert [m.info(f"use:{i}")["state"] for i in range(3)] == ["SUCCEED", "OMITTED", "SUCCEED"]
    assert (wd / "use.2").read_text() == "2\n" and (wd / "after2.out").read_text() == "2\n"


def test_cores_range_and_cpu_binding(env):
    m, wd = env
    probe = "import os; print(len(os.sched_getaffinity(0)), os.environ['QCGPJ_NCORES'])"
    m.submit(Jobs().add(name="wide", exec=sys.executable, args=["-c", probe], stdout="wide.out",
                        numCores={"min": 2, "max": 3})
             .add(name="exact", exec=sys.executable, args=["-c", probe], stdout="exact.out", numCores=2))
    assert set(wait(m, ["wide", "exact"]).values()) == {"SUCCEED"}
    bound, given = map(int, (wd / "exact.out").read_text().split())
    assert given == 2 and bound == min(2, os.cpu_count() or 2)
    _bound, given = map(int, (wd / "wide.out").read_text().split())
    assert 2 <= given <= 3


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_concurrent_one_core_tasks_are_bound_to_different_cpus(env):
    """Each of two one-core tasks that run at once is bound to its own CPU, whichever thread started it."""
    m, wd = env
    probe = ("import os, sys, time; open(sys.argv[1] + '.out', 'w').write(repr(sorted(os.sched_getaffinity(0))));"
             "t = time.monotonic() + 30\n"
             "while not os.path.exists(sys.argv[2] + '.out') and time.monotonic() < t: time.sleep(0.01)")
    m.submit(Jobs().add(name="a", exec=sys.executable, args=["-c", probe, "a", "b"])
             .add(name="b", exec=sys.executable, args=["-c", probe, "b", "a"]))
    assert wait(m, ["a", "b"]) == {"a": "SUCCEED", "b": "SUCCEED"}
    a, b = (eval((wd / f"{n}.out").read_text()) for n in "ab")
    assert len(a) == len(b) == 1 and a != b


def test_working_directory_is_created(env):
    m, wd = env
    m.submit(Jobs().add(name="w", exec="/bin/pwd", wd="sub/${jname}", stdout="pwd.out"))
    assert wait(m, ["w"]) == {"w": "SUCCEED"}
    assert (wd / "sub" / "w" / "pwd.out").read_text().strip() == str(wd / "sub" / "w")


def test_a_task_starts_clean(env):
    """What a task inherits from the executor that starts it (in either mode): the signals Python ignores back
    at their defaults, a session of its own, no descriptor but stdin/stdout/stderr, its directory, and its
    job's PATH for a bare program name."""
    m, wd = env
    (wd / "bin").mkdir()
    tool = wd / "bin" / "mytool"
    tool.write_text("#!/bin/sh\necho found\n")
    tool.chmod(0o755)
    probe = "grep -E '^SigIgn' /proc/self/status; awk '{print $6}' /proc/$$/stat; echo $$; ls /proc/$$/fd; pwd"
    m.submit(Jobs().add(name="probe", script=probe, stdout="probe.out")
             .add(name="tool", exec="mytool", env={"PATH": f"{wd / 'bin'}:/usr/bin:/bin"}, stdout="tool.out"))
    assert wait(m, ["probe", "tool"]) == {"probe": "SUCCEED", "tool": "SUCCEED"}
    sig_ign, sid, pid, *fds, cwd = (wd / "probe.out").read_text().splitlines()   # fds: of the shell itself
    ignored = int(sig_ign.split()[1], 16)
    assert not ignored & (1 << (13 - 1)) and not ignored & (1 << (25 - 1))   # SIGPIPE, SIGXFSZ
    assert sid == pid                                                        # a session leader
    assert sorted(fds) == ["0", "1", "2"]
    assert cwd == str(wd)
    assert (wd / "tool.out").read_text() == "found\n"


def test_cancel_queued_and_running(env):
    m, wd = env
    os.mkfifo(wd / "long.pid")   # the task tells its pid through a FIFO: reading it waits for the task to start
    m.submit(Jobs().add(name="long", script="echo $$ > long.pid; exec sleep 60")
             .add(name="blocked", exec="/bin/true", after=["long"]))
    pid = int((wd / "long.pid").read_text())
    pidfd = os.pidfd_open(pid)
    wait_state(m, "long", "EXECUTING")   # starts are reported in batches, within milliseconds
    m.cancel(["long"])
    assert wait(m, ["long", "blocked"]) == {"long": "CANCELED", "blocked": "OMITTED"}
    assert select.select([pidfd], [], [], 30)[0], "the canceled task is still running"


def test_walltime_is_enforced(env):
    m, _ = env
    m.submit(Jobs().add(name="slow", exec="/bin/sleep", args=["30"], wt="1s"))
    assert wait(m, ["slow"]) == {"slow": "FAILED"}
    assert "walltime" in m.info("slow")["message"]


def test_bad_batches_change_nothing(env):
    m, _ = env
    before = m.list()
    with pytest.raises(DependencyError, match="job 'x'.*dependencies.after.*nosuch"):
        m.submit(Jobs().add(name="ok1", exec="/bin/true").add(name="x", exec="/bin/true", after=["nosuch"]))
    with pytest.raises(DependencyError, match="cycle"):
        m.submit(Jobs().add(name="c1", exec="/bin/true", after=["c2"]).add(name="c2", exec="/bin/true", after=["c1"]))
    with pytest.raises(ResourceError, match="numCores"):
        m.submit(Jobs().add(name="huge", exec="/bin/true", numCores=10_000))
    with pytest.raises(DuplicateJobError):
        m.submit([{"name": "d", "execution": {"exec": "/bin/true"}}, {"name": "d", "execution": {"exec": "/bin/true"}}])
    with pytest.raises(JobSpecError, match="job 'u'.*field 'execution.bogus'"):
        m.submit([{"name": "u", "execution": {"exec": "/bin/true", "bogus": 1}}])
    assert m.list() == before
    m.submit(Jobs().add(name="once", exec="/bin/true"))
    with pytest.raises(DuplicateJobError, match="once"):
        m.submit(Jobs().add(name="fresh", exec="/bin/true").add(name="once", exec="/bin/true"))
    assert list(m.list()) == list(before) + ["once"]


def test_dependency_on_finished_jobs(env):
    m, _ = env
    m.submit(Jobs().add(name="done_ok", exec="/bin/true").add(name="done_bad", exec="/bin/false"))
    wait(m, ["done_ok", "done_bad"])
    m.submit(Jobs().add(name="late_ok", exec="/bin/true", after=["done_ok"])
             .add(name="late_bad", exec="/bin/true", after=["done_bad"]))
    assert wait(m, ["late_ok", "late_bad"]) == {"late_ok": "SUCCEED", "late_bad": "OMITTED"}


def test_many_small_jobs_all_finish(env):
    m, _ = env
    jobs = Jobs()
    for i in range(300):
        jobs.add(name=f"t{i}", exec="/bin/true")
    m.submit(jobs)
    states = m.wait4all(timeout=120)
    assert set(states.values()) == {"SUCCEED"} and len(states) == 300


def test_wait_timeout_and_resources(env):
    m, _ = env
    m.submit(Jobs().add(name="sleeper", exec="/bin/sleep", args=["30"]))
    with pytest.raises(QTimeout):
        m.wait4(["sleeper"], timeout=0.3)
    res = m.resources()
    assert res["total_cores"] == CORES and res["total_nodes"] == 1
    m.cancel("sleeper")
    assert wait(m, ["sleeper"]) == {"sleeper": "CANCELED"}


def test_cancel_one_iteration(env):
    m, wd = env
    m.submit(Jobs().add(name="sw", script="while [ ! -e go ]; do sleep 0.05; done", iteration=3)
             .add(name="after_sw", exec="/bin/true", after=["sw"]))
    wait_state(m, "sw:1", "EXECUTING")
    assert m.cancel(["sw:1"]) == {"sw:1": "canceled"}
    (wd / "go").touch()
    assert wait(m, ["sw", "after_sw"]) == {"sw": "FAILED", "after_sw": "OMITTED"}   # as in QCG-PilotJob
    assert [m.info(f"sw:{i}")["state"] for i in range(3)] == ["SUCCEED", "CANCELED", "SUCCEED"]
    assert m.cancel(["sw:1"]) == {"sw:1": "final"}


def test_prefetch_follows_the_rate_of_short_tasks(redis_url, tmp_path):
    """An executor that ends many short tasks claims deeper batches: its prefetch (the placement credit beyond its
    cores) rises from the minimum it registered with."""
    cluster = Cluster(redis_url, tmp_path, namespace="adapt")
    try:
        m = cluster.serving(2)
        (before,) = [int(e["prefetch"]) for e in m.store.executors().values()]
        m.submit(Jobs().add(name="sweep", exec="/bin/true", model="noop", iteration=20_000))
        assert m.wait4(["sweep"], timeout=120) == {"sweep": "SUCCEED"}
        (after,) = [int(e["prefetch"]) for e in m.store.executors().values()]
        assert after > before
    finally:
        cluster.stop()


def test_prefetch_adapts_once_many_short_tasks_ended(redis_url, tmp_path):
    """The look-ahead does not wait out ADAPT_EVERY when several look-aheads' worth of tasks already ended: a fresh
    executor under a burst of short tasks would spend its first tenth of a second in small round trips."""
    ex = Executor(connect(redis_url), [Node("n", (0, 1))], namespace="adapt", root_wd=str(tmp_path))
    ex._adapted_at, ex._ended_since = time.monotonic(), ADAPT_ENDS * ex.prefetch
    assert ex._adapt() == PREFETCH_MAX
    ex._ended_since = 1   # few ended, and soon after: no new rate yet
    assert ex._adapt() is None
    ex._runner.close()


def test_waiting_for_many_jobs_rereads_only_the_oldest_open_ones(redis_url, monkeypatch):
    """A client waiting for N jobs that end in submission order reads, on each wake-up, the oldest jobs still
    open, not all N again: otherwise waiting for a large sweep takes a core from the tasks it waits for."""
    m = Manager(redis_url, namespace="front")
    n, step = 2000, 100
    jobs = Jobs()
    for i in range(n):
        jobs.add(name=f"j{i}", exec="/bin/true")
    names = m.submit(jobs)   # no executor: they stay open until canceled
    reads: list[int] = []
    execute = redis.client.Pipeline.execute

    def counting(pipe, raise_on_error=True):
        reads.append(sum(1 for args, _ in pipe.command_stack if args[0] == "HGET"))
        return execute(pipe, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    ended = 0

    def end_next(done: int, total: int) -> None:   # each wake-up ends the next jobs, in order
        nonlocal ended
        assert done <= ended and total == n
        if ended < n:
            m.cancel(names[ended:ended + step])
            ended += step

    states = m.wait4(names, timeout=120, progress=end_next)
    assert set(states.values()) == {"CANCELED"} and len(states) == n
    # All re-read at each of the n/step wake-ups would be n * (n/step + 1) / 2 = 21,000 reads.
    assert sum(reads) <= 5 * n
