"""``qcgpj report`` over a namespace filled by a real run (real redis-server, InputQueue and executor)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from collections import defaultdict

import pytest

from qcgpj import Jobs
from qcgpj.report import RedisSource, lanes, select_tasks, stats, utilisation
from tests.cluster import Cluster, qcgpj_cmd
from tests.test_cli import REPO
from tests.test_reliability import wait_for


@pytest.fixture(scope="module")
def run(redis_server, tmp_path_factory):
    """A finished run on one 3-core executor: a 2-core job, sleeps, a sweep with a failing iteration."""
    redis_server.client().flushall()
    wd = tmp_path_factory.mktemp("report")
    cluster = Cluster(redis_server.url, wd, namespace="rep")
    try:
        m = cluster.serving(3)
        jobs = Jobs().add(name="wide", exec="/bin/sleep", args=["0.3"], numCores=2)
        for i in range(6):
            jobs.add(name=f"s{i}", exec="/bin/sleep", args=["0.2"], after=["wide"])
        jobs.add(name="sweep", script="sleep 0.1; exit $(( ${it} == 2 ))", iteration=4)
        m.submit(jobs)
        m.wait4all(timeout=120)
        yield cluster, m
    finally:
        cluster.stop()


def test_stats_add_up(run):
    _cluster, m = run
    s = stats(RedisSource(m.store))
    assert s["jobs"] == 8 and s["jobs_by_state"] == {"SUCCEED": 7, "FAILED": 1}
    assert s["tasks"] == 11 and s["tasks_by_state"] == {"SUCCEED": 10, "FAILED": 1}
    runtimes = {n: m.info(n)["runtime"] for n in ["wide"] + [f"s{i}" for i in range(6)]}
    sweep = [m.info(f"sweep:{i}") for i in range(4)]
    busy = 2 * runtimes["wide"] + sum(v for k, v in runtimes.items() if k != "wide") + \
        sum(r["end"] - r["start"] for r in sweep)
    assert s["busy_core_seconds"] == pytest.approx(busy, abs=0.01)
    assert s["core_hours"] == pytest.approx(busy / 3600, abs=1e-4)
    assert runtimes["wide"] >= 0.3 and s["runtime"]["max"] >= 0.3
    (e,) = s["executors"]
    assert e["cores"] == 3 and e["tasks"] == 11 and e["state"] == "ALIVE"
    assert 0 < s["utilisation_pct"] <= 100 and s["utilisation_pct"] == e["utilisation_pct"]
    assert s["available_core_seconds"] >= s["busy_core_seconds"]
    assert s["task_span"]["seconds"] >= 0.5   # wide, then the sleeps after it


def test_jobs_filter_and_sort(run):
    _cluster, m = run
    src = RedisSource(m.store)
    assert [t.task for t in select_tasks(src, state="failed")] == ["sweep:2"]
    assert [t.task for t in select_tasks(src, name="sweep:*", sort="name")] == [f"sweep:{i}" for i in range(4)]
    by_start = select_tasks(src, sort="start")
    assert [t.start for t in by_start] == sorted(t.start for t in by_start)
    runtimes = [t.runtime for t in select_tasks(src, sort="runtime")]
    assert runtimes == sorted(runtimes)
    (eid,) = m.store.executors()
    assert len(select_tasks(src, executor=eid)) == 11 and select_tasks(src, executor="nobody") == []
    out = subprocess.run(qcgpj_cmd("report", "jobs", "--state", "FAILED", "--csv", "--redis-url", _url(m), "-n", "rep"),
                         capture_output=True, text=True)
    (row,) = list(csv.DictReader(io.StringIO(out.stdout)))
    assert row["task"] == "sweep:2" and row["exit_code"] == "1" and float(row["start"]) > 0
    bad = subprocess.run(qcgpj_cmd("report", "jobs", "--state", "FAIL", "--redis-url", _url(m), "-n", "rep"),
                         capture_output=True, text=True)   # a misspelt state is said, not an empty answer
    assert bad.returncode != 0 and "'FAIL' is not one of" in bad.stderr and bad.stdout == ""


def _url(m) -> str:
    kw = m.store.r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def test_gantt_lanes_never_overlap_and_hold_every_core_of_a_task(run):
    _cluster, m = run
    rows = lanes(RedisSource(m.store))
    assert len(rows) == 12   # 11 tasks, the wide one on two lanes
    per_lane = defaultdict(list)
    for r in rows:
        per_lane[(r["executor"], r["lane"])].append((r["start"], r["end"]))
    assert {lane for _e, lane in per_lane} <= {0, 1, 2}
    for spans in per_lane.values():
        spans.sort()
        assert all(a_end <= b_start + 1e-6 for (_s, a_end), (b_start, _e) in zip(spans, spans[1:]))
    assert len({r["lane"] for r in rows if r["task"] == "wide"}) == 2


def test_utilisation_steps(run):
    _cluster, m = run
    points = utilisation(RedisSource(m.store))
    assert max(p["busy"] for p in points) <= 3 and max(p["available"] for p in points) == 3
    assert points[-1]["busy"] == 0


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_gantt_and_utilisation_images(run, tmp_path, fmt):
    pytest.importorskip("matplotlib")
    _cluster, m = run
    for what in ("gantt", "utilisation"):
        out = tmp_path / f"{what}.{fmt}"
        res = subprocess.run(qcgpj_cmd("report", what, "-o", str(out), "--redis-url", _url(m), "-n", "rep"),
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        head = out.read_bytes()[:8]
        assert head.startswith({"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[fmt])


def test_json_of_every_figure(run):
    _cluster, m = run
    for args in (["stats"], ["gantt"], ["utilisation"], ["jobs"]):
        res = subprocess.run(qcgpj_cmd("report", *args, "--json", "--redis-url", _url(m), "-n", "rep"),
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data and (isinstance(data, dict) or isinstance(data[0], dict))


def test_csv_of_every_report(run):
    """The README: every report takes --json or --csv; `report stats --csv` was 'No such option'."""
    _cluster, m = run
    rows = {}
    for what in ("stats", "gantt", "utilisation", "jobs"):
        res = subprocess.run(qcgpj_cmd("report", what, "--csv", "--redis-url", _url(m), "-n", "rep"),
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        rows[what] = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows["jobs"]) == 11 and rows["gantt"] and rows["utilisation"]
    (s,) = rows["stats"]   # one row of the figures; the lists (executors, jobs' usage) are in --json
    want = stats(RedisSource(m.store))
    assert int(s["jobs"]) == 8 and int(s["tasks_by_state.FAILED"]) == 1
    assert float(s["busy_core_seconds"]) == want["busy_core_seconds"] and 0 < float(s["utilisation_pct"]) <= 100
    assert float(s["runtime.max"]) == want["runtime"]["max"] and "executors" not in s


def test_missing_matplotlib_is_one_clear_line(run, tmp_path):
    _cluster, m = run
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = dict(os.environ, PYTHONPATH=f"{shim.parent}{os.pathsep}{_cluster.env['PYTHONPATH']}")
    res = subprocess.run(qcgpj_cmd("report", "gantt", "-o", str(tmp_path / "g.png"), "--redis-url", _url(m),
                                   "-n", "rep"), capture_output=True, text=True, env=env)
    assert res.returncode == 1
    assert res.stderr == "Error: figures need matplotlib: pip install 'qcgpj[plot]'\n"


def test_readable_times_and_typed_json(run):
    _cluster, m = run

    def cli(*args: str) -> str:
        res = subprocess.run(qcgpj_cmd(*args, "--redis-url", _url(m), "-n", "rep"), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stdout
    (e,) = json.loads(cli("resources", "--json"))["executors"].values()
    assert isinstance(e["total"], int) and isinstance(e["free"], int) and isinstance(e["started"], float)
    assert e["alive"] is True and isinstance(e["running"], int)
    assert json.loads(cli("status", "--json"))["counts"] == {"SUCCEED": 7, "FAILED": 1}
    info = dict(line.split(": ", 1) for line in cli("info", "wide").splitlines())
    from datetime import datetime
    assert datetime.fromisoformat(info["start"]).timestamp() == pytest.approx(m.info("wide")["start"], abs=0.001)
    assert info["runtime"].endswith(" ms") or info["runtime"].endswith(" s")
    assert isinstance(json.loads(cli("info", "wide", "--json"))["start"], float)   # raw epochs in JSON


def test_reports_from_the_record_of_a_local_run(tmp_path):
    """A local `qcgpj run` leaves no queue: `report ... --from DIR` reads its record, with the same figures."""
    from tests.test_cli import qcgpj, write
    from qcgpj.report import RecordSource
    write(tmp_path / "jobs.json", [
        {"name": "wide", "execution": {"exec": "/bin/sleep", "args": ["0.3"]}, "resources": {"numCores": 2}},
        {"name": "after", "execution": {"exec": "/bin/sleep", "args": ["0.1"]},
         "dependencies": {"after": ["wide"]}},
        {"name": "sweep", "iteration": {"stop": 3}, "execution": {"script": "exit $(( ${it} == 1 ))"}}])
    assert qcgpj("run", "jobs.json", "--cores", "3", cwd=tmp_path).returncode == 1
    src = RecordSource(str(tmp_path))
    s = stats(src)
    assert s["jobs_by_state"] == {"SUCCEED": 2, "FAILED": 1}
    assert s["tasks"] == 5 and s["tasks_by_state"] == {"SUCCEED": 4, "FAILED": 1}
    (e,) = s["executors"]
    assert e["cores"] == 3 and e["tasks"] == 5 and e["ended"] >= e["started"]
    assert s["busy_core_seconds"] >= 2 * 0.3 + 0.1 and 0 < s["utilisation_pct"] <= 100
    assert [t.task for t in select_tasks(src, state="failed")] == ["sweep:1"]
    assert len([r for r in lanes(src) if r["task"] == "wide"]) == 2
    assert max(p["busy"] for p in utilisation(src)) <= 3
    assert s["measured_tasks"] == 5 and s["cpu_efficiency_pct"] < 100   # sleeps: CPU and memory recorded

    def cli(*args: str) -> str:
        res = qcgpj("report", *args, "--from", str(tmp_path), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return res.stdout
    assert json.loads(cli("stats", "--json"))["tasks"] == 5
    assert {r["task"] for r in json.loads(cli("jobs", "--json"))} == {"wide", "after", "sweep:0", "sweep:1",
                                                                       "sweep:2"}
    assert "sweep:1\tFAILED" in cli("jobs")
    assert len(json.loads(cli("gantt", "--json"))) == 6 and json.loads(cli("utilisation", "--json"))
    missing = qcgpj("report", "stats", "--from", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 1 and "no record of a run" in missing.stderr


OMITTING = [   # every way a task is OMITTED: after a job, an iteration, per iteration; a whole iterative job
    {"name": "bad", "execution": {"exec": "/bin/false"}},
    {"name": "ib", "iteration": {"stop": 2}, "execution": {"exec": "/bin/false"}},
    {"name": "child", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["bad"]}},
    {"name": "grand", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["child"]}},
    {"name": "itj", "iteration": {"stop": 2}, "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["bad"]}},
    {"name": "pi", "iteration": {"stop": 2}, "execution": {"exec": "/bin/true"},
     "dependencies": {"after": ["ib:${it}"]}},
    {"name": "one", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["ib:1"]}}]
LATE = [   # submitted once their dependencies have ended: omitted by the submit itself
    {"name": "late", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["bad"]}},
    {"name": "latep", "iteration": {"stop": 2}, "execution": {"exec": "/bin/true"},
     "dependencies": {"after": ["ib:${it}"]}},
    {"name": "latei", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["ib:0"]}}]
WHY = {"child": "dependency bad ended FAILED", "grand": "dependency child ended OMITTED",
       "itj:0": "dependency bad ended FAILED", "itj:1": "dependency bad ended FAILED",
       "pi:0": "dependency ib:0 ended FAILED", "pi:1": "dependency ib:1 ended FAILED",
       "one": "dependency ib:1 ended FAILED", "late": "dependency bad ended FAILED",
       "latep:0": "dependency ib:0 ended FAILED", "latep:1": "dependency ib:1 ended FAILED",
       "latei": "dependency ib:0 ended FAILED"}


def test_report_and_info_give_an_omitted_task_the_same_cause():
    """`qcgpj report jobs` gave the iterations of a job omitted whole no cause ('') where `qcgpj info` gave its
    job's ('dependency bad ended FAILED'), and the cause read 'ended FAILED' or 'did not succeed' depending on
    which path omitted the task (a submit after the dependency ended, an iteration's dependency)."""
    from qcgpj import Manager
    m = Manager(cores=2, store="fakeredis")
    try:
        m.submit(OMITTING)
        m.wait4all(timeout=120)
        m.submit(LATE)
        m.wait4all(timeout=120)
        omitted = {t.task: t.message for t in select_tasks(RedisSource(m.store), state="OMITTED")}
        assert omitted == WHY
        assert {t: m.info(t)["message"] for t in omitted} == WHY
    finally:
        m.finish()


def test_report_and_info_from_a_run_record_give_an_omitted_task_the_same_cause(tmp_path):
    """The same from a local run's record: its lines for the iterations of a job omitted whole had no message."""
    from tests.test_cli import qcgpj, write
    write(tmp_path / "jobs.json", [{"request": "submit", "jobs": OMITTING}])
    assert qcgpj("run", "jobs.json", "--cores", "2", cwd=tmp_path).returncode == 1
    rows = json.loads(qcgpj("report", "jobs", "--json", "--state", "OMITTED", "--from", str(tmp_path),
                            cwd=tmp_path).stdout)
    expected = {t: why for t, why in WHY.items() if not t.startswith("late")}
    assert {r["task"]: r["message"] for r in rows} == expected
    infos = {t: json.loads(qcgpj("info", t, "--json", "--from", str(tmp_path), cwd=tmp_path).stdout) for t in expected}
    assert {t: i.get("message") for t, i in infos.items()} == expected


def test_iterations_not_started_yet_are_counted_as_info_has_them(cluster):
    """`qcgpj report` gave an iteration without a record its job's state: during a 100,000-iteration sweep
    'tasks 100,000: EXECUTING 53,381, SUCCEED 46,619' (2 cores; `top` had 53,736 waiting) and `report jobs
    --state EXECUTING` listed iterations never placed; `qcgpj info sw:N` has them READY (or SCHEDULED once placed)."""
    m = cluster.serving(1, "--prefetch", "0")
    m.submit(Jobs().add(name="sw", script="while [ ! -e go ]; do sleep 0.05; done", iteration=3))
    wait_for(m, lambda: m.status(["sw:0"])["sw:0"] == "EXECUTING", what="sw:0 running")
    assert m.status(["sw"])["sw"] == "EXECUTING"
    got = {t.task: t.state for t in RedisSource(m.store).tasks()}
    assert got == {f"sw:{it}": rec["state"] for it, rec in m.iterations("sw").items()}
    assert got == {"sw:0": "EXECUTING", "sw:1": "READY", "sw:2": "READY"}
    (cluster.workdir / "go").touch()
    assert m.wait4(["sw"], timeout=60) == {"sw": "SUCCEED"}


ALL_OMITTED = [   # jobs whose every iteration is omitted by per-iteration dependencies
    {"name": "ib", "iteration": {"stop": 2}, "execution": {"exec": "/bin/false"}},
    {"name": "pi", "iteration": {"stop": 2}, "execution": {"exec": "/bin/true"},
     "dependencies": {"after": ["ib:${it}"]}},
    {"name": "ib1", "iteration": {"stop": 1}, "execution": {"exec": "/bin/false"}},
    {"name": "p1", "iteration": {"stop": 1}, "execution": {"exec": "/bin/true"},
     "dependencies": {"after": ["ib1:${it}"]}}]
ALL_OMITTED_WHY = {"pi": "all 2 iterations omitted, the first because dependency ib:0 ended FAILED",
                   "p1": "dependency ib1:0 ended FAILED"}


def test_a_job_whose_every_iteration_was_omitted_says_why(tmp_path):
    """Such a job ended OMITTED with an empty message: `run`'s summary said only 'pi: OMITTED', `info` no cause.
    It now gives its first iteration's cause (alone for a job of one iteration), on a queue, in a late submit's
    omission and in a local run's summary and record."""
    from qcgpj import Manager
    from tests.test_cli import qcgpj, write
    m = Manager(cores=2, store="redis-server")
    try:
        m.submit(ALL_OMITTED)
        m.wait4all(timeout=120)
        m.submit([{**j, "name": "late" + j["name"]} for j in ALL_OMITTED if j["name"][0] == "p"])   # omitted by the submit itself
        m.wait4all(timeout=120)
        got = {n: (m.info(n)["state"], m.info(n)["message"]) for n in ("pi", "p1", "latepi", "latep1")}
    finally:
        m.finish()
    assert got == {n: ("OMITTED", why) for j, why in ALL_OMITTED_WHY.items() for n in (j, "late" + j)}
    write(tmp_path / "jobs.json", ALL_OMITTED)
    res = qcgpj("run", "jobs.json", "--cores", "2", cwd=tmp_path)
    assert res.returncode == 1
    for name, why in ALL_OMITTED_WHY.items():
        assert f"{name}: OMITTED: {why}\n" in res.stdout
        info = json.loads(qcgpj("info", name, "--json", "--from", str(tmp_path), cwd=tmp_path).stdout)
        assert info["message"] == why


GATE = "while [ ! -e {go} ]; do sleep 0.05; done"


def test_report_gives_an_iteration_not_started_the_state_info_gives_it(tmp_path):
    """While an iterative job ran, `report jobs` gave its iterations not started yet the job's state (EXECUTING)
    where `info JOB:IT` gave READY or SCHEDULED; now both sources of the report, a queue and a run's record, give
    what info gives, and `info --from` the same as `info`."""
    from qcgpj import Manager, record
    from qcgpj.report import RecordSource
    from tests.test_behaviour import wait_state
    m = Manager(cores=1, store="redis-server")
    try:
        m.submit(Jobs().add(name="g", script=GATE.format(go=tmp_path / "go"), iteration=4)
                 .add(name="q", exec="/bin/true", iteration=2, after=["g"]))
        wait_state(m, "g:0", "EXECUTING")
        assert m.info("g")["state"] == "EXECUTING"
        infos = {f"{j}:{i}": m.info(f"{j}:{i}")["state"] for j, n in (("g", 4), ("q", 2)) for i in range(n)}
        assert infos["g:0"] == "EXECUTING" and {infos[f"g:{i}"] for i in (1, 2, 3)} <= {"READY", "SCHEDULED"}
        assert infos["q:0"] == infos["q:1"] == "QUEUED"
        assert {t.task: t.state for t in RedisSource(m.store).tasks()} == infos
        record.write(m, ["g", "q"], str(tmp_path), {})
        assert {t.task: t.state for t in RecordSource(str(tmp_path)).tasks()} == infos
        assert {t: record.lookup(str(tmp_path), t)["state"] for t in infos} == infos
        (tmp_path / "go").touch()
        assert m.wait4all(timeout=120) == {"g": "SUCCEED", "q": "SUCCEED"}
    finally:
        m.finish()


def _lines(directory) -> list[dict]:
    from qcgpj import record
    return [json.loads(line) for line in open(record.path_in(str(directory)))]


def _rows(source) -> list[dict]:
    from qcgpj.report import task_dicts
    return task_dicts(select_tasks(source, sort="name"))


def test_a_run_record_has_a_line_per_iteration_that_ran_and_answers_as_the_queue(tmp_path):
    """The record had a line for every iteration, also those that never started: a job of 3,000,000 iterations
    canceled after a few thousand ran took 26 s and 1.8 GB to write a record of 3,000,002 lines (and `info
    --from` 9.5 s, `report stats --from` 24 s to read it); one of 10^12 could not be written at all. It now has
    a line per iteration with a record of its own in the queue, and `info`, `status` and `report` derive the
    others from their job's line, as on the queue: here (100,000 + 3,000 iterations) 5 lines at most, with the
    same answers as the live queue, while the job runs and once it is canceled."""
    from qcgpj import Manager, record
    from qcgpj.report import RecordSource
    from tests.test_behaviour import wait_state
    n, k = 100_000, 3_000
    mid, end = tmp_path / "mid", tmp_path / "end"
    mid.mkdir()
    end.mkdir()
    m = Manager(cores=2, store="redis-server")
    try:
        m.submit(Jobs().add(name="huge", script=GATE.format(go=tmp_path / "go"), iteration=n)
                 .add(name="after", exec="/bin/true", iteration=k, after=["huge"]))
        wait_state(m, "huge:0", "EXECUTING")
        record.write(m, ["huge", "after"], str(mid), {})   # mid-run: huge EXECUTING, after QUEUED
        lines = _lines(mid)
        assert len(lines) == 3 + len(m.store.iteration_records("huge")) <= 5, len(lines)
        stable = ["after:0", f"after:{k - 1}", f"huge:{n - 1}"]   # not placed yet: no executor moves these
        assert {t: record.lookup(str(mid), t)["state"] for t in stable} == \
            {"after:0": "QUEUED", f"after:{k - 1}": "QUEUED", f"huge:{n - 1}": "READY"}
        for t in stable + ["huge:0"]:
            got = record.lookup(str(mid), t)
            assert {key: got.get(key) for key in m.info(t)} == m.info(t), t

        m.cancel(["huge"])
        assert m.wait4(["huge", "after"], timeout=60) == {"huge": "CANCELED", "after": "OMITTED"}
        record.write(m, ["huge", "after"], str(end), {})
        lines = _lines(end)
        ran = sorted(int(i) for i in m.store.iteration_records("huge"))
        assert len(lines) == 3 + len(ran) <= 5 and m.store.iteration_records("after") == {}, len(lines)
        assert not os.path.exists(record.path_in(str(end)) + ".tmp")
        tasks = [f"huge:{i}" for i in ran] + ["huge:0", "huge:5", f"huge:{n - 1}", "after:0", f"after:{k - 1}"]
        for t in tasks:   # info --from gives what info gives live, with the stderr file the task would write
            got = record.lookup(str(end), t)
            assert {key: got.get(key) for key in m.info(t)} == m.info(t), t
        assert record.lookup(str(end), "huge:5")["message"] == "canceled"
        for t in tasks[-3:]:
            res = subprocess.run(qcgpj_cmd("info", "--from", str(end), t, "--json"), capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(REPO)))
            assert res.returncode == 0, res.stderr
            assert {key: v for key, v in json.loads(res.stdout).items() if key != "stderr"} == m.info(t)

        live, rec = RedisSource(m.store), RecordSource(str(end))
        assert _rows(rec) == _rows(live)   # the same rows from the queue and from the record
        rows = _rows(rec)
        assert sum(r["count"] for r in rows) == n + k and len(rows) <= 5, rows
        first = max(ran, default=-1) + 1   # the iterations after the last that started: one row
        assert {r["task"]: r["count"] for r in rows if r["count"] > 1} == \
            {f"huge:{first}-{n - 1}": n - first, f"after:0-{k - 1}": k}
        from qcgpj.report import LIST_EACH, task_dicts
        assert all(r["count"] > LIST_EACH and r["executor"] is None for r in rows if r["count"] > 1)
        # --name of one iteration inside a run's row: that iteration comes out of it (it matched nothing)
        for source in (live, rec):
            one = task_dicts(select_tasks(source, name=f"hu*:{n - 2}"))
            assert [(r["task"], r["state"], r["count"]) for r in one] == [(f"huge:{n - 2}", "CANCELED", 1)]
        for figures in (stats(live), stats(rec)):
            assert figures["tasks"] == n + k and figures["jobs_by_state"] == {"CANCELED": 1, "OMITTED": 1}
            assert figures["tasks_by_state"] == {"CANCELED": n, "OMITTED": k}
        res = subprocess.run(qcgpj_cmd("report", "stats", "--from", str(end), "--json"), capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert json.loads(res.stdout)["tasks_by_state"] == {"CANCELED": n, "OMITTED": k}, res.stderr
        res = subprocess.run(qcgpj_cmd("status", "--from", str(end), "huge:5", "after:7", "--json"),
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert json.loads(res.stdout)["jobs"] == {"huge:5": "CANCELED", "after:7": "OMITTED"}, res.stderr
    finally:
        m.finish()


def test_an_older_record_with_a_line_for_every_iteration_still_reads(tmp_path):
    """Records written before had a line for each iteration, the unstarted ones with only a state and message:
    they read as they did (the job's line is not asked about iterations that have one)."""
    from qcgpj import record
    from qcgpj.report import RecordSource
    spec = {"name": "j", "execution": {"exec": "/bin/true"}, "iteration": {"stop": 3}}
    lines = [{"run": {"started": 1.0, "ended": 2.0}},
             {"name": "j", "state": "CANCELED", "spec": spec, "attempts": 0, "executor": None, "created": 1.0,
              "start": 1.0, "end": 2.0, "exit_code": None, "message": "canceled",
              "iterations": {"total": 3, "start": 0, "finished": 3, "SUCCEED": 1, "FAILED": 0, "CANCELED": 2,
                             "OMITTED": 0}, "stderr": None},
             {"name": "j:0", "state": "SUCCEED", "exit_code": 0, "executor": "e", "start": 1.0, "end": 1.5,
              "attempt": 0, "message": "", "stderr": None},
             {"name": "j:1", "state": "CANCELED", "message": "canceled", "stderr": None},
             {"name": "j:2", "state": "CANCELED", "message": "canceled", "stderr": None}]
    (tmp_path / record.RECORD_FILE).write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert [(r["task"], r["state"], r["count"]) for r in _rows(RecordSource(str(tmp_path)))] == \
        [("j:0", "SUCCEED", 1), ("j:1", "CANCELED", 1), ("j:2", "CANCELED", 1)]
    assert record.lookup(str(tmp_path), "j:2") == lines[4]
    assert stats(RecordSource(str(tmp_path)))["tasks_by_state"] == {"SUCCEED": 1, "CANCELED": 2}
