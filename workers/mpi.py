"""MPI launch modes through ``mpirun``: one rank per core of the task, on the task's nodes.

``model_opts``: ``mpirun`` (the launcher's path, default ``mpirun``) and ``mpirun_args`` (extra arguments).
"""
from __future__ import annotations

import os

from .base import ProcessWorker, TaskContext
from .slurm import overlap_env


class _MpiWorker(ProcessWorker):
    bind_cpus = False

    def environment(self, ctx: TaskContext) -> dict[str, str]:
        return overlap_env(ctx.env)   # inside Slurm mpirun starts its daemons as a step of the allocation

    def launcher(self, ctx: TaskContext) -> list[str]:
        return [str(ctx.model_opts.get("mpirun", "mpirun")), *map(str, ctx.model_opts.get("mpirun_args", []))]


class OpenMpiWorker(_MpiWorker):
    """``openmpi``: ``mpirun --host n1:c1,n2:c2 -np N``."""

    name = "openmpi"

    def command(self, ctx: TaskContext) -> list[str]:
        hosts = ",".join(f"{n}:{len(c)}" for n, c in ctx.allocation.parts)
        return [*self.launcher(ctx), "--host", hosts, "-np", str(ctx.allocation.ncores),
                *self.wrap_argv(ctx, ctx.argv)]


class IntelMpiWorker(_MpiWorker):
    """``intelmpi``: ``mpirun -machinefile F -n N``, F listing ``node:cores`` lines."""

    name = "intelmpi"

    def command(self, ctx: TaskContext) -> list[str]:
        path = os.path.join(ctx.cwd, f".qcgpj-{ctx.task_id.replace(':', '-')}.hosts")
        with open(path, "w") as f:
            f.writelines(f"{n}:{len(c)}\n" for n, c in ctx.allocation.parts)
        return [*self.launcher(ctx), "-machinefile", path, "-n", str(ctx.allocation.ncores),
                *self.wrap_argv(ctx, ctx.argv)]
