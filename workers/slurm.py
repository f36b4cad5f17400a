"""Slurm launch modes: each task is an ``srun`` step on the nodes and core count the executor chose.

``--overlap`` lets steps share the allocation (qcgpj, not Slurm, decides who uses which cores) and ``--exact``
gives each step only the CPUs it asked for. CPU binding of steps needs a task plugin that allows it; sites that
have one can add ``--cpu-bind`` through ``model_opts.srun_args``.
"""
from __future__ import annotations

from workers.base import ProcessWorker, TaskContext


class SrunWorker(ProcessWorker):
    """``default`` inside a Slurm allocation: one process on the task's first node, with its cores."""

    name = "srun"
    bind_cpus = False

    def srun_prefix(self, ctx: TaskContext, ntasks: int, cpus_per_task: int) -> list[str]:
        nodes = ctx.allocation.nodes
        return ["srun", "--overlap", "--exact", "--quiet", "--kill-on-bad-exit=1", f"--nodes={len(nodes)}",
                f"--ntasks={ntasks}", f"--cpus-per-task={cpus_per_task}", f"--nodelist={','.join(nodes)}",
                *map(str, ctx.model_opts.get("srun_args", []))]

    def command(self, ctx: TaskContext) -> list[str]:
        node, cores = ctx.allocation.parts[0]
        first = TaskContext(**{**{f: getattr(ctx, f) for f in ctx.__slots__},
                               "allocation": type(ctx.allocation)(((node, cores),))})
        return self.srun_prefix(first, 1, len(cores)) + self.wrap_argv(ctx, ctx.argv)


class SrunThreadsWorker(SrunWorker):
    """``threads`` inside a Slurm allocation: an OpenMP process as one step on one node."""

    name = "srunthreads"

    def environment(self, ctx: TaskContext) -> dict[str, str]:
        env = dict(ctx.env)
        env["OMP_NUM_THREADS"] = str(len(ctx.allocation.parts[0][1]))
        return env


class SrunMpiWorker(SrunWorker):
    """``srunmpi``: one rank per core, over all the task's nodes, started by Slurm."""

    name = "srunmpi"

    def command(self, ctx: TaskContext) -> list[str]:
        return self.srun_prefix(ctx, ctx.allocation.ncores, 1) + self.wrap_argv(ctx, ctx.argv)
