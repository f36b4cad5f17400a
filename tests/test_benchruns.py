"""``qcgpj bench --runs N [--against DIR]``: figures as ranges over runs, interleaved with another checkout's."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from qcgpj.benchruns import fmt, ranges, table
from qcgpj.workers import sweep
from tests.cluster import qcgpj_cmd
from tests.test_cancel_iterations import _gone, _state
from tests.test_cli import REPO, qcgpj

SMALL = ["--start-redis", "-w", "spawn", "-w", "chain", "--tasks", "40", "--chain", "5"]


def other_checkout(tmp_path: Path, what: str) -> Path:
    """A copy of this checkout (its package and the launch plugins, which an install puts inside it) whose spawn
    row says ``what``: its rows show which code ran."""
    top = tmp_path / "other"
    for part in ("qcgpj", "workers"):
        shutil.copytree(REPO / part, top / part, ignore=shutil.ignore_patterns("__pycache__"))
    bench = top / "qcgpj" / "bench.py"
    text = bench.read_text()
    assert '/bin/true, no queue"' in text
    bench.write_text(text.replace('/bin/true, no queue"', f'/bin/true, {what}"'))
    return top


def test_runs_give_each_figure_as_its_range(tmp_path):
    res = qcgpj("bench", *SMALL, "--runs", "2", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [(r["version"], r["run"]) for r in out["runs"]] == [("this", 1), ("this", 2)]
    chains = [next(row for row in r["rows"] if row["workload"] == "chain") for r in out["runs"]]
    got = next(row for row in out["ranges"]["this"] if row["workload"] == "chain")
    values = [c["value"] for c in chains]
    assert got["value"] == [min(values), max(values)]
    hops = [c["extra"]["executor_cpu_us"] for c in chains]
    assert got["extra"]["executor_cpu_us"] == [min(hops), max(hops)]
    assert "run 2/2: this" in res.stderr   # each run is announced as it starts: a series takes minutes


def test_against_interleaves_the_other_checkouts_runs(tmp_path):
    """Each version's own code runs: the other checkout's, even when the command is started from inside another
    checkout (where ``python -m qcgpj`` looks first)."""
    other = other_checkout(tmp_path / "a", "the other checkout")
    here = other_checkout(tmp_path / "b", "the checkout the command runs in")
    res = qcgpj("bench", *SMALL, "--runs", "2", "--against", str(other), "--json", cwd=here)
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    assert [(r["version"], r["run"]) for r in runs] == [("this", 1), ("against", 1), ("this", 2), ("against", 2)]
    spawn = {(r["version"], r["run"]): r["rows"][0]["what"] for r in runs}
    assert spawn[("against", 1)] == spawn[("against", 2)] == "40 /bin/true, the other checkout"
    # "this" is the code that runs the command (here: python -m found the working directory's package first)
    assert spawn[("this", 1)] == spawn[("this", 2)] == "40 /bin/true, the checkout the command runs in"


def test_the_table_gives_a_line_per_version_and_row(tmp_path):
    other = other_checkout(tmp_path, "no queue")
    res = qcgpj("bench", *SMALL, "--runs", "1", "--against", str(other), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "qcgpj bench, 1 run(s) of this and against interleaved, ranges min-max over the runs"
    assert [(line[:11].strip(), line[49:57].strip()) for line in lines[2:]] == [
        ("spawn", "this"), ("spawn", "against"), ("spawn1", "this"), ("spawn1", "against"),
        ("chain", "this"), ("chain", "against")]
    assert all("executor_cpu_us=" in line for line in lines[6:])


def test_against_a_directory_without_qcgpj_is_one_line(tmp_path):
    res = qcgpj("bench", *SMALL, "--against", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"Error: --against {tmp_path}: no qcgpj package there (give a checkout's top directory)"]


def test_a_failing_run_names_its_version_and_why(tmp_path):
    other = tmp_path / "broken"
    (other / "qcgpj").mkdir(parents=True)
    (other / "qcgpj" / "__init__.py").write_text("")   # a package, but no command in it
    res = qcgpj("bench", *SMALL, "--against", str(other), cwd=tmp_path)
    assert res.returncode == 1
    (line,) = res.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"Error: bench run of against ({other}) failed: ") and "qcgpj" in line


def test_ranges_and_their_text():
    runs = [[{"workload": "tasks", "what": "w", "unit": "tasks/s", "value": 10.0,
              "extra": {"state": "SUCCEED", "cpu": 5, "gone": None}}],
            [{"workload": "tasks", "what": "w", "unit": "tasks/s", "value": 12.5,
              "extra": {"state": "FAILED", "cpu": 5, "gone": None}}]]
    (row,) = ranges(runs)
    assert row["value"] == [10.0, 12.5] and row["extra"]["cpu"] == [5, 5]
    assert fmt(row["value"]) == "10-12.5" and fmt(row["extra"]["cpu"]) == "5"
    assert row["extra"]["state"] == ["FAILED", "SUCCEED"]   # the values themselves, for --json
    assert fmt(row["extra"]["state"]) == "FAILED/SUCCEED" and row["extra"]["gone"] == []
    done = [{"version": "this", "run": 1, "rows": runs[0]}, {"version": "this", "run": 2, "rows": runs[1]}]
    assert table(done, 2)[2].split() == ["tasks", "w", "this", "10-12.5", "tasks/s", "state=FAILED/SUCCEED", "cpu=5"]


def test_each_run_gets_the_options_given_and_nothing_else(tmp_path, monkeypatch):
    """Only what the user gave is passed on (defaults stay the run's own), the series' options are not, and a
    relative path still names the same file from the run's own directory."""
    from qcgpj.bench_cli import _forwarded, bench
    monkeypatch.chdir(tmp_path)
    ctx = bench.make_context("bench", ["-w", "spawn", "-w", "chain", "--tasks", "40", "--start-redis",
                                       "--executors", "1,3", "--qcg-pm-service", "bin/qcg-pm-service",
                                       "--runs", "3", "--against", "..", "--json", "-vv"])
    assert _forwarded(ctx) == ["--start-redis", "--workload", "spawn", "--workload", "chain", "--tasks", "40",
                               "--qcg-pm-service", str(tmp_path / "bin" / "qcg-pm-service"),
                               "--executors", "1,3"]


def test_versions_with_different_rows_are_matched_by_workload():
    """An older version may lack a row (here spawn1): the rows after it still face their own workload."""
    def row(workload, value):
        return {"workload": workload, "what": workload, "unit": "u", "value": value, "extra": {}}
    done = [{"version": "this", "run": 1, "rows": [row("spawn", 1), row("spawn1", 2), row("submit", 3),
                                                   row("submit", 4)]},
            {"version": "against", "run": 1, "rows": [row("spawn", 5), row("submit", 7), row("submit", 8)]}]
    assert [(line[:11].strip(), line[49:57].strip(), line.split()[3]) for line in table(done, 1)[2:]] == [
        ("spawn", "this", "1"), ("spawn", "against", "5"), ("spawn1", "this", "2"), ("submit", "this", "3"),
        ("submit", "against", "7"), ("submit", "this", "4"), ("submit", "against", "8")]


def _started_by(pid: int, n: int) -> list[int]:
    """The first ``n`` processes the bench (session leader ``pid``) started, once they exist (polled: nothing
    announces a process)."""
    deadline = time.monotonic() + 60
    while len(found := sweep.session_and_descendants(pid) - {pid}) < n:
        assert time.monotonic() < deadline, f"{pid} did not start {n} processes"
        time.sleep(0.05)
    return sorted(found)


@pytest.mark.parametrize("series", [False, True])
def test_a_killed_bench_leaves_nothing_running(tmp_path, series):
    """SIGKILL gives a process no chance to stop what it started: its private redis-server, InputQueue and
    worker (and, for a series, the run under way) end with it, through the parent-death signal; the worker's
    executor process too (it would drain, waiting for the dead Redis for ever)."""
    args = ["bench", "--start-redis", "-w", "chain", "--chain", "1000000"] + (["--runs", "2"] if series else [])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen(qcgpj_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        started = _started_by(p.pid, 5 if series else 4)   # (the run,) redis-server, InputQueue, worker, executor
    finally:
        p.kill()
        p.wait()
    left = [pid for pid in started if not _gone(pid)]
    assert not left, [(pid, _state(pid), _cmdline(pid)) for pid in left]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
