"""On a real Slurm (2 nodes on loopback, started by .ci/run): an executor inside an allocation uses exactly its
nodes and cores, and launches tasks as srun steps on them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qcgpj import Jobs, Manager

from tests.cluster import Cluster
from tests.test_kill import until

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def salloc(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["salloc", "-t", "5", *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def worker_in_salloc(redis_url: str, tmp_path: Path, *salloc_args: str) -> None:
    """An InputQueue, and one worker inside ``salloc ARGS`` that serves until idle; it must exit 0."""
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    try:
        res = salloc(*salloc_args, sys.executable, "-m", "qcgpj", "worker", "--redis-url", redis_url, "--wd",
                     str(tmp_path), "--exit-when-idle", cwd=tmp_path)
        assert res.returncode == 0, res.stderr + cluster.logs()
    finally:
        cluster.stop()


def test_discovery_reads_the_allocation(slurm, tmp_path):
    probe = ("import json; from qcgpj.resources import discover; "
             "print(json.dumps([[n.name, len(n.cores)] for n in discover()]))")
    res = salloc("-N2", "--ntasks-per-node=3", sys.executable, "-c", probe, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [["node1", 3], ["node2", 3]]



def test_workers_started_as_srun_tasks_share_the_allocation(slurm, tmp_path):
    """One worker per srun task (as --processes' error advises inside Slurm) owns its task's share of its node,
    not the whole allocation each (which offered every CPU once per worker and bound their tasks to the same CPUs)."""
    probe = ("import json, os; from qcgpj.resources import discover; "
             "print(os.environ['SLURM_PROCID'], json.dumps([[n.name, list(n.cores)] for n in discover()]))")
    def shares(*srun: str) -> list[str]:
        res = salloc("-N2", "--ntasks-per-node=4", "srun", *srun, sys.executable, "-c", probe, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return [line.split(" ", 1)[1] for line in sorted(res.stdout.splitlines()) if line[:1].isdigit()]
    assert shares("-n3", "-c2") == ['[["node1", [0, 1]]]', '[["node1", [2, 3]]]', '[["node2", [0, 1]]]']
    assert shares("-N2", "-n2") == ['[["node1", [0, 1, 2, 3]]]', '[["node2", [0, 1, 2, 3]]]']
    assert shares("-n1") == ['[["node1", [0, 1, 2, 3]], ["node2", [0, 1, 2, 3]]]']   # one worker: the allocation

def test_worker_in_salloc_uses_both_nodes(slurm, redis_url, tmp_path):
    m = Manager(redis_url)
    m.submit(Jobs()
             .add(name="spread", script="echo $SLURMD_NODENAME $QCGPJ_NODES; sleep 1", iteration=8,
                  stdout="spread.${it}")
             .add(name="wide", script="echo $SLURMD_NODENAME ${nlist}", model="srunmpi", numNodes=2, numCores=1,
                  stdout="wide.out")
             .add(name="omp", exec="/bin/sh", args=["-c", "echo $OMP_NUM_THREADS $OMP_PROC_BIND"], model="threads",
                  numCores=2,
                  stdout="omp.out"))
    worker_in_salloc(redis_url, tmp_path, "-N2", "--ntasks-per-node=2")
    assert m.status(["spread", "wide", "omp"]) == {"spread": "SUCCEED", "wide": "SUCCEED", "omp": "SUCCEED"}
    used = {(tmp_path / f"spread.{i}").read_text().split()[0] for i in range(8)}
    assert used == {"node1", "node2"}                       # 4 cores over 2 nodes: both were needed
    ranks = sorted(line.split()[0] for line in (tmp_path / "wide.out").read_text().splitlines())
    assert ranks == ["node1", "node2"]                      # the 2-node job saw both nodes
    assert (tmp_path / "wide.out").read_text().split()[1] == "node1,node2"
    assert (tmp_path / "omp.out").read_text().strip() == "2 true"   # OpenMP's threads bound, as outside Slurm
    executor = next(iter(m.resources(departed=True)["executors"].values()))
    assert executor["nodes"] == "node1=2;node2=2" and executor["state"] == "LEFT"


def test_two_allocations_share_one_queue(slurm, redis_url, tmp_path):
    m = Manager(redis_url)
    m.submit(Jobs().add(name="work", script="echo $SLURMD_NODENAME $SLURM_JOB_ID; sleep 2", iteration=8,
                        stdout="work.${it}"))
    workers = [subprocess.Popen(["salloc", "-t", "5", "-N1", f"--nodelist={node}", "--ntasks-per-node=2",
                                 sys.executable, "-m", "qcgpj", "worker", "--redis-url", redis_url, "--wd",
                                 str(tmp_path), "--exit-when-idle", "--prefetch", "0"],
                                cwd=tmp_path, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for node in ("node1", "node2")]
    outputs = [w.communicate(timeout=180)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert m.status(["work"]) == {"work": "SUCCEED"}
    seen = {tuple((tmp_path / f"work.{i}").read_text().split()) for i in range(8)}
    assert {node for node, _job in seen} == {"node1", "node2"}
    assert len({job for _node, job in seen}) == 2                 # two allocations, two Slurm jobs
    assert len(m.resources(departed=True)["executors"]) == 2      # both left when idle


def test_steps_are_bound_to_the_cores_qcgpj_chose(slurm, redis_url, tmp_path):
    """Slurm gives concurrent one-CPU --overlap steps the same first CPU; each task must get its own instead."""
    show = f"{sys.executable} -c 'import os; print(os.environ[\"SLURM_LOCALID\"], sorted(os.sched_getaffinity(0)))'"
    m = Manager(redis_url)
    m.submit(Jobs()
             .add(name="one", script=f"echo $QCGPJ_CORES $({show})", iteration=2, stdout="one.${it}",
                  stderr="one.${it}.err")
             .add(name="ranks", script=show, model="srunmpi", numCores=2, stdout="ranks.out"))
    worker_in_salloc(redis_url, tmp_path, "-N1", "--nodelist=node1", "--ntasks-per-node=2")
    assert m.status(["one", "ranks"]) == {"one": "SUCCEED", "ranks": "SUCCEED"}
    cpus = sorted(os.sched_getaffinity(0))
    for i in range(2):    # QCGPJ_CORES: the CPU the task was bound to, one of the allocation's on node1
        bound_to, _rank, cpu_list = (tmp_path / f"one.{i}").read_text().split(maxsplit=2)
        assert cpu_list.strip() == f"[{bound_to}]" and int(bound_to) in cpus
        assert (tmp_path / f"one.{i}.err").read_text() == ""   # no --cpu-bind warning where Slurm cannot bind
    ranks = sorted(line.split(maxsplit=1) for line in (tmp_path / "ranks.out").read_text().splitlines())
    assert ranks == [[str(r), str([cpus[r % len(cpus)]])] for r in range(2)]


def test_tasks_killed_by_the_end_of_an_allocation_run_again_elsewhere(slurm, redis_url, tmp_path):
    """scancel (or the time limit) kills the allocation's steps with the worker: the tasks it ran were not failures
    of their own, so they go back to the queue and finish in the next allocation, instead of ending FAILED.
    Slurm signals the tasks and the worker at once, and a task's end may reach the executor before its own signal
    does: here one task is killed a moment before the scancel, and it is given back all the same."""
    from tests.cluster import process_ended
    m = Manager(redis_url)
    m.submit(Jobs().add(name="long", script="echo $$ > pid.${it}; echo $SLURM_JOB_ID >> ran.${it}; "
                        "[ -e go ] || exec sleep 600", iteration=2, stdout="long.${it}"))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    worker = [sys.executable, "-m", "qcgpj", "worker", "--redis-url", redis_url, "--wd", str(tmp_path),
              "--exit-when-idle"]
    first = subprocess.run(["sbatch", "--parsable", "-t", "5", "-N1", "--nodelist=node1", "--ntasks-per-node=2",
                            "-o", str(tmp_path / "first.out"), "--wrap", " ".join(worker)],
                           cwd=tmp_path, env=env(), capture_output=True, text=True, check=True).stdout.strip()
    try:
        until(lambda: all((tmp_path / f"ran.{i}").exists() for i in range(2)), 120, "both tasks running")
        (tmp_path / "go").touch()
        first_pid = int((tmp_path / "pid.0").read_text())
        os.kill(first_pid, signal.SIGTERM)
        assert process_ended(first_pid)
        until(lambda: not Path(f"/proc/{first_pid}").exists(), 60, "the executor reaped the task")
        subprocess.run(["scancel", first], check=True)
        res = salloc("-N1", "--nodelist=node2", "--ntasks-per-node=2", *worker, cwd=tmp_path)
        assert res.returncode == 0, res.stderr + cluster.logs()
    finally:
        subprocess.run(["scancel", first])
        cluster.stop()
    log = (tmp_path / "first.out").read_text()
    assert m.status(["long"]) == {"long": "SUCCEED"}, log + cluster.logs()
    for i in range(2):
        ran = (tmp_path / f"ran.{i}").read_text().split()
        assert len(ran) == 2 and ran[0] == first and ran[1] != first, ran   # once in each allocation
        assert m.info(f"long:{i}")["attempt"] == 1
    # The executor got SIGTERM twice (Slurm signals its supervisor too, which passes it on): it still handed back
    # as it left, instead of staying ALIVE until its heartbeat expired and being declared DEAD
    states = {e["slurm_job"]: e["state"] for e in m.store.executors(departed=True).values()}
    assert states[first] == "LEFT", states
    assert "task(s) ended with the allocation; they go back to the queue" in log, log


def test_the_steps_of_a_killed_executor_end_with_it(slurm, redis_url, tmp_path):
    """SIGKILL to the executor inside an allocation that goes on (other workers' srun tasks, a script with more to
    do): its supervisor SIGKILLed the orphaned srun processes, but a SIGKILLed srun leaves its step running on
    the node, so the task ran on while the queue, once the heartbeat expired, gave it to another executor. The
    supervisor now has each srun cancel its step (SIGTERM) and waits for it before killing what is left."""
    from tests.cluster import process_ended
    from tests.test_supervisor import gated_jobs, killed_lines, read_pid
    m = Manager(redis_url)
    m.submit(gated_jobs(tmp_path, "t"))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    worker = [sys.executable, "-m", "qcgpj", "worker", "--redis-url", redis_url, "--wd", str(tmp_path),
              "--ttl", "2", "--heartbeat", "0.5"]
    job = subprocess.run(["sbatch", "--parsable", "-t", "5", "-N1", "--nodelist=node1", "--ntasks-per-node=2",
                          "-o", str(tmp_path / "worker.out"), "--wrap", " ".join(worker) + "; exec sleep 300"],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, check=True).stdout.strip()
    try:
        task = read_pid(tmp_path / "t.fifo", timeout=120)
        (executor,) = m.store.executors().values()
        os.kill(int(executor["pid"]), signal.SIGKILL)
        assert process_ended(task), "the killed executor's task runs on in its step"
        until(lambda: killed_lines(tmp_path / "worker.out"), 60, "the supervisor's line")
        (line,) = killed_lines(tmp_path / "worker.out")
        assert "killed 1 task process(es) it left running" in line, line
        steps = subprocess.run(["squeue", "-h", "-s", "-j", job, "-o", "%i"], capture_output=True, text=True)
        assert steps.stdout.split() == [f"{job}.batch"], steps.stdout   # the allocation goes on, the step is gone
    finally:
        (tmp_path / "go").touch()
        subprocess.run(["scancel", job])
        cluster.stop()


def test_a_task_that_needs_more_of_a_node_than_uneven_nodes_have_fails_saying_why(slurm, redis_url, tmp_path):
    """`salloc -N2 -n4` gives 3 cores on node1 and 1 on node2. Placement knows an executor's node count and
    largest node only, so a part of 2 cores on each of 2 nodes went to this executor, which held it SCHEDULED for
    ever, with no message, and its --exit-when-idle worker never left (the allocation was held to its time limit).
    It now ends FAILED at once with a message giving the nodes, and the other parts run."""
    m = Manager(redis_url)
    m.submit(Jobs()
             .add(name="wide", script="true", model="srunmpi", numNodes=2, numCores=2)
             .add(name="small", script="true", iteration=3))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    worker = [sys.executable, "-m", "qcgpj", "worker", "--redis-url", redis_url, "--wd", str(tmp_path),
              "--exit-when-idle"]
    job = subprocess.run(["sbatch", "--parsable", "-t", "5", "-N2", "-n4", "-o", str(tmp_path / "worker.out"),
                          "--wrap", " ".join(worker)], cwd=tmp_path, env=env(), capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        m.wait4(["wide", "small"], timeout=60)
    finally:
        subprocess.run(["scancel", job])
        cluster.stop()
    assert m.status(["wide", "small"]) == {"wide": "FAILED", "small": "SUCCEED"}
    message = m.info("wide")["message"]
    assert "needs 2 node(s) of 2 core(s)" in message and "node1 3 core(s), node2 1 core(s)" in message, message


def test_steps_do_not_take_the_allocations_layout_as_their_own(slurm, redis_url, tmp_path):
    """`salloc --ntasks-per-node=2 -c 2` puts SLURM_NTASKS_PER_NODE and SLURM_CPUS_PER_TASK in the worker's
    environment: every srun step took the first as an option (a task of 3 ranks on a node had `srun: Warning:
    can't honor --ntasks-per-node set to 2` in its stderr) and every task saw the second as its own (2 for a part of
    3 cores, 2 for each single-core rank: `OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK` oversubscribed the rank's core).
    A step now gets neither from the allocation, and SLURM_CPUS_PER_TASK is each rank's cores."""
    show = "echo ${SLURM_CPUS_PER_TASK:-unset} ${SLURM_NTASKS_PER_NODE:-unset}"
    m = Manager(redis_url)
    m.submit(Jobs()
             .add(name="ranks", script=show, model="srunmpi", numNodes=2, numCores=3, stdout="ranks.out",
                  stderr="ranks.err")
             .add(name="one", script=show, numCores=3, stdout="one.out", stderr="one.err")
             .add(name="omp", script=show, model="threads", numCores=4, stdout="omp.out", stderr="omp.err"))
    worker_in_salloc(redis_url, tmp_path, "-N2", "--ntasks-per-node=2", "-c2")
    assert m.status(["ranks", "one", "omp"]) == {"ranks": "SUCCEED", "one": "SUCCEED", "omp": "SUCCEED"}
    assert (tmp_path / "ranks.out").read_text().splitlines() == ["1 unset"] * 6
    assert (tmp_path / "one.out").read_text() == "3 unset\n"
    assert (tmp_path / "omp.out").read_text() == "4 unset\n"
    for name in ("ranks", "one", "omp"):
        assert (tmp_path / f"{name}.err").read_text() == "", name


def test_tasks_may_start_steps_of_their_own_side_by_side(slurm, redis_url, tmp_path):
    """A part that starts its own srun step (a script's `srun app`; mpirun of openmpi and intelmpi starts its
    daemons so) asked Slurm for the CPUs of its nodes without --overlap: two such parts on a node ran one after
    the other, the second's srun waiting ('step creation temporarily disabled') for the first's step to end, here
    until both were killed at their walltime. Tasks inside an allocation now get SLURM_OVERLAP=1."""
    both = ("touch ${jname}.${it}; "   # all four at once, or none ends
            "until [ -e inner.0 ] && [ -e inner.1 ] && [ -e mpi.0 ] && [ -e mpi.1 ]; do sleep 0.05; done")
    mpirun = tmp_path / "mpirun"   # as Open MPI's: its daemons are one srun step on the task's nodes
    mpirun.write_text('#!/bin/sh\nshift 4\nexec srun -n1 "$@"\n')   # (drops --host H -np N)
    mpirun.chmod(0o755)
    m = Manager(redis_url)
    m.submit(Jobs()
             .add(name="inner", exec="srun", args=["-n1", "/bin/sh", "-c", both], iteration=2, wt="20s",
                  stderr="inner.${it}.err")
             .add(name="mpi", exec="/bin/sh", args=["-c", both], model="openmpi", model_opts={"mpirun": str(mpirun)},
                  iteration=2, wt="20s", stderr="mpi.${it}.err"))
    worker_in_salloc(redis_url, tmp_path, "-N1", "--nodelist=node1", "--ntasks-per-node=4")
    errors = [(tmp_path / f"{job}.{i}.err").read_text() for job in ("inner", "mpi") for i in range(2)]
    assert m.status(["inner", "mpi"]) == {"inner": "SUCCEED", "mpi": "SUCCEED"}, errors


def test_a_range_of_cores_is_not_spread_over_nodes_its_process_cannot_use(slurm, redis_url, tmp_path):
    """numCores {min: 2, max: 6} on nodes of 4 cores: placement gave the part 6 cores, 2 on node1 and 4 on node2;
    its one process ran on node1, bound to 2 CPUs and told QCGPJ_NCORES=6 (3 threads a CPU), while 4 cores of node2
    stood idle, held. A range whose min fits one node now gets at most one node's cores."""
    m = Manager(redis_url)
    m.submit(Jobs().add(name="range", script="echo $QCGPJ_NCORES $QCGPJ_NODES", numCores={"min": 2, "max": 6},
                        stdout="range.out"))
    worker_in_salloc(redis_url, tmp_path, "-N2", "--ntasks-per-node=4")
    assert m.status(["range"]) == {"range": "SUCCEED"}
    ncores, nodes = (tmp_path / "range.out").read_text().split()
    assert (ncores, nodes.count(",")) == ("4", 0), (ncores, nodes)


def test_a_one_process_part_larger_than_a_node_runs_where_most_of_its_cores_are(slurm, redis_url, tmp_path):
    """6 cores on nodes of 4 while node1 has 2 free: the part got 2 cores on node1 and 4 on node2, and its one
    process ran on node1 (the first in node order), bound to 2 CPUs with OMP_NUM_THREADS=2, 4 cores idle. It now
    runs on the node with the most of its cores."""
    m = Manager(redis_url)
    m.submit(Jobs()
             .add(name="hold", script="until [ -e go ]; do sleep 0.05; done", numCores=2)
             .add(name="omp", script="echo $SLURMD_NODENAME $OMP_NUM_THREADS; touch go", model="threads",
                  numCores=6, stdout="omp.out"))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    try:
        res = salloc("-N2", "--ntasks-per-node=4", sys.executable, "-m", "qcgpj", "worker", "--redis-url",
                     redis_url, "--wd", str(tmp_path), "--exit-when-idle", cwd=tmp_path)
        assert res.returncode == 0, res.stderr + cluster.logs()
    finally:
        (tmp_path / "go").touch()
        cluster.stop()
    assert m.status(["hold", "omp"]) == {"hold": "SUCCEED", "omp": "SUCCEED"}
    node, threads = (tmp_path / "omp.out").read_text().split()
    assert (node, threads) == ("node2", "4"), m.info("omp")["nodes"]
