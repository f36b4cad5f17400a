"""Slurm launch modes: each task is an ``srun`` step on the nodes and cores the executor chose.

``--overlap`` lets steps share the allocation: qcgpj, not Slurm, decides who uses which cores. A step does not
ask Slurm for a CPU count (``-c`` implies ``--exact``), because Slurm's task plugins then give every concurrent
step the same first CPUs of the node; it runs on all the allocation's CPUs there, and ``cpubind.py``, started
first in the step, binds the task to its own (``model_opts.cpu_bind: false`` leaves it unbound).
``model_opts.srun_args`` adds arguments to srun. A task with GPUs (``nodeCrs``) asks the step for as many per
node (``--gpus-per-node``), so that a cluster that confines devices lets it reach them; it also gets the ids qcgpj
chose in ``CUDA_VISIBLE_DEVICES`` (Slurm may renumber them inside a step it confines).
"""
from __future__ import annotations

import functools
import logging
import re
import subprocess
import sys
from pathlib import Path

from .base import ProcessWorker, TaskContext

log = logging.getLogger(__name__)

CPUBIND = str(Path(__file__).with_name("cpubind.py"))
#: srun options read from the environment that the allocation's own (``salloc -c 8 --ntasks-per-node=4``, a worker
#: started by ``srun -n2 -c4``) would set for every step: each task's step says its own layout on the command line
LAYOUT_VARS = ("SLURM_CPUS_PER_TASK", "SRUN_CPUS_PER_TASK", "SLURM_NTASKS_PER_NODE", "SLURM_NTASKS_PER_CORE",
               "SLURM_NTASKS_PER_SOCKET", "SLURM_NTASKS_PER_GPU", "SLURM_DISTRIBUTION", "SLURM_EXACT",
               "SLURM_EXCLUSIVE")


def overlap_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a task inside an allocation, with ``SLURM_OVERLAP=1``: a step the task starts itself (a
    script's ``srun app``, the daemons ``mpirun`` starts through srun) asked Slurm for its nodes' CPUs without
    ``--overlap``, so it waited ('step creation temporarily disabled') for another task's own step on those nodes
    to end: two such parts on a node ran one after the other, or, waiting for each other, not at all."""
    return {**env, "SLURM_OVERLAP": "1"} if env.get("SLURM_JOB_ID") else env


def main_part(ctx: TaskContext) -> tuple[str, tuple[int, ...]]:
    """The node (and its cores) where a one-process task runs: the one with the most of its cores. A task larger
    than any node spreads over several, in node order: the first (``parts[0]``) may hold the fewest (6 cores as 2
    on node1 and 4 on node2 ran the process bound to 2 CPUs, and OMP_NUM_THREADS=2)."""
    return max(ctx.allocation.parts, key=lambda part: len(part[1]))


@functools.cache
def slurm_binds_cpus() -> bool:
    """Whether the cluster's task plugin binds CPUs; where it does not (task/none), ``--cpu-bind`` only draws
    a warning into every task's stderr. Asked once per executor."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("scontrol show config: %s", exc)
        return True
    m = re.search(r"^TaskPlugin\s*=\s*(\S+)", out, re.M)
    return not (m and m.group(1) == "task/none")


class SrunWorker(ProcessWorker):
    """``default`` inside a Slurm allocation: one process on the task's first node, bound to its cores."""

    name = "srun"
    bind_cpus = False     # the executor's CPU mask would bind srun itself, not the task on its node

    def srun_prefix(self, ctx: TaskContext, hosts: list[str], per_rank: int) -> list[str]:
        """srun for one rank per entry of ``hosts`` (a node repeated once per rank on it), in that order."""
        nodes = list(dict.fromkeys(hosts))
        argv = ["srun", "--overlap", "--quiet", "--kill-on-bad-exit=1", f"--nodes={len(nodes)}",
                f"--ntasks={len(hosts)}"]
        if len(hosts) > len(nodes):
            argv += [f"--nodelist={','.join(hosts)}", "--distribution=arbitrary"]
        else:
            argv.append(f"--nodelist={','.join(nodes)}")
        if slurm_binds_cpus():
            argv.append("--cpu-bind=none")
        if ctx.allocation.gpus:   # nodeCrs: the step may use as many GPUs on each node as qcgpj gave it
            argv.append(f"--gpus-per-node={len(ctx.allocation.gpus[0][1])}")
        argv += map(str, ctx.model_opts.get("srun_args", []))
        if ctx.model_opts.get("cpu_bind", True):
            argv += [sys.executable, "-I", "-S", CPUBIND, ctx.allocation.to_text(), str(per_rank), "--"]
        return argv

    def environment(self, ctx: TaskContext) -> dict[str, str]:
        """The task's environment without the allocation's layout variables: srun took them as options (a
        warning in the stderr of every task of several ranks, ``can't honor --ntasks-per-node``; on Slurm 23.11
        ``-c`` again) and the task read them as its own (``SLURM_CPUS_PER_TASK=8`` for a task of 2 cores, whose
        ``OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK`` oversubscribed them). The binder sets SLURM_CPUS_PER_TASK to
        each rank's cores. With SLURM_OVERLAP=1 (``overlap_env``)."""
        env = {k: v for k, v in ctx.env.items() if k not in LAYOUT_VARS}
        return overlap_env(env)

    def command(self, ctx: TaskContext) -> list[str]:
        node, _cores = main_part(ctx)
        return self.srun_prefix(ctx, [node], 0) + self.wrap_argv(ctx, ctx.argv)


class SrunThreadsWorker(SrunWorker):
    """``threads`` inside a Slurm allocation: an OpenMP process as one step on one node."""

    name = "srunthreads"

    def environment(self, ctx: TaskContext) -> dict[str, str]:
        env = dict(super().environment(ctx))
        env["OMP_NUM_THREADS"] = str(len(main_part(ctx)[1]))
        env.setdefault("OMP_PROC_BIND", "true")   # as outside Slurm (threads.py): threads stay on their cores
        return env


class SrunMpiWorker(SrunWorker):
    """``srunmpi``: one rank per core, over all the task's nodes, started by Slurm; each rank bound to its core."""

    name = "srunmpi"

    def command(self, ctx: TaskContext) -> list[str]:
        hosts = [node for node, cores in ctx.allocation.parts for _core in cores]
        return self.srun_prefix(ctx, hosts, 1) + self.wrap_argv(ctx, ctx.argv)
