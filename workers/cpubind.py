"""Run first in every srun step: bind this process to its task's cores on this node, then exec the task.

Concurrent ``srun --overlap`` steps that ask for one CPU each all get the same first CPU of the node from
Slurm's task/affinity plugin (seen on Slurm 22.05), so qcgpj starts its steps on all the allocation's CPUs of a
node and binds each task itself. The executor cannot: its core ``k`` of a node is the k-th CPU the allocation
has there, which only that node knows (on a shared node it may be CPU 40, not 0).

Started as ``python -I -S cpubind.py SPEC PER_RANK -- argv...``, importing only the standard library: SPEC is
the task's allocation (``node1=0,1;node2=0``), PER_RANK the cores of each rank (0: all of the node's). The node
comes from SLURMD_NODENAME, the rank on it from SLURM_LOCALID. QCGPJ_CORES is set to the CPUs the task is bound
to, and SLURM_CPUS_PER_TASK to its rank's number of cores (its step asks Slurm for none: see ``slurm.py``). What
cannot be bound (a node not in SPEC, a refused mask) runs unbound rather than not at all.
``node_cores`` and ``rank_cpus`` repeat ``Allocation.cores_on`` and ``CpuMap.binding`` on purpose: with ``-S``
qcgpj is not importable here, and importing it would cost the step the redis client's start-up.
"""
from __future__ import annotations

import os
import sys


def node_cores(spec: str, node: str) -> list[int]:
    """This node's cores of the allocation text (``Allocation.to_text``)."""
    for part in filter(None, spec.split(";")):
        name, _, cores = part.partition("=")
        if name == node:
            return [int(c) for c in cores.split(",") if c]
    return []


def rank_cpus(cores: list[int], per_rank: int, rank: int, available: list[int]) -> set[int]:
    """The CPUs for local ``rank``: its share of ``cores``, each the k-th of the CPUs the step may use."""
    if per_rank > 0:
        cores = cores[rank * per_rank:(rank + 1) * per_rank]
    if not cores or not available:
        return set()
    return {available[k % len(available)] for k in cores}


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: cpubind.py SPEC PER_RANK -- COMMAND...", file=sys.stderr)
        return 2
    spec, per_rank, argv = args[0], int(args[1]), args[3:]
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]
    rank = int(os.environ.get("SLURM_LOCALID", "0"))
    available = sorted(os.sched_getaffinity(0))
    cores = node_cores(spec, node)
    cpus = rank_cpus(cores, per_rank, rank, available)
    os.environ["SLURM_CPUS_PER_TASK"] = str(per_rank or len(cores) or 1)
    if cpus and cpus != set(available):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:
            print(f"qcgpj: cannot bind to CPUs {sorted(cpus)}: {exc.strerror}; running unbound", file=sys.stderr)
            cpus = set()
    if cpus:    # the executor cannot know these CPU ids of another node: the task learns them here
        os.environ["QCGPJ_CORES"] = ",".join(map(str, sorted(cpus)))
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"qcgpj: cannot run '{argv[0]}': {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
