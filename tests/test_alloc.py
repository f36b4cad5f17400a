"""Automatic allocation: the decision (no Slurm), the CLI and dry run on a real Redis, the idle grace of workers,
and the allocator on the real Slurm of ../shared/slurm (marker slurm)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from qcgpj import Jobs, Manager
from qcgpj.alloc import AllocQueue, TaskDemand, decide, slurm_time
from qcgpj.allocstore import AllocStore
from qcgpj.connection import ENV_URL, SERVICE_RETRIES, connect
from qcgpj.errors import AllocError
from qcgpj import slurm as slurm_cmds
from qcgpj.slurm import batch_script, rotate

from tests.cluster import Cluster, qcgpj_cmd
from tests.tcpgate import Gate

REPO = Path(__file__).resolve().parent.parent
WORKER_CMD = f"env PYTHONPATH={REPO} {sys.executable} -m qcgpj worker"


def queue(**kw) -> AllocQueue:
    return AllocQueue(**{"name": "cpu", "max_allocations": 2, "nodes": 1, "time": "1h", **kw})


def cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(qcgpj_cmd(*args), capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO), **{ENV_URL: url}), stdin=subprocess.DEVNULL)
    assert not check or res.returncode == 0, res.stderr
    return res


def add_args(tmp_path: Path, name: str = "cpu", *extra: str) -> list[str]:
    return ["alloc", "add", "slurm", "--name", name, "--time", "10m", "--worker-cmd", WORKER_CMD,
            "--wd", str(tmp_path), "--dir", str(tmp_path / "alloc" / name), *extra]


def listing(url: str) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(cli(url, "alloc", "list", "--json").stdout)}


# ---------------------------------------------------------------------- the decision, without Redis or Slurm
def test_demand_asks_for_what_fits_within_the_limit():
    q = queue(max_allocations=3, nodes=2)
    d = decide(q, 8, [TaskDemand("a", 40, 1)], waiting=0, active=0)      # 40 cores / 16 per allocation
    assert d.submit == 3 and not d.too_large
    assert decide(q, 8, [TaskDemand("a", 20, 1)], waiting=0, active=0).submit == 2
    assert decide(q, 8, [TaskDemand("a", 20, 1)], waiting=1, active=1).submit == 1   # one on its way
    assert decide(q, 8, [TaskDemand("a", 200, 1)], waiting=0, active=3).submit == 0  # at the limit
    assert decide(q, 8, [], waiting=0, active=0).submit == 0
    assert decide(q, 8, [TaskDemand("mpi", 3, 4, nodes=2)], waiting=0, active=0).submit == 2   # 3 x 8 of 16


def test_tasks_too_large_for_an_allocation_are_reported_not_requested():
    q = queue(nodes=2)
    d = decide(q, 8, [TaskDemand("big", 1, 17), TaskDemand("wide", 1, 1, nodes=3), TaskDemand("fat", 1, 9, nodes=1)],
               waiting=0, active=0)
    assert d.submit == 0
    assert [t.split("'")[1] for t in d.too_large] == ["big", "wide", "fat"]
    assert "needs 17 cores; an allocation of 'cpu' has 2 node(s) x 8 cores" in d.too_large[0]
    assert decide(q, 8, [TaskDemand("big", 1, 17), TaskDemand("ok", 1, 16)], 0, 0).submit == 1


def test_queue_definitions_are_checked():
    assert slurm_time("1h") == "0-01:00:00" and slurm_time("90m") == "0-01:30:00" and slurm_time("1:00") == "1:00"
    for bad in ({"time": "soon"}, {"nodes": 0}, {"max_allocations": 0}, {"name": "a b"}, {"cores_per_node": 0},
                {"time": "0"}, {"time": "00:00:00"}, {"time": "0-0"},      # Slurm's "no time limit"
                {"idle_grace": float("nan")}, {"register_timeout": float("nan")}, {"idle_grace": float("inf")}):
        with pytest.raises(AllocError):
            queue(**bad)
    q = queue(partition="p", cores_per_node=4, extra=["--mem=1G"])
    assert AllocQueue.from_json(q.to_json()) == q
    script = batch_script(q, "ns", "redis://h:1")
    assert f"#SBATCH --job-name={q.tag('ns')}" in script and "#SBATCH --partition=p" in script
    assert "#SBATCH --ntasks-per-node=4" in script and "--exit-when-idle --idle-grace 30" in script
    assert "#SBATCH --exclusive" in batch_script(queue(), "ns", "redis://h:1")   # whole nodes by default


@pytest.mark.parametrize("field, value", [("name", "cpu\n"), ("partition", "batch\ntouch {mark}"),
                                          ("account", "proj\n#SBATCH --time=99-00:00:00"), ("qos", "a b")])
def test_a_line_break_cannot_enter_the_batch_script(redis_url, tmp_path, field, value):
    """A queue's name (checked with ``re.match`` and ``$``, which passes a final newline), partition, account
    and qos were written into the batch script's #SBATCH lines as given: a newline in one ended Slurm's reading
    of the directives there (the next ones, --exclusive or --ntasks-per-node, silently dropped; a name's newline
    also changed the job name the allocator finds its allocations by, so it never saw them and submitted more)
    and put a line of shell into the script. `alloc add` now refuses them in one line and writes nothing."""
    mark = tmp_path / "ran"
    args = add_args(tmp_path, "cpu" if field != "name" else value)
    if field != "name":
        args += [f"--{field}", value.format(mark=mark)]
    bad = cli(redis_url, *args, check=False)
    assert bad.returncode == 1 and f"--{field}" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, \
        bad.stderr
    assert listing(redis_url) == {}
    with pytest.raises(AllocError, match=f"--{field}"):   # a definition written to Redis by other means
        AllocQueue.from_json(json.dumps({**json.loads(queue().to_json()), field: value.format(mark=mark)}))


def test_rotation_keeps_the_folder_small(tmp_path):
    for i in range(10):
        (tmp_path / f"f{i}").write_text("x" * 1000)
        os.utime(tmp_path / f"f{i}", (i, i))
    rotate(tmp_path, max_files=5, max_bytes=100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f6", "f7", "f8", "f9"]   # room for the next one
    rotate(tmp_path, max_files=5, max_bytes=2500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f8", "f9"]


# ---------------------------------------------------------------------- on a real Redis, without Slurm
def test_demand_is_read_from_the_pending_work(redis_url):
    Manager(redis_url).submit(Jobs().add(name="many", script="true", iteration=50)
                              .add(name="mpi", script="true", numNodes=2, numCores=4)
                              .add(name="after", script="true", after=["many"]))
    got = sorted(AllocStore(connect(redis_url)).demand(), key=lambda d: d.job)
    assert got == [TaskDemand("many", 50, 1), TaskDemand("mpi", 1, 4, nodes=2)]   # 'after' waits for 'many'


def test_cli_add_list_pause_resume_remove_and_dry_run(redis_url, tmp_path):
    cli(redis_url, *add_args(tmp_path, "cpu", "--max-allocations", "2", "--cores-per-node", "4", "--", "--mem=1G"))
    bad = cli(redis_url, *add_args(tmp_path, "cpu"), check=False)
    assert bad.returncode == 1 and "allocation queue 'cpu' exists" in bad.stderr
    bad = cli(redis_url, *add_args(tmp_path, "x", "--time", "soon"), check=False)
    assert bad.returncode == 1 and "--time" in bad.stderr and "Traceback" not in bad.stderr
    row = listing(redis_url)["cpu"]
    assert row["state"] == "ACTIVE" and row["definition"]["extra"] == ["--mem=1G"]
    Manager(redis_url).submit(Jobs().add(name="t", script="true", iteration=10).add(name="big", script="true",
                                                                                   numCores=9))
    out = cli(redis_url, "alloc", "serve", "--dry-run").stdout
    assert "cpu: would submit 2: 10 waiting task(s) need 10 core(s) = 3 allocation(s) of 1x4" in out
    assert "1 job(s) too large" in out
    cli(redis_url, "alloc", "pause", "cpu")
    assert listing(redis_url)["cpu"]["paused"] == "paused by the user"
    assert "would submit 0" in cli(redis_url, "alloc", "serve", "--dry-run").stdout
    cli(redis_url, "alloc", "resume", "cpu")
    assert listing(redis_url)["cpu"]["state"] == "ACTIVE"
    cli(redis_url, "alloc", "remove", "cpu")
    assert listing(redis_url) == {}
    bad = cli(redis_url, "alloc", "remove", "cpu", check=False)
    assert bad.returncode == 1 and "unknown allocation queue 'cpu'" in bad.stderr


def test_idle_grace_keeps_the_worker_for_work_that_comes_soon(redis_url, tmp_path):
    cluster = Cluster(redis_url, tmp_path)
    m = cluster.manager()
    m.submit(Jobs().add(name="first", script="true"))
    cluster.inputqueue()
    worker = cluster.worker(1, "--exit-when-idle", "--idle-grace", "600")
    try:
        assert m.wait4("first", timeout=120) == {"first": "SUCCEED"}
        m.submit(Jobs().add(name="second", script="true"))       # after the queue emptied: the grace serves it
        assert m.wait4("second", timeout=120) == {"second": "SUCCEED"}, cluster.logs()
        assert worker.poll() is None
        assert len(m.resources(departed=True)["executors"]) == 1   # the same executor ran both
    finally:
        cluster.stop()


def test_alloc_serve_logs_an_outage_at_once_and_stops_during_it(redis_url, tmp_path):
    """alloc serve kept the client's redis-py retries: during an outage its first call to Redis retried for
    minutes before its loop could log the outage, and a SIGTERM waited for that call and then for the release of
    its lease, retried as long. It keeps the services' few retries now. Counted in connections, not seconds:
    redis-py retries the handshake inside each retry of a call, so one failing call opens at most
    (SERVICE_RETRIES + 1) ** 2 connections (16; a client's 20 retries open up to 441)."""
    per_call = (SERVICE_RETRIES + 1) ** 2
    host, port = urlsplit(redis_url).hostname, urlsplit(redis_url).port
    log = tmp_path / "alloc.log"
    with Gate((host, port)) as gate:
        cluster = Cluster(gate.url, tmp_path)
        allocator = cluster.allocator("--poll", "0.5")
        try:
            wait_until(lambda: "acting (leader)" in log.read_text(), 60, "the allocator to lead", cluster.logs)
            # The outage: the connection after one call's worth is held unanswered, the allocator blocked on it.
            held = gate.cut(hold=per_call + 1)
            assert held.wait(120), f"only {gate.count} connection(s)\n{cluster.logs()}"
            assert "Redis unavailable" in log.read_text(), cluster.logs()     # logged before that connection
            allocator.send_signal(signal.SIGTERM)
            wait_until(lambda: "stopping" in log.read_text(), 60, "the signal to be seen", cluster.logs)
            ended = threading.Event()
            threading.Thread(target=lambda: (allocator.wait(), ended.set()), daemon=True).start()
            # Let the held call fail: it and the release of the lease may open up to a call's worth each.
            gate.cut(hold=2 * per_call + 1, notify=ended)
            assert ended.wait(120)
            assert allocator.poll() == 0, f"still running after {gate.count} connections\n{cluster.logs()}"
            assert gate.count <= 2 * per_call
        finally:
            gate.close()
            cluster.stop()
    assert "allocator" in log.read_text() and "stopped" in log.read_text()


# ---------------------------------------------------------------------- on the real Slurm
def slurm_jobs(tag: str) -> list[str]:
    return [j.id for j in slurm_cmds.our_jobs() if j.name == tag]


@pytest.fixture(autouse=True)
def cancel_leftovers(request):
    """A failed Slurm test must not leave allocations behind on the shared cluster (their Redis is gone)."""
    url = request.getfixturevalue("redis_url") if request.node.get_closest_marker("slurm") else None
    yield
    if url:
        tags = {q.tag("default") for q in AllocStore(connect(url)).queues().values()}
        slurm_cmds.cancel([j.id for j in slurm_cmds.our_jobs() if j.name in tags])


def wait_until(predicate, timeout: float, what: str, logs=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs()}"
        time.sleep(0.5)


def submitted(cluster: Cluster, *logs: str) -> list[str]:
    """The allocations the allocator(s) submitted, from their logs."""
    text = "".join((cluster.workdir / f"{name}.log").read_text() for name in logs)
    return [line.rsplit(" ", 1)[1] for line in text.splitlines() if "submitted allocation" in line]


@pytest.mark.slurm
def test_two_allocations_serve_the_queue_and_leave(slurm, redis_url, tmp_path):
    cli(redis_url, *add_args(tmp_path, "cpu", "--max-allocations", "2", "--nodes", "1", "--idle-grace", "2"))
    tag = AllocStore(connect(redis_url)).queue("cpu").tag("default")
    m = Manager(redis_url)
    m.submit(Jobs().add(name="t", script="sleep 0.2", iteration=200))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    cluster.allocator("--poll", "0.5")
    try:
        wait_until(lambda: len(submitted(cluster, "alloc")) == 2, 120, "two allocations", cluster.logs)
        assert m.wait4("t", timeout=600) == {"t": "SUCCEED"}
        wait_until(lambda: not slurm_jobs(tag), 180, "the allocations to end", cluster.logs)
        wait_until(lambda: listing(redis_url)["cpu"]["ended"] == [], 60, "the allocator to see them end")
        assert listing(redis_url)["cpu"]["allocations"] == []
        row = listing(redis_url)["cpu"]
        assert row["failures"] == 0 and "0 waiting task(s)" in row["last"]
    finally:
        cluster.stop()
    ids = submitted(cluster, "alloc")
    assert len(ids) == 2, cluster.logs()                                    # no third one
    execs = m.resources(departed=True)["executors"].values()
    assert {e["slurm_job"] for e in execs} <= set(ids) and all(e["state"] == "LEFT" for e in execs)
    assert "slurm job" in cli(redis_url, "resources", "--all").stdout


@pytest.mark.slurm
def test_alloc_list_counts_only_live_allocations(slurm, redis_url, tmp_path):
    """Allocations that ended while no allocator ran (or before its next pass cleared them) were counted as
    running: `alloc list` showed 'allocations 4/2'. It counts the live ones now and shows the ended ones apart."""
    cli(redis_url, *add_args(tmp_path, "cpu", "--nodes", "1", "--cores-per-node", "1", "--idle-grace", "0"))
    tag = AllocStore(connect(redis_url)).queue("cpu").tag("default")
    m = Manager(redis_url)
    m.submit(Jobs().add(name="t", script=f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.1; done"))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    allocator = cluster.allocator("--poll", "0.5")
    try:
        wait_until(lambda: m.status("t")["t"] == "EXECUTING", 120, "the task running in its allocation", cluster.logs)
        allocator.terminate()               # SIGTERM: the allocation stays, and nobody clears it once it ends
        assert allocator.wait(timeout=60) == 0, cluster.logs()
        (tmp_path / "go").touch()
        assert m.wait4("t", timeout=120) == {"t": "SUCCEED"}
        wait_until(lambda: not slurm_jobs(tag), 180, "the allocation to end", cluster.logs)
    finally:
        cluster.stop()
    (jid,) = submitted(cluster, "alloc")
    row = listing(redis_url)["cpu"]
    assert (row["allocations"], row["ended"]) == ([], [jid]), row
    out = cli(redis_url, "alloc", "list").stdout
    assert "allocations 0/1" in out and f"ended, not cleared yet: {jid}" in out, out


@pytest.mark.slurm
def test_a_bad_partition_pauses_the_queue_with_the_reason(slurm, redis_url, tmp_path):
    cli(redis_url, *add_args(tmp_path, "bad", "--partition", "nosuchpartition", "--failure-limit", "2"))
    Manager(redis_url).submit(Jobs().add(name="t", script="true"))
    cluster = Cluster(redis_url, tmp_path)
    cluster.allocator("--poll", "0.2")
    try:
        wait_until(lambda: listing(redis_url)["bad"]["paused"], 120, "the queue to pause", cluster.logs)
        row = listing(redis_url)["bad"]
        assert row["state"] == "PAUSED" and row["failures"] == 2
        assert "2 failures in a row" in row["paused"] and "invalid partition" in row["paused"].lower()
        out = cli(redis_url, "alloc", "list").stdout
        assert "PAUSED" in out and "invalid partition" in out.lower()
        for _ in range(2):     # more passes (a submit wakes the allocator): no more attempts once paused
            Manager(redis_url).submit(Jobs().add(name=f"more{_}", script="true"))
            time.sleep(1)
        assert listing(redis_url)["bad"]["failures"] == 2
    finally:
        cluster.stop()
    log = (tmp_path / "alloc.log").read_text()
    assert log.count("sbatch refused") == 2 and "paused after 2 failures" in log
    assert "alloc bad: submitted" not in log    # nothing was


@pytest.mark.slurm
def test_allocations_whose_worker_never_registers_pause_the_queue_at_the_limit(slurm, redis_url, tmp_path):
    """Failures found in a pass (allocations that ended without a worker) pause the queue in that pass: no more
    allocations are submitted after the limit, nor during the back-off."""
    cli(redis_url, "alloc", "add", "slurm", "--name", "cpu", "--time", "10m", "--worker-cmd", "/bin/false",
        "--wd", str(tmp_path), "--dir", str(tmp_path / "alloc" / "cpu"), "--max-allocations", "2",
        "--cores-per-node", "1", "--failure-limit", "2")
    Manager(redis_url).submit(Jobs().add(name="t", script="true", iteration=10))
    cluster = Cluster(redis_url, tmp_path)
    cluster.allocator("--poll", "0.2")
    try:
        wait_until(lambda: listing(redis_url)["cpu"]["paused"], 120, "the queue to pause", cluster.logs)
    finally:
        cluster.stop()     # the pass that paused the queue ends first
    assert len(submitted(cluster, "alloc")) == 2, cluster.logs()
    row = listing(redis_url)["cpu"]
    assert row["failures"] == 2 and "ended before its worker registered" in row["paused"]


@pytest.mark.slurm
def test_folders_with_spaces_serve_the_queue(slurm, redis_url, tmp_path):
    """A --dir or --wd with a space (a home or project folder so named) is written into the batch script."""
    wd, folder = tmp_path / "run dir", tmp_path / "alloc dir"
    cli(redis_url, "alloc", "add", "slurm", "--name", "cpu", "--time", "10m", "--worker-cmd", WORKER_CMD,
        "--wd", str(wd), "--dir", str(folder), "--cores-per-node", "1", "--idle-grace", "0")
    m = Manager(redis_url)
    m.submit(Jobs().add(name="t", script="pwd", stdout="t.out"))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    cluster.allocator("--poll", "0.2")
    try:
        assert m.wait4("t", timeout=120) == {"t": "SUCCEED"}, cluster.logs()
    finally:
        cluster.stop()
    assert (wd / "t.out").read_text().strip() == str(wd)
    ids = submitted(cluster, "alloc")
    assert len(ids) == 1 and (folder / f"alloc-{ids[0]}.out").exists()


@pytest.mark.slurm
def test_a_restarted_allocator_adopts_its_allocations(slurm, redis_url, tmp_path):
    cli(redis_url, *add_args(tmp_path, "cpu", "--max-allocations", "2", "--nodes", "1", "--idle-grace", "2",
                             "--cores-per-node", "2"))
    store = AllocStore(connect(redis_url))
    m = Manager(redis_url)
    m.submit(Jobs().add(name="t", script="sleep 1", iteration=24))
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()
    first = cluster.allocator("--poll", "0.5", "--lease", "2", name="alloc1")
    try:
        wait_until(lambda: len(store.jobs("cpu")) == 2, 120, "two allocations", cluster.logs)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        forgotten = sorted(store.jobs("cpu"))[0]
        store.drop_job("cpu", forgotten)     # as if killed between sbatch and writing it down: found by its tag
        cluster.allocator("--poll", "0.5", "--lease", "2", name="alloc2")
        assert m.wait4("t", timeout=600) == {"t": "SUCCEED"}
        tag = store.queue("cpu").tag("default")
        wait_until(lambda: not slurm_jobs(tag), 180, "the allocations to end", cluster.logs)
    finally:
        cluster.stop()
    assert len(submitted(cluster, "alloc1", "alloc2")) == 2, cluster.logs()
    assert f"adopting allocation {forgotten}" in (tmp_path / "alloc2.log").read_text()


@pytest.mark.slurm
def test_a_task_too_large_is_reported_and_not_requested(slurm, redis_url, tmp_path):
    cli(redis_url, *add_args(tmp_path, "cpu", "--nodes", "1"))   # whole nodes: 8 cores on the test Slurm
    Manager(redis_url).submit(Jobs().add(name="huge", script="true", numCores=64))
    cluster = Cluster(redis_url, tmp_path)
    cluster.allocator("--poll", "0.2")
    try:
        wait_until(lambda: listing(redis_url)["cpu"]["too_large"], 60, "the report", cluster.logs)
    finally:
        cluster.stop()
    row = listing(redis_url)["cpu"]
    assert "job 'huge' needs 64 cores; an allocation of 'cpu' has 1 node(s) x 8 cores" in row["too_large"]
    assert row["allocations"] == [] and submitted(cluster, "alloc") == []
    assert "too large for its allocations" in (tmp_path / "alloc.log").read_text()
    assert "job 'huge'" in cli(redis_url, "alloc", "list").stdout


@pytest.mark.slurm
def test_an_allocation_whose_worker_never_registers_is_cancelled_and_remove_cancels(slurm, redis_url, tmp_path):
    silent = ["--worker-cmd", "bash -c 'sleep 600'", "--cores-per-node", "1"]   # starts, never registers
    cli(redis_url, *add_args(tmp_path, "mute", "--register-timeout", "3", "--failure-limit", "1", *silent))
    cli(redis_url, *add_args(tmp_path, "kept", "--register-timeout", "600", *silent))
    Manager(redis_url).submit(Jobs().add(name="t", script="true"))
    store = AllocStore(connect(redis_url))
    mute, kept = (store.queue(name).tag("default") for name in ("mute", "kept"))
    cluster = Cluster(redis_url, tmp_path)
    cluster.allocator("--poll", "0.5")
    try:
        wait_until(lambda: listing(redis_url)["mute"]["paused"], 180, "the silent allocation to count", cluster.logs)
        assert "did not register within 3 s: cancelled" in listing(redis_url)["mute"]["paused"]
        wait_until(lambda: not slurm_jobs(mute), 60, "its cancellation", cluster.logs)
        wait_until(lambda: slurm_jobs(kept), 60, "the other queue's allocation", cluster.logs)
    finally:
        cluster.stop()     # SIGTERM: the allocations stay
    assert slurm_jobs(kept)
    assert "1 allocation(s) cancelled" in cli(redis_url, "alloc", "remove", "kept", "--cancel").stdout
    wait_until(lambda: not slurm_jobs(kept), 60, "alloc remove --cancel")
