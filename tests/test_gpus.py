"""GPUs and other consumable resources (``resources.nodeCrs``): detection, declaration, placement, local
allocation, the task's environment and srun's options. No GPU on these machines: executors declare them."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from rich.console import Console

from qcgpj import Jobs
from qcgpj.errors import JobSpecError
from qcgpj.gpus import detect_gpus, parse_mem
from qcgpj.jobspec import JobSpec, parse_job
from qcgpj.top import render, snapshot
from qcgpj.resources import Allocation, CoreAllocator, Node, discover, parse_nodes_option
from qcgpj.workers.base import TaskContext
from qcgpj.workers.slurm import SrunMpiWorker, SrunWorker
from tests.cluster import REPO, credit, kill_executor, qcgpj_cmd
from tests.test_reliability import wait_for


# ---------------------------------------------------------------------- detection and declaration
@pytest.mark.parametrize("env, ids", [
    ({"CUDA_VISIBLE_DEVICES": "0,2"}, ("0", "2")),
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, ("GPU-aa", "GPU-bb")),
    ({"CUDA_VISIBLE_DEVICES": ""}, ()),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles", "SLURM_JOB_GPUS": "0,1"}, ()),   # Slurm: none for this step
    ({"CUDA_VISIBLE_DEVICES": "1", "SLURM_JOB_GPUS": "0,1"}, ("1",)),       # what this process may use wins
    ({"SLURM_STEP_GPUS": "1,3", "SLURM_JOB_GPUS": "0,1,2,3"}, ("1", "3")),
    ({"SLURM_JOB_GPUS": "4,5"}, ("4", "5")),
    ({"SLURM_GPUS_ON_NODE": "3"}, ("0", "1", "2")),
    ({"SLURM_GPUS_ON_NODE": "x"}, ()),
    ({}, ()),
])
def test_gpus_are_detected_from_the_environment(env, ids):
    assert detect_gpus(env, smi=False) == ids


def test_nvidia_smi_is_read_when_present_and_its_absence_is_quiet(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus({}) == ()   # no nvidia-smi on PATH: no GPUs, nothing logged above debug
    assert not [r for r in caplog.records if r.levelno > 10]
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Tesla V100 (UUID: GPU-1)'\necho 'GPU 1: Tesla V100 (UUID: GPU-2)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    assert detect_gpus({}) == ("0", "1")
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "1"}) == ("1",)


def test_nodes_option_takes_gpus_per_node():
    nodes = parse_nodes_option("n1:32:4,n2:8")
    assert [(n.name, len(n.cores), n.gpus) for n in nodes] == [("n1", 32, ("0", "1", "2", "3")), ("n2", 8, ())]


@pytest.mark.parametrize("text, words", [
    ("n1:32:x", "GPUs of 'n1' must be a non-negative integer"),
    ("n1:32:-1", "GPUs of 'n1' must be a non-negative integer"),
    ("n1:32:4:1", "expected NAME:CORES or NAME:CORES:GPUS"),
    ("n1::4", "expected NAME:CORES or NAME:CORES:GPUS"),
    (":4:1", "expected NAME:CORES or NAME:CORES:GPUS"),
    ("n0", "expected NAME:CORES or NAME:CORES:GPUS"),   # was Python's own 'not enough values to unpack'
])
def test_nodes_option_errors(text, words):
    with pytest.raises(ValueError, match=words):
        parse_nodes_option(text)


def test_worker_options_declare_gpus_and_memory():
    assert [n.gpus for n in discover(nodes="a:2,b:2", gpus=2, environ={})] == [("0", "1")] * 2
    assert [n.mem for n in discover(nodes="a:2", mem=4096, environ={})] == [4096]
    assert discover(nodes="a:2", environ={"CUDA_VISIBLE_DEVICES": "3"})[0].gpus == ("3",)
    with pytest.raises(ValueError, match="give one of them"):
        discover(nodes="a:2:1", gpus=2, environ={})


def test_gpus_are_declared_by_workers_not_by_a_client_of_a_queue(redis_url, tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"name": "a", "execution": {"exec": "/bin/true"}}]))
    res = subprocess.run(qcgpj_cmd("run", "x.json", "--redis-url", redis_url, "--gpus", "1"), capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp_path)
    assert res.returncode == 1 and "declared by the workers" in res.stderr, res.stderr


def test_worker_cli_refuses_a_bad_nodes_or_mem_option_in_one_line():
    for args, words in ((["--nodes", "n1:4:x"], "GPUs of 'n1'"), (["--mem", "lots"], "memory size")):
        res = subprocess.run(qcgpj_cmd("worker", "--redis-url", "redis://127.0.0.1:1", *args), capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert res.returncode != 0 and words in res.stderr, res.stderr


@pytest.mark.parametrize("text, mib", [(4096, 4096), ("4096", 4096), ("4G", 4096), ("512MiB", 512),
                                       ("1.5g", 1536), ("1T", 1 << 20)])
def test_memory_sizes(text, mib):
    assert parse_mem(text) == mib


# ---------------------------------------------------------------------- the job format
def test_node_crs_is_parsed_stored_and_read_back():
    for crs in ({"gpu": 2, "mem": "1G"}, {"gpus": 2, "mem": 1024}):
        spec = parse_job({"name": "j", "execution": {"exec": "x"}, "resources": {"nodeCrs": crs}})
        assert (spec.gpus, spec.mem) == (2, 1024)
        assert json.loads(spec.to_json())["resources"]["nodeCrs"] == {"gpu": 2, "mem": 1024}
        assert JobSpec.from_json(spec.to_json()) == spec
    assert "nodeCrs" not in parse_job({"name": "j", "execution": {"exec": "x"},
                                       "resources": {"nodeCrs": {"gpu": 0}}}).to_json()
    with pytest.raises(JobSpecError, match="job 'k', field 'resources.nodeCrs.gpu'"):
        Jobs().add(name="k", exec="x", nodeCrs={"gpu": -2})


# ---------------------------------------------------------------------- local allocation
def test_allocator_hands_out_distinct_gpus_and_takes_them_back():
    al = CoreAllocator([Node("a", tuple(range(4)), ("0", "1")), Node("b", tuple(range(4)))])
    one = al.allocate(1, None, 1)
    two = al.allocate(1, None, 1)
    assert one.gpus == (("a", ("0",)),) and two.gpus == (("a", ("1",)),)
    assert al.allocate(1, None, 1) is None            # node a's GPUs are taken; b has none
    plain = al.allocate(1)
    assert plain is not None and plain.gpus == ()     # a task without GPUs still gets cores
    al.release(two)
    assert al.allocate(1, None, 1).gpus == (("a", ("1",)),)
    al.release(one)
    assert al.allocate(1, None, 2) is None            # only one free now
    assert al.gpus_free == 1


def test_allocator_gives_gpus_on_every_node_of_a_multi_node_task():
    al = CoreAllocator([Node(n, tuple(range(2)), ("0", "1")) for n in ("a", "b", "c")])
    alloc = al.allocate(4, 2, 2)
    assert alloc.nnodes == 2 and alloc.ncores == 4 and all(ids == ("0", "1") for _n, ids in alloc.gpus)
    assert al.allocate(2, 2, 1) is None               # one node with free GPUs left
    assert al.allocate(2, None, 3) is None            # more than a node has


# ---------------------------------------------------------------------- srun steps
def _ctx(alloc: Allocation) -> TaskContext:
    return TaskContext("t", "t", None, ["/bin/true"], {}, "/tmp", None, None, None, alloc, local_node="n1")


def test_srun_steps_ask_slurm_for_the_task_gpus():
    gpu = Allocation((("n1", (0, 1)),), (("n1", ("2", "3")),))
    assert "--gpus-per-node=2" in SrunWorker().command(_ctx(gpu))
    mpi = Allocation((("n1", (0,)), ("n2", (0,))), (("n1", ("0",)), ("n2", ("0",))))
    assert "--gpus-per-node=1" in SrunMpiWorker().command(_ctx(mpi))
    assert not any(a.startswith("--gpus") for a in SrunWorker().command(_ctx(Allocation((("n1", (0,)),)))))


# ---------------------------------------------------------------------- on a queue
GPU_SCRIPT = (  # each GPU id is a lock directory while the task holds it: a second holder would fail mkdir
    'for g in $(echo "$CUDA_VISIBLE_DEVICES" | tr , " "); do mkdir "locks/$g" || echo "SHARED $g" >> shared; done; '
    'echo "$QCGPJ_TASK $CUDA_VISIBLE_DEVICES $QCGPJ_GPUS" >> seen; sleep 0.3; '
    'for g in $(echo "$CUDA_VISIBLE_DEVICES" | tr , " "); do rmdir "locks/$g"; done')


def test_gpu_tasks_go_only_where_gpus_are_free_and_never_share_one(cluster, tmp_path):
    (tmp_path / "locks").mkdir()
    cluster.inputqueue()
    cluster.worker(2, "--gpus", "2", "--id", "gpu-worker", name="gpu-worker")
    cluster.worker(2, "--id", "cpu-worker", name="cpu-worker")
    m = cluster.manager()
    cluster.wait_executors(m, 2)
    res = m.resources()
    assert (res["total_gpus"], res["executors"]["gpu-worker"]["gpus"], res["executors"]["cpu-worker"]["gpus"]) == \
        (2, 2, 0)
    shown = subprocess.run(qcgpj_cmd("resources", "--redis-url", cluster.url), capture_output=True, text=True,
                           env=cluster.env).stdout
    assert "gpus 2  used 0" in shown and "gpus 2\tnodes" in shown, shown
    # A task holding both GPUs until canceled: the others can only run once the cancel gave them back.
    m.submit(Jobs().add(name="hog", script="sleep 600", nodeCrs={"gpu": 2}, model_opts={"cpu_bind": False}))
    wait_for(m, lambda: m.status("hog")["hog"] == "EXECUTING", what="hog running")
    snap = snapshot(m.store)   # what `qcgpj top` shows
    assert {e["id"]: (e["gpus_busy"], e["gpus"]) for e in snap["executors"]} == \
        {"gpu-worker": (2, 2), "cpu-worker": (0, 0)}
    console = Console(record=True, width=200)
    console.print(render(snap))
    assert "gpus busy" in console.export_text()
    jobs = Jobs()
    for i in range(4):
        jobs.add(name=f"g{i}", script=GPU_SCRIPT, nodeCrs={"gpu": 1}, model_opts={"cpu_bind": False})
    jobs.add(name="sweep", script=GPU_SCRIPT, iteration=4, nodeCrs={"gpus": 1}, model_opts={"cpu_bind": False})
    jobs.add(name="pair", script=GPU_SCRIPT, nodeCrs={"gpu": 2}, model_opts={"cpu_bind": False})
    # killed at its walltime while holding both GPUs: its kill gives them back too
    jobs.add(name="slow", script="sleep 600", wt="1s", nodeCrs={"gpu": 2}, model_opts={"cpu_bind": False})
    for i in range(4):
        jobs.add(name=f"c{i}", exec="/bin/true")
    names = m.submit(jobs)
    m.cancel("hog")
    states = m.wait4(names, timeout=120)
    assert states.pop("slow") == "FAILED" and "walltime" in m.info("slow")["message"]
    assert set(states.values()) == {"SUCCEED"}, cluster.logs()
    assert m.wait4("hog")["hog"] == "CANCELED"
    assert not (tmp_path / "shared").exists(), (tmp_path / "shared").read_text()
    seen = [line.split() for line in (tmp_path / "seen").read_text().splitlines()]
    assert len(seen) == 9   # g0-g3, four iterations, pair: each recorded once, with what it was given
    for task, visible, ours in seen:
        assert visible == ours and visible in ({"0", "1"} if task != "pair" else {"0,1"}), seen
        info = m.info(task)
        assert info.get("executor") == "gpu-worker", (task, info)
    assert {v for _t, v, _o in seen} >= {"0", "1"}   # 8 one-GPU tasks on 2 GPUs: both used, and reused
    assert {e["gfree"] for e in m.store.executors().values()} == {"2", "0"}
    held = credit(m)
    assert set(held) == {"gpu-worker", "cpu-worker"} and all(f == t for f, t in held.values()), held


def test_a_gpu_job_no_live_executor_has_is_flagged_then_failed(cluster):
    cluster.inputqueue("--unplaceable-timeout", "2")
    m = cluster.manager()
    m.submit(Jobs().add(name="needs-gpu", exec="/bin/true", nodeCrs={"gpu": 1})
             .add(name="needs-mem", exec="/bin/true", nodeCrs={"mem": "1T"})
             .add(name="plain", exec="/bin/true"))
    cluster.worker(2, "--mem", "4G")
    wait_for(m, lambda: "unplaceable" in m.info("needs-gpu"), what="needs-gpu flagged")
    assert "1 GPU(s) each; the live executors have at most 0 GPU(s)" in m.info("needs-gpu")["message"]
    states = m.wait4(["needs-gpu", "needs-mem", "plain"], timeout=120)
    assert states == {"needs-gpu": "FAILED", "needs-mem": "FAILED", "plain": "SUCCEED"}
    assert "no live executor could run it for 2 s" in m.info("needs-mem")["message"]
    assert "1048576 MiB each" in m.info("needs-mem")["message"]


# ---------------------------------------------------------------------- QCG-PilotJob's env-gpu example
ENV_GPU = [{"request": "submit", "jobs": [{
    "name": "env_${rcnt}", "execution": {"exec": "/bin/env", "stdout": "env.stdout", "stderr": "env.stderr"},
    "resources": {"numCores": 1, "nodeCrs": {"gpu": 1}}}]},
    {"request": "control", "command": "finishAfterAllTasksDone"}]


def test_the_env_gpu_example_runs_in_local_mode_when_gpus_are_declared(tmp_path):
    (tmp_path / "env-gpu.json").write_text(json.dumps(ENV_GPU))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "SLURM_"))}
    env["PYTHONPATH"] = str(REPO)
    run = [sys.executable, "-m", "qcgpj", "run", "env-gpu.json", "--no-progress", "--store", "fakeredis"]
    res = subprocess.run([*run, "--gpus", "2"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    out = (tmp_path / "env.stdout").read_text().splitlines()
    assert "CUDA_VISIBLE_DEVICES=0" in out and "QCGPJ_GPUS=0" in out
    res = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0
    assert "job 'env_1', field 'resources.nodeCrs.gpu'" in res.stderr + res.stdout


def test_the_gpu_tasks_of_a_lost_executor_run_elsewhere_with_gpus_of_their_own(cluster, tmp_path):
    cluster.inputqueue()
    lost = cluster.worker(2, "--gpus", "1", "--ttl", "2", "--heartbeat", "0.5", "--id", "lost", name="lost")
    m = cluster.manager()
    cluster.wait_executors(m)
    # The first attempt hangs (its executor's death ends it); the retry records the GPU it got.
    script = ('if [ -e first ]; then echo "$QCGPJ_GPUS" > second; else echo $$ > first; exec sleep 600; fi')
    m.submit(Jobs().add(name="held", script=script, nodeCrs={"gpu": 1}, model_opts={"cpu_bind": False})
             .add(name="queued", script="echo $QCGPJ_GPUS > queued.out", nodeCrs={"gpu": 1}))
    first = tmp_path / "first"   # its first attempt wrote its pid (EXECUTING may be reported before that)
    wait_for(m, lambda: first.exists() and first.read_text().strip() != "", what="held running")
    kill_executor(m, lost)
    try:
        cluster.worker(2, "--gpus", "1", "--id", "heir", name="heir")
        states = m.wait4(["held", "queued"], timeout=90)
    finally:
        try:   # its command killed it (where the command supervises its executor: Linux)
            os.kill(int((tmp_path / "first").read_text()), 9)
        except ProcessLookupError:
            pass
    assert states == {"held": "SUCCEED", "queued": "SUCCEED"}, cluster.logs()
    assert (tmp_path / "second").read_text().strip() == "0" and m.info("held")["executor"] == "heir"
    execs = m.store.executors(True)
    assert (execs["lost"]["state"], execs["lost"]["gfree"], execs["heir"]["gfree"]) == ("DEAD", "0", "1")
