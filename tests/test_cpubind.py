"""The binder started first in every srun step: a task ends up on its own cores of the node it runs on, each
core being the k-th CPU the step may use there, and runs unbound rather than not at all."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

import pytest

from qcgpj.workers.cpubind import rank_cpus
from qcgpj.workers.slurm import CPUBIND

CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
SHOW = (sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))")


def bound(spec: str, per_rank: int, node: str, rank: int = 0,
          argv: Sequence[str] = SHOW) -> subprocess.CompletedProcess:
    env = dict(os.environ, SLURMD_NODENAME=node, SLURM_LOCALID=str(rank))
    return subprocess.run([sys.executable, "-I", "-S", CPUBIND, spec, str(per_rank), "--", *argv], env=env,
                          capture_output=True, text=True, timeout=60)


@needs_two
def test_a_task_is_bound_to_its_cores_on_its_own_node():
    res = bound("n1=0;n2=1", 0, "n2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str([CPUS[1]])
    told = bound("n1=0;n2=1", 0, "n2", argv=["/bin/sh", "-c", "echo $QCGPJ_CORES"])
    assert told.stdout.strip() == str(CPUS[1])


@needs_two
def test_each_rank_gets_its_own_core():
    outs = [bound("n1=0,1", 1, "n1", rank).stdout.strip() for rank in (0, 1)]
    assert outs == [str([CPUS[0]]), str([CPUS[1]])]


def test_a_node_not_in_the_allocation_runs_unbound():
    res = bound("n1=0", 0, "elsewhere")
    assert res.returncode == 0 and res.stdout.strip() == str(CPUS)


def test_cores_map_onto_the_cpus_the_step_may_use():
    assert rank_cpus([0, 1], 0, 0, [40, 41, 42]) == {40, 41}       # a shared node: the job has CPUs 40-42
    assert rank_cpus([0, 1, 2, 3], 2, 1, [8, 9, 10, 11]) == {10, 11}
    assert rank_cpus([5], 0, 0, [0, 1]) == {1}                      # more cores declared than CPUs: wrapped
    assert rank_cpus([0], 1, 3, [0, 1]) == set()                    # a rank beyond the cores: unbound


def test_a_missing_command_fails_with_its_name():
    res = bound("n1=0", 0, "n1", argv=["/nonexistent/sim"])
    assert res.returncode == 127
    assert "cannot run '/nonexistent/sim'" in res.stderr
