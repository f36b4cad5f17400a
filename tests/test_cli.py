"""The command line as a user runs it: real processes, local mode and a real redis-server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from qcgpj import Jobs, Manager
from qcgpj.timefmt import local_time
from tests.cluster import Cluster, qcgpj_cmd
from tests.test_reliability import wait_for

REPO = Path(__file__).resolve().parent.parent


def qcgpj(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    e.pop("QCGPJ_REDIS_URL", None)
    e.update(env or {})
    return subprocess.run(qcgpj_cmd(*args), cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


REQUESTS = [
    {"request": "submit", "jobs": [
        {"name": "hello", "execution": {"exec": "/bin/echo", "args": ["hello", "${it}"], "stdout": "hello.${it}"},
         "iteration": {"stop": 3}, "resources": {"numCores": {"exact": 1}}},
        {"name": "after", "execution": {"script": "cat hello.* > all.txt"},
         "dependencies": {"after": ["hello"]}},
    ]},
    {"request": "control", "command": "finishAfterAllTasksDone"},
]


def test_run_local_mode_succeeds(tmp_path):
    write(tmp_path / "jobs.json", REQUESTS)
    res = qcgpj("run", "jobs.json", "--cores", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 jobs: SUCCEED 2" in res.stdout
    assert (tmp_path / "all.txt").read_text() == "hello 0\nhello 1\nhello 2\n"


def test_run_local_mode_exits_nonzero_on_failure(tmp_path):
    write(tmp_path / "jobs.json", [
        {"name": "bad", "execution": {"exec": "/bin/false"}},
        {"name": "dep", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["bad"]}},
    ])
    res = qcgpj("run", "jobs.json", cwd=tmp_path)
    assert res.returncode == 1
    assert "FAILED 1" in res.stdout and "OMITTED 1" in res.stdout
    assert "bad: FAILED exit 1" in res.stdout


@pytest.mark.parametrize("content, message", [
    ("[{\"name\": \"a\",", "malformed JSON"),
    (json.dumps([{"name": "a", "execution": {"exec": "x"}, "bogus": 1}]), "job 'a'"),
    (json.dumps([{"name": "a", "execution": {"exec": "x"}, "dependencies": {"after": ["zz"]}}]), "zz"),
    (json.dumps([{"name": "a", "execution": {"exec": "x"}, "resources": {"numCores": 100000}}]), "numCores"),
    (json.dumps([{"name": "a", "execution": {"exec": "x", "model": "nosuch"}}]),   # local mode knows its models
     "job 'a', field 'execution.model': unknown execution model 'nosuch'"),
    (json.dumps([{"name": "mn", "execution": {"exec": "x"}, "resources": {"numNodes": {"exact": 2}}}]),
     "job 'mn', field 'resources.numNodes'"),
])
def test_bad_input_is_one_clear_line(tmp_path, content, message):
    write(tmp_path / "jobs.json", content)
    res = qcgpj("run", "jobs.json", cwd=tmp_path)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_bad_redis_url_and_redis_down(tmp_path):
    write(tmp_path / "jobs.json", REQUESTS)
    res = qcgpj("submit", "jobs.json", "--redis-url", "http://nope", cwd=tmp_path)
    assert res.returncode != 0 and "bad Redis URL" in res.stderr
    res = qcgpj("status", "--redis-url", "redis://127.0.0.1:1/0", cwd=tmp_path)
    assert res.returncode != 0 and "cannot reach Redis" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = qcgpj("status", "--redis-url", "redis+sentinel://127.0.0.1:1/mymaster/0", cwd=tmp_path)
    assert res.returncode != 0   # no sentinel there: said in a line, not with redis-py's reprs of its clients
    assert res.stderr.strip() == "Error: cannot reach Redis at redis+sentinel://127.0.0.1:1/mymaster/0: No master " \
                                 "found for 'mymaster'", res.stderr


def test_misspelled_url_option_is_one_line_naming_it(tmp_path, redis_url):
    # a typo in one of redis-py's query options (socket_timeout) reached the connection class as a keyword
    res = qcgpj("status", "--redis-url", redis_url + "?socket_timout=5", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"Error: bad Redis URL '{redis_url}?socket_timout=5': unknown "
                                               "option 'socket_timout'"], res.stderr
    assert qcgpj("status", "--redis-url", redis_url + "?socket_timeout=5", cwd=tmp_path).returncode == 0


def test_remote_commands(tmp_path, redis_url):
    cluster = Cluster(redis_url, tmp_path)
    write(tmp_path / "jobs.json", REQUESTS)
    try:
        res = qcgpj("submit", "jobs.json", "--redis-url", redis_url, cwd=tmp_path)
        assert res.returncode == 0 and "submitted 2" in res.stdout
        dup = qcgpj("submit", "jobs.json", "--redis-url", redis_url, cwd=tmp_path)
        assert dup.returncode != 0 and "already in the queue" in dup.stderr
        st = qcgpj("status", "--json", "--redis-url", redis_url, cwd=tmp_path)
        assert json.loads(st.stdout) == {"jobs": {"hello": "READY", "after": "QUEUED"},
                                         "counts": {"READY": 1, "QUEUED": 1}}
        cluster.inputqueue()
        cluster.worker(2, "--exit-when-idle")
        res = qcgpj("wait", "--timeout", "60", "--redis-url", redis_url, cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        info = json.loads(qcgpj("info", "hello:1", "--json", "--redis-url", redis_url, cwd=tmp_path).stdout)
        assert info["state"] == "SUCCEED" and info["exit_code"] == 0
        lst = qcgpj("list", "--redis-url", redis_url, cwd=tmp_path)
        assert lst.stdout.split() == ["hello", "SUCCEED", "after", "SUCCEED"]
        assert cluster.procs[1].wait(timeout=30) == 0   # --exit-when-idle: the worker left by itself
        assert (tmp_path / "all.txt").read_text() == "hello 0\nhello 1\nhello 2\n"
    finally:
        cluster.stop()



def test_wait_on_an_empty_namespace_says_so_without_a_dangling_colon(tmp_path, redis_url):
    """`qcgpj wait -n emptyns` printed '0 jobs: ' (the colon of a list of counts that is empty)."""
    res = qcgpj("wait", "-n", "emptyns", "--redis-url", redis_url, cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, "0 jobs\n"), res.stderr


def test_a_wait_that_times_out_names_the_jobs_not_final(tmp_path, redis_url):
    """`qcgpj wait --timeout` on a sweep named its first five jobs ('timed out waiting for p0, p1, p2, p3, p4
    ...'), final or not: with the first ones done long ago it named only jobs that had ended."""
    m = Manager(redis_url)
    jobs = Jobs()
    for i in range(7):
        jobs.add(name=f"p{i}", exec="/bin/true")
    m.submit(jobs)                                  # no executor: they wait
    m.cancel([f"p{i}" for i in range(6)])           # final; only p6 is not
    res = qcgpj("wait", "--timeout", "0.5", "--redis-url", redis_url, cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr == "Error: timed out waiting for 1 job(s) not final: p6\n"


def test_info_shows_missing_values_as_a_dash(tmp_path, redis_url):
    """An iterative job has no executor nor exit code of its own: `qcgpj info` printed 'executor: None' and
    'exit_code: None' where every other missing value (start, end) reads '-'."""
    Manager(redis_url).submit(Jobs().add(name="sweep", exec="/bin/true", iteration=3))
    res = qcgpj("info", "sweep", "--redis-url", redis_url, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    info = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    assert (info["executor"], info["exit_code"], info["start"], info["end"]) == ("-", "-", "-", "-"), res.stdout
    assert "None" not in res.stdout, res.stdout


def test_info_shows_since_when_a_job_is_unplaceable_as_a_local_time(tmp_path, redis_url):
    """`qcgpj info` printed 'unplaceable' as a raw epoch where every other time is a local ISO time."""
    cluster = Cluster(redis_url, tmp_path)
    try:
        cluster.inputqueue()
        m = cluster.manager()
        m.submit(Jobs().add(name="huge", exec="/bin/true", numCores=64))
        cluster.worker(2)
        wait_for(m, lambda: "unplaceable" in m.info("huge"), what="huge flagged")
        res = qcgpj("info", "huge", "--redis-url", redis_url, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        info = dict(line.split(": ", 1) for line in res.stdout.splitlines())
        from datetime import datetime
        assert info["unplaceable"] == local_time(m.info("huge")["unplaceable"]), res.stdout
        assert datetime.fromisoformat(info["unplaceable"]).tzinfo is not None
    finally:
        cluster.stop()


def test_an_idle_worker_leaves_when_the_waiting_work_needs_more_than_it_has(tmp_path, redis_url):
    """--exit-when-idle: a worker left with nothing it can run leaves, though ready work waits that needs more
    than it has: staying would hold its allocation's nodes from the allocation that can run that work (Slurm keeps
    that one pending meanwhile: the queue stalled until the time limit). Work it can run, it runs first."""
    cluster = Cluster(redis_url, tmp_path)
    try:
        cluster.inputqueue()
        m = cluster.manager()
        m.submit(Jobs().add(name="wide", exec="/bin/true", numCores=2).add(name="one", exec="/bin/true"))
        small = cluster.worker(1, "--exit-when-idle", name="small")
        assert small.wait(timeout=60) == 0
        assert m.status(["wide", "one"]) == {"wide": "READY", "one": "SUCCEED"}
        cluster.worker(2, "--exit-when-idle", name="big")
        assert m.wait4(["wide"], timeout=60) == {"wide": "SUCCEED"}
    finally:
        cluster.stop()

def test_unknown_names_are_worded_alike_by_every_command(tmp_path, redis_url):
    """remove said "job 'nosuch': unknown job" where the others say "unknown job 'nosuch'", and cancel called an
    iteration out of range an unknown job where info calls it an unknown iteration."""
    url = ["--redis-url", redis_url]
    write(tmp_path / "jobs.json", [{"name": "it", "execution": {"exec": "/bin/true"}, "iteration": {"stop": 3}}])
    assert qcgpj("submit", "jobs.json", *url, cwd=tmp_path).returncode == 0
    for cmd in (["remove", "nosuch"], ["cancel", "nosuch"], ["info", "nosuch"], ["status", "nosuch"]):
        res = qcgpj(*cmd, *url, cwd=tmp_path)
        assert (res.returncode, res.stderr.strip()) == (1, "Error: unknown job 'nosuch'"), cmd
    for cmd in (["cancel", "it:7"], ["info", "it:7"]):
        res = qcgpj(*cmd, *url, cwd=tmp_path)
        assert (res.returncode, res.stderr.strip()) == (1, "Error: unknown iteration 'it:7'"), cmd
    for cmd in (["cancel", "nosuch:7"], ["info", "nosuch:7"]):
        assert qcgpj(*cmd, *url, cwd=tmp_path).stderr.strip() == "Error: unknown job 'nosuch'", cmd

def test_version_and_help(tmp_path):
    res = qcgpj("--help", cwd=tmp_path)
    assert res.returncode == 0 and "run" in res.stdout and "inputqueue" in res.stdout
    res = subprocess.run([sys.executable, "-m", "qcgpj", "worker", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and "--exit-when-idle" in res.stdout


def test_only_the_commands_with_a_local_mode_say_a_url_is_optional(tmp_path):
    """Every command's --redis-url said 'none: local mode, everything in this process', while only run and bench
    have a local mode: `qcgpj status` without a URL answered 'this command needs a queue'. Each says what it does."""
    import click

    from qcgpj.cli import main

    def commands(group: click.Group, path: tuple[str, ...] = ()):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if isinstance(cmd, click.Group):
                yield from commands(cmd, (*path, name))
            else:
                yield (*path, name), cmd

    local = set()
    for path, cmd in commands(main):
        opt = next((p for p in cmd.params if "--redis-url" in getattr(p, "opts", ())), None)
        if opt is None:
            continue
        if "local mode" in opt.help:
            local.add(" ".join(path))
        else:
            assert "required" in opt.help, (path, opt.help)
            assert ("--from" in opt.help) == any(p.name == "from_dir" for p in cmd.params), (path, opt.help)
    assert local == {"run", "bench"}
    res = qcgpj("status", cwd=tmp_path)
    assert (res.returncode, res.stderr.strip()) == (
        1, "Error: this command needs a queue: give --redis-url or set QCGPJ_REDIS_URL")


SMALL = ["--tasks", "40", "--chain", "5", "--submit-jobs", "200", "--submit-iterations", "1000", "--json"]


def test_bench_reports_every_workload(redis_url, tmp_path):
    """The benchmark a user runs against their Redis: every workload ran to completion, and nothing is left."""
    res = qcgpj("bench", "--redis-url", redis_url, *SMALL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["workload"], r["unit"]) for r in rows] == [
        ("spawn", "tasks/s"), ("spawn1", "ms/task"), ("tasks", "tasks/s"), ("iterations", "tasks/s"), ("chain", "ms/hop"),
        ("queue", "tasks/s"), ("submit", "s"), ("submit", "s"), ("local", "tasks/s"), ("local", "tasks/s"),
        ("functions", "calls/s"), ("functions", "ms/hop"), ("functions", "calls/s")]
    spawn, spawn1, tasks, iterations, chain, queue, jobs, one_job, _local, _local2, calls, _hops, rq_calls = rows
    assert calls["extra"]["correct"] and rq_calls["extra"]["qcgpj_over_rq"] > 0
    left = redis.Redis.from_url(redis_url).keys("rq:*")   # rq's jobs of the functions workload are gone too
    assert not [k for k in left if k.startswith((b"rq:job", b"rq:results", b"rq:queue", b"rq:worker"))], left
    assert tasks["extra"]["succeeded"] == queue["extra"]["succeeded"] == 40
    # the machine's own limit, measured in the same run, and the share of it that the queue reaches
    assert spawn["value"] > 0 and spawn["extra"]["threads"] >= 1
    assert tasks["extra"]["of_spawn_limit"] == round(tasks["value"] / spawn["value"], 2)
    assert iterations["extra"]["state"] == "SUCCEED"
    # a hop against one process started and waited for, and the CPU per task of every process (on any load)
    assert chain["extra"]["over_spawn1_ms"] == round(chain["value"] - spawn1["value"], 3)
    for row in (tasks, iterations, chain, queue):
        cpu = {k: v for k, v in row["extra"].items() if k.endswith("_cpu_us")}
        assert set(cpu) == {"executor_cpu_us", "inputqueue_cpu_us", "redis_cpu_us", "client_cpu_us",
                            "tasks_cpu_us", "idle_cpu_us"}, row   # and where the rest of the machine went
        assert cpu["redis_cpu_us"] > 0 and cpu["client_cpu_us"] > 0
        assert cpu["tasks_cpu_us"] >= 0 and cpu["idle_cpu_us"] >= 0
    assert min(tasks["value"], iterations["value"], chain["value"], queue["value"], jobs["value"]) > 0
    assert jobs["extra"]["bytes_per_job"] > 0 and "bytes" in one_job["extra"]
    assert not redis.Redis.from_url(redis_url).keys("qcgpj:{bench-*")   # the namespaces were dropped


def test_bench_in_local_mode_runs_every_workload(tmp_path):
    """No Redis URL: every workload runs in local mode (with its default store)."""
    res = qcgpj("bench", *SMALL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["workload"] for r in rows] == ["spawn", "spawn1", "tasks", "iterations", "chain", "queue", "submit", "submit",
                                             "local", "local", "functions", "functions"]
    assert rows[2]["extra"]["succeeded"] == 40
    assert rows[6]["extra"]["jobs_per_s"] > 0


def test_bench_local_times_qcgpj_run_with_each_store(tmp_path):
    """-w local: the whole `qcgpj run` command with each store, each against the spawn limit of the same run."""
    res = qcgpj("bench", "-w", "spawn", "-w", "local", "--tasks", "30", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    spawn, _spawn1, *local = json.loads(res.stdout)
    assert [r["what"].rsplit(": ", 1)[1] for r in local] == ["redis-server", "fakeredis"]
    for r in local:
        assert r["extra"]["ok"] and r["value"] > 0
        assert r["extra"]["of_spawn_limit"] == round(r["value"] / spawn["value"], 2)


def test_bench_start_redis_runs_on_a_private_server_without_warnings(tmp_path):
    """--start-redis: a throw-away server, started and stopped by the bench; its lack of persistence is chosen,
    so no warning about it."""
    res = qcgpj("bench", "--start-redis", "-w", "chain", *SMALL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [r["workload"] for r in json.loads(res.stdout)] == ["chain"]
    assert "WARNING" not in res.stderr, res.stderr


@pytest.mark.parametrize("workload", ["tasks", "functions"])
def test_bench_whose_worker_cannot_start_says_why_instead_of_waiting(tmp_path, workload):
    """The bench's services are processes of its own: one that exits (here a worker refusing its options) ends
    the bench with the service's last line and exit code 1; the bench used to wait for its executor for ever."""
    res = qcgpj("bench", "--start-redis", "-w", workload, "--tasks", "10", "--worker-processes", "64", cwd=tmp_path,
                timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "Error: the bench's worker exited with code 1 before the run ended: Error: --processes 64: more processes "
        f"than cores ({os.cpu_count()}) or CPUs ({len(os.sched_getaffinity(0))})"]


def test_bench_on_external_executors_leaves_their_namespace_clean(redis_url, tmp_path):
    """--external runs on executors already serving a namespace and removes only its own jobs afterwards."""
    cluster = Cluster(redis_url, tmp_path, namespace="shared")
    try:
        m = cluster.serving(2)
        m.submit(Jobs().add(name="mine", exec="/bin/true"))
        res = qcgpj("bench", "--redis-url", redis_url, "--external", "-n", "shared", "-w", "spawn", "-w", "tasks",
                    "-w", "chain", *SMALL, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        rows = {r["workload"]: r for r in json.loads(res.stdout)}
        assert set(rows) == {"spawn", "spawn1", "tasks", "chain"}
        assert "of_spawn_limit" not in rows["tasks"]["extra"]   # its executors may run on other machines
        assert rows["tasks"]["extra"]["succeeded"] == 40                # its own jobs, not "mine"
        assert m.store.job_names() == ["mine"]                       # the bench's jobs are gone, ours is not
        assert list(m.client.scan_iter(m.store.keys.job("*"))) == [m.store.keys.job("mine")]
        assert not list(m.client.scan_iter(m.store.keys.children("*")))   # the chain's links went with it
        assert m.wait4(["mine"], timeout=30) == {"mine": "SUCCEED"}
        assert [e["state"] for e in m.store.executors().values()] == ["ALIVE"]
    finally:
        cluster.stop()
