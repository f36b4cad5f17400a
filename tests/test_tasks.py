"""What a task is told of its allocation (``tasks.build_launch``): one node has a path of its own, so both shapes
are pinned here, as seen from the task's node and from another."""
from __future__ import annotations

import json

import pytest

from qcgpj.jobspec import JobSpec
from qcgpj.resources import Allocation
from qcgpj.store import Entry
from qcgpj.tasks import build_launch

NAMES = ("QCGPJ_NCORES", "QCGPJ_NNODES", "QCGPJ_NODES", "QCGPJ_CORES", "QCGPJ_NODE_CORES", "QCG_PM_NNODES",
         "QCG_PM_NODELIST", "QCG_PM_NPROCS", "QCG_PM_NTASKS", "QCG_PM_TASKS_PER_NODE", "QCG_PM_CPU_SET")


@pytest.mark.parametrize("parts, node, told", [
    ((("n0", (2,)),), "n0", ("1", "1", "n0", "2", "n0=2", "1", "n0", "1", "1", "1", "2")),
    ((("n0", (3, 1)),), "n0", ("2", "1", "n0", "3,1", "n0=3,1", "1", "n0", "2", "2", "2", "3,1")),
    ((("n0", (3, 1)),), "n1", ("2", "1", "n0", "", "n0=3,1", "1", "n0", "2", "2", "2", "3,1")),
    ((("n0", (0, 1)), ("n1", (5,))), "n1",
     ("3", "2", "n0,n1", "5", "n0=0,1;n1=5", "2", "n0,n1", "3", "3", "2,1", "0,1,5")),
])
def test_a_task_is_told_its_cores_and_nodes(tmp_path, parts, node, told):
    spec = JobSpec.from_json(json.dumps({"name": "j", "execution": {
        "exec": "echo", "args": ["${ncores}", "${nnodes}", "${nlist}", "${it}"]}}))
    launch = build_launch(spec, Entry.parse("j:4|1|0|0"), Allocation(parts), str(tmp_path), node, None, {"A": "b"})
    env = launch.ctx.env
    assert tuple(env[n] for n in NAMES) == told
    assert launch.ctx.argv == ["echo", told[0], told[1], told[2], "4"]
    assert env["A"] == "b" and env["QCGPJ_TASK"] == env["QCG_PM_STEP_ID"] == "j:4" and env["QCGPJ_ITERATION"] == "4"
