"""Job files shaped like QCG-PilotJob's example-scripts (site programs replaced by `sh -c echo`, sleeps shortened)
run under `qcgpj run` to the final states and output files QCG-PilotJob 0.14.2 gave for them, measured with its
`qcg-pm-service --file-path F --nodes 8`. Local mode; the run's record gives the states."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster import qcgpj_cmd

FINISH = {"request": "control", "command": "finishAfterAllTasksDone"}


def sh(name: str, line: str, **execution) -> dict:
    return {"name": name, "execution": {"exec": "/bin/sh", "args": ["-c", line], **execution}}


EXAMPLES = {
    # name -> (file content, {job: state}, files that must exist afterwards)
    "date": ([{"request": "submit", "jobs": [
        {"name": "date", "execution": {"exec": "/bin/date", "env": {}, "wd": "date.sandbox",
                                       "stdout": "out.${ncores}.${nnodes}.stdout",
                                       "stderr": "out.${ncores}.${nnodes}.stderr"},
         "resources": {"numCores": {"exact": 4}}}]}, FINISH],
        {"date": "SUCCEED"}, ["date.sandbox/out.4.1.stdout", "date.sandbox/out.4.1.stderr"]),
    "env": ([{"request": "submit", "jobs": [
        {"name": "env_${rcnt}", "execution": {"exec": "/usr/bin/env", "stdout": "env.stdout", "stderr": "env.stderr"}}]},
        FINISH], {"env_1": "SUCCEED"}, ["env.stdout"]),
    "venv": ([{"request": "submit", "jobs": [
        sh("venv", "echo python", venv="/no/such/venv", wd="venv.sandbox", stdout="venv.${ncores}.${nnodes}.stdout")]},
        FINISH], {"venv": "FAILED"}, []),
    # a single request object: QCG-PilotJob 0.14.2 refuses such a file; qcgpj runs it
    "script-after": ({"request": "submit", "jobs": [
        {**sh("before_${rcnt}", "echo before", wd="tmp/after-${rcnt}", stdout="before.stdout"),
         "resources": {"numCores": {"exact": 1}}},
        {**sh("after_${rcnt}", "echo after", wd="tmp/after-${rcnt}", stdout="after.stdout"),
         "resources": {"numCores": {"exact": 1}}, "dependencies": {"after": ["before_${rcnt}"]}}]},
        {"before_1": "SUCCEED", "after_1": "SUCCEED"}, ["tmp/after-1/before.stdout", "tmp/after-1/after.stdout"]),
    "sleep": ([{"request": "submit", "jobs": [
        {"name": "msleep2", "execution": {"exec": "/bin/sleep", "args": ["1"], "wd": "sleep.sandbox",
                                          "stdout": "sleep2.${ncores}.${nnodes}.stdout"},
         "resources": {"numCores": {"exact": 1}}}]}, FINISH],
        {"msleep2": "SUCCEED"}, ["sleep.sandbox/sleep2.1.1.stdout"]),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_file_ends_as_in_qcg_pilotjob(tmp_path: Path, name: str) -> None:
    content, states, files = EXAMPLES[name]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(content))
    res = subprocess.run(qcgpj_cmd("run", str(path), "--nodes", "n0:8"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == (0 if set(states.values()) == {"SUCCEED"} else 1), res.stderr
    got = subprocess.run(qcgpj_cmd("status", "--from", str(tmp_path), "--json"), capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["jobs"] == states
    for f in files:
        assert (tmp_path / f).exists(), f


def test_an_iteration_variable_in_a_name_is_a_clear_error(tmp_path: Path) -> None:
    """QCG-PilotJob 0.14.2 runs nothing for its iter-scheduler and sleep-iter examples (the error only in its
    log) and exits 0; qcgpj says why and exits 1."""
    path = tmp_path / "iter.json"
    path.write_text(json.dumps([{"request": "submit", "jobs": [
        {"name": "sleep-iter_${it}", "iteration": {"start": 1, "stop": 8},
         "execution": {"exec": "/bin/sleep", "args": ["1"]}}]}, FINISH]))
    res = subprocess.run(qcgpj_cmd("run", str(path), "--nodes", "n0:8"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and "${it}" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("nodes, total", [("8", (1, 8)), ("3,2", (2, 5)), ("a:1,2", (2, 3))])
def test_nodes_given_as_qcg_pilotjob_takes_them(tmp_path: Path, nodes: str, total: tuple[int, int]) -> None:
    """qcg-pm-service --nodes 8 (its resources example's command line) names an unnamed node n<position>; qcgpj run
    refused it (expected NAME:CORES)."""
    path = tmp_path / "resources.json"
    path.write_text(json.dumps([{"request": "resourcesInfo"}, FINISH]))
    res = subprocess.run(qcgpj_cmd("run", str(path), "--nodes", nodes, "--json"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.splitlines()[0])["data"]
    assert (info["total_nodes"], info["total_cores"]) == total
