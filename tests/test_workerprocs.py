"""``qcgpj-worker --processes N``: one node's cores served by N executor processes, each bound to its CPUs."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from qcgpj import Jobs
from qcgpj.errors import QcgpjError
from qcgpj.resources import Node
from qcgpj.workerprocs import split

from tests.cluster import Cluster, process_ended, qcgpj_cmd
from tests.test_behaviour import wait_state


def test_shares_are_contiguous_and_as_even_as_can_be():
    shares = split([Node("n0", (0, 1, 2, 3, 4), mem=512)], 2, [4, 5, 6])
    assert shares == [(Node("n0", (0, 1, 2), mem=512), frozenset({4, 5})), (Node("n0", (3, 4), mem=512), frozenset({6}))]


@pytest.mark.parametrize("nodes, n, cpus, what", [
    ([Node("a", (0, 1)), Node("b", (0, 1))], 2, [0, 1], "one node"),
    ([Node("a", (0, 1), gpus=("0",))], 2, [0, 1], "GPUs"),
    ([Node("a", (0, 1))], 3, [0, 1, 2], "more processes than cores"),
    ([Node("a", (0, 1, 2))], 3, [0, 1], "more processes than cores (3) or CPUs (2)"),
    ([Node("a", (0, 1))], 2, [0, 1], "not inside a Slurm allocation"),
])
def test_what_cannot_be_split_is_refused(nodes, n, cpus, what):
    with pytest.raises(QcgpjError) as err:
        split(nodes, n, cpus, in_slurm="Slurm" in what)
    assert str(err.value).startswith(f"--processes {n}: ") and what in str(err.value)


def _cpus_allowed(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith("Cpus_allowed_list"))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_two_processes_serve_the_queue_each_on_its_own_cpu_and_stop_together(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        cpus = sorted(os.sched_getaffinity(0))[:2]
        parent = c.worker(2, "--processes", "2", "--id", "pw")
        m = c.manager()
        c.wait_executors(m, 2)
        execs = m.store.executors()
        assert sorted(execs) == ["pw-0", "pw-1"], c.logs()
        assert [execs[e]["total"] for e in ("pw-0", "pw-1")] == ["1", "1"]
        # each is a process of its own, bound to its share of the CPUs
        pids = [int(execs[e]["pid"]) for e in ("pw-0", "pw-1")]
        assert len(set(pids) | {parent.pid}) == 3
        assert [_cpus_allowed(p) for p in pids] == [str(cpus[0]), str(cpus[1])]
        shown = subprocess.run(qcgpj_cmd("resources", "--redis-url", redis_url), capture_output=True, text=True,
                               env=c.env).stdout
        assert all(f"\tpid {pid}\t" in shown for pid in pids), shown   # the executors', not the command's
        names = m.submit(Jobs().add(name="sweep", exec="/bin/true", iteration=200))
        assert m.wait4(names, timeout=120) == {"sweep": "SUCCEED"}, c.logs()
        ran_on = {m.info(f"sweep:{i}")["executor"] for i in range(200)}
        assert ran_on <= {"pw-0", "pw-1"}
        # SIGTERM to the command reaches both executors, which drain and leave; it exits with them
        parent.terminate()
        assert parent.wait(timeout=60) == 0, c.logs()
        states = {e: v["state"] for e, v in m.store.executors(departed=True).items()}
        assert states == {"pw-0": "LEFT", "pw-1": "LEFT"}, c.logs()
        assert "Traceback" not in c.logs()
    finally:
        c.stop()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not hasattr(os, "pidfd_open"), reason="needs 2 CPUs, pidfds")
def test_a_killed_command_s_executors_finish_what_runs_and_leave(redis_url, tmp_path):
    """SIGKILL to the command (a batch system, a timeout) cannot be passed on: each executor gets SIGTERM through
    the parent-death signal, lets its running task finish, reports it and leaves, rather than serving on."""
    c, pids = Cluster(redis_url, tmp_path), []
    try:
        c.inputqueue()
        parent = c.worker(2, "--processes", "2", "--id", "pk")
        m = c.manager()
        c.wait_executors(m, 2)
        pids += [int(v["pid"]) for v in m.store.executors().values()]
        gate = tmp_path / "go"
        m.submit(Jobs().add(name="long", script=f"while [ ! -e {gate} ]; do sleep 0.05; done"))
        wait_state(m, "long", "EXECUTING")
        parent.kill()
        parent.wait(timeout=10)
        gate.touch()
        assert m.wait4(["long"], timeout=60) == {"long": "SUCCEED"}, c.logs()
        assert all(process_ended(pid, 60) for pid in pids), c.logs()
        states = {e: v["state"] for e, v in m.store.executors(departed=True).items()}
        assert states == {"pk-0": "LEFT", "pk-1": "LEFT"}, c.logs()
        assert "Traceback" not in c.logs()
    finally:
        c.stop()
        for pid in pids:   # the command's stop cannot reach them: on a failure, nothing is left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("extra, said", [
    (["--processes", "3"], "--processes 3: more processes than cores (2)"),
    (["--processes", "2", "--id", "x" * 127], "invalid executor id 'xxx"),   # its processes' ids would be too long
])
def test_bad_processes_is_one_line_and_starts_nothing(redis_url, tmp_path, extra, said):
    res = subprocess.run(qcgpj_cmd("worker", "--redis-url", redis_url, "--cores", "2", *extra),
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert said in res.stderr.strip().splitlines()[-1]
    from qcgpj import Manager
    assert Manager(redis_url).store.executors(departed=True) == {}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_bench_runs_its_worker_as_two_processes(redis_url, tmp_path):
    import json
    res = subprocess.run(qcgpj_cmd("bench", "--redis-url", redis_url, "-w", "tasks", "--tasks", "40",
                                   "--worker-processes", "2", "--json"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["extra"]["succeeded"] == 40 and row["extra"]["executors"] == 2
    assert {"executor_cpu_us", "tasks_cpu_us", "idle_cpu_us"} <= set(row["extra"]), row


def test_the_cpu_of_several_processes_is_counted_as_one():
    from qcgpj.benchcpu import _total, proc_cpu
    me, parent = proc_cpu(os.getpid()), proc_cpu(os.getppid())
    both = _total(proc_cpu, [os.getpid(), os.getppid()])
    assert both is not None and both >= me and both >= parent
    assert _total(proc_cpu, [os.getpid(), 2 ** 22 + 1]) is None   # one that cannot be read: no figure
