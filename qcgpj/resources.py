"""What an executor owns (nodes and cores, found in the Slurm allocation or on this machine; GPUs and memory:
``qcgpj.gpus``) and how it hands out concrete cores and GPUs to tasks."""
from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass, replace
from typing import Mapping

from .gpus import declared_gpus, detect_gpus, detect_mem

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    cores: tuple[int, ...]
    gpus: tuple[str, ...] = ()   # GPU ids, as the node's CUDA_VISIBLE_DEVICES names them
    mem: int = 0                 # MiB declared (0: not declared)


@dataclass(frozen=True, slots=True)
class Allocation:
    """Concrete cores given to one task: ((node, (core ids...)), ...); and its GPUs, if it asked for some:
    ((node, (GPU ids...)), ...)."""

    parts: tuple[tuple[str, tuple[int, ...]], ...]
    gpus: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def ncores(self) -> int:
        return sum(len(c) for _n, c in self.parts)

    @property
    def nnodes(self) -> int:
        return len(self.parts)

    @property
    def nodes(self) -> list[str]:
        return [n for n, _c in self.parts]

    def cores_on(self, node: str) -> list[int]:
        """The cores of this allocation on ``node`` (the executor's own node: the ones it binds the task to)."""
        return [c for n, cores in self.parts if n == node for c in cores]

    def gpus_on(self, node: str) -> list[str]:
        return [g for n, ids in self.gpus if n == node for g in ids]

    def to_text(self) -> str:
        return ";".join(f"{n}={','.join(map(str, c))}" for n, c in self.parts)

    def compact(self) -> str:
        """As reported to Redis with the task's start and kept in its record: ``n0:0-3,n1:0-1+4`` (a node's core
        ranges joined by '+'), a few bytes per task."""
        return ",".join(f"{n}:{_ranges(c)}" for n, c in self.parts)

    @classmethod
    def from_text(cls, s: str) -> "Allocation":
        parts = []
        for part in filter(None, s.split(";")):
            n, _, cores = part.partition("=")
            parts.append((n, tuple(int(c) for c in cores.split(",") if c)))
        return cls(tuple(parts))


def _ranges(cores: tuple[int, ...]) -> str:
    runs: list[list[int]] = []
    for c in sorted(cores):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "+".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_compact(text: str | None) -> dict[str, list[int]]:
    """``Allocation.compact`` back to {node: [cores]}; {} for none."""
    nodes: dict[str, list[int]] = {}
    for part in filter(None, (text or "").split(",")):
        name, _, ranges = part.rpartition(":")
        cores = nodes.setdefault(name, [])
        for r in ranges.split("+"):
            a, _, b = r.partition("-")
            cores.extend(range(int(a), int(b or a) + 1))
    return nodes


# ---------------------------------------------------------------------- Slurm syntax
def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def _expand_range(spec: str) -> list[str]:
    out = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo) if lo.startswith("0") else 0
            out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
        else:
            out.append(part)
    return out


def expand_hostlist(text: str) -> list[str]:
    """Slurm host lists, as ``scontrol show hostnames`` expands them: ``n[1-3,5]``, ``a[01-03]b,c``."""
    hosts: list[str] = []
    for item in _split_top(text):
        m = re.search(r"\[([^\]]+)\]", item)
        if not m:
            hosts.append(item)
            continue
        head, tail = item[:m.start()], item[m.end():]
        for mid in _expand_range(m.group(1)):
            hosts.extend(expand_hostlist(head + mid + tail))
    return hosts


def parse_cpus_per_node(text: str, n_nodes: int) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE``: ``4(x8)``, ``3,1``, ``8(x2),4``."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"cannot read SLURM_JOB_CPUS_PER_NODE={text!r}")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    if len(out) != n_nodes:
        raise ValueError(f"SLURM_JOB_CPUS_PER_NODE={text!r} gives {len(out)} nodes, the node list has {n_nodes}")
    return out


# Cores of one node, as declared (--cores, --nodes): beyond any machine, and a typo's extra zeros
# (--cores 1000000000) must not build a list of a billion cores.
MAX_NODE_CORES = 65536


def _check_node_cores(cores: int, what: str) -> None:
    if cores > MAX_NODE_CORES:
        raise ValueError(f"{what}: more than {MAX_NODE_CORES} cores on one node, more than any machine has")


def parse_nodes_option(text: str) -> list[Node]:
    """``--nodes n1:4,n2:4``, or with GPUs ``n1:32:4`` (NAME:CORES:GPUS); a bare ``4`` is node ``n<position>``
    with 4 cores, as QCG-PilotJob's ``--nodes 4`` or ``--nodes 2,2``."""
    nodes = []
    for i, part in enumerate(filter(None, text.split(","))):
        fields = [f"n{i}", part] if part.isdigit() else part.split(":")
        if len(fields) not in (2, 3) or not fields[0] or not fields[1].isdigit() or int(fields[1]) < 1:
            raise ValueError(f"--nodes: expected NAME:CORES or NAME:CORES:GPUS, got {part!r}")
        name, cores, *rest = fields
        _check_node_cores(int(cores), f"--nodes {name}")
        if rest and not rest[0].isdigit():
            raise ValueError(f"--nodes: the GPUs of {name!r} must be a non-negative integer, got {rest[0]!r}")
        nodes.append(Node(name, tuple(range(int(cores))), declared_gpus(int(rest[0])) if rest else ()))
    if not nodes:
        raise ValueError("--nodes: no node given")
    return nodes


def discover(cores: int | None = None, nodes: str | None = None, environ: Mapping[str, str] | None = None,
             gpus: int | None = None, mem: int | None = None) -> list[Node]:
    """The executor's nodes with their GPUs and memory (``qcgpj.gpus``): --nodes, else the Slurm allocation,
    else this machine (limited by --cores)."""
    env = os.environ if environ is None else environ
    found = _discover_cores(cores, nodes, env)
    if nodes and any(n.gpus for n in found):
        if gpus is not None:
            raise ValueError("--gpus and GPUs in --nodes (NAME:CORES:GPUS): give one of them")
        ids = None
    else:
        ids = declared_gpus(gpus) if gpus is not None else detect_gpus(env)
    if mem is None:
        mem = 0 if nodes else detect_mem(env)
    if not ids and not mem:
        return found
    return [replace(n, gpus=n.gpus if ids is None else ids, mem=mem or 0) for n in found]


def _step_share(env: Mapping[str, str], counts: dict[str, int]) -> Node | None:
    """Inside an srun step of several tasks (one worker per task), this task's share of its node: the CPUs per
    task (``SLURM_CPUS_PER_TASK``, else the node's CPUs over its tasks), from ``SLURM_LOCALID`` times that, as
    Slurm counts them; None for a worker that is the allocation's only one (no step, or a step of one task)."""
    try:
        if int(env.get("SLURM_STEP_NUM_TASKS") or 1) < 2:
            return None
        node, local = env["SLURMD_NODENAME"], int(env["SLURM_LOCALID"])
        here = parse_cpus_per_node(env["SLURM_STEP_TASKS_PER_NODE"], len(expand_hostlist(env["SLURM_STEP_NODELIST"])))
        tasks = here[int(env["SLURM_NODEID"])]
    except (KeyError, ValueError, IndexError):
        return None   # not a step as srun describes it: the allocation as a whole
    avail = counts.get(node, 0)
    per_task = int(env.get("SLURM_CPUS_PER_TASK") or 0) or max(1, avail // max(tasks, 1))
    first = local * per_task
    if first >= avail:
        raise ValueError(f"srun task {local} on {node}: {per_task} CPU(s) per task from CPU {first}, but the "
                         f"allocation has {avail} there")
    return Node(node, tuple(range(first, min(first + per_task, avail))))


def _discover_cores(cores: int | None, nodes: str | None, env: Mapping[str, str]) -> list[Node]:
    if nodes:
        return parse_nodes_option(nodes)
    if env.get("SLURM_JOB_ID") and env.get("SLURM_JOB_NODELIST"):
        names = expand_hostlist(env["SLURM_JOB_NODELIST"])
        counts = parse_cpus_per_node(env.get("SLURM_JOB_CPUS_PER_NODE", ",".join(["1"] * len(names))), len(names))
        found = [Node(n, tuple(range(c))) for n, c in zip(names, counts)]
        share = _step_share(env, dict(zip(names, counts)))
        if share is not None:
            found = [share]
        if cores is not None:
            if len(found) != 1:
                raise ValueError("--cores applies to a one-node allocation only; use --nodes for more")
            found = [Node(found[0].name, tuple(range(found[0].cores[0], found[0].cores[0] + cores)))]
        return found
    mine = sorted(os.sched_getaffinity(0))
    if cores is not None:
        if cores < 1:
            raise ValueError("--cores must be at least 1")
        _check_node_cores(cores, "--cores")
        if cores > len(mine):
            log.warning("%d cores asked, %d available: tasks will share cores", cores, len(mine))
            mine = list(range(cores))
        mine = mine[:cores]
    return [Node(socket.gethostname().split(".")[0], tuple(mine))]


# ---------------------------------------------------------------------- allocation
class CoreAllocator:
    """Hands out concrete cores of this executor's nodes. Not thread-safe: the executor holds a lock."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self._free: dict[str, list[int]] = {n.name: list(n.cores) for n in nodes}
        self._order = {n.name: i for i, n in enumerate(nodes)}
        self._total = sum(len(n.cores) for n in nodes)
        self._nfree = self._total
        self._gfree: dict[str, list[str]] = {n.name: list(n.gpus) for n in nodes}
        self.gpus_total = sum(len(n.gpus) for n in nodes)
        self.gpus_per_node = max(len(n.gpus) for n in nodes)
        self.mem_per_node = max(n.mem for n in nodes)
        self._gpu_order = {n.name: {g: i for i, g in enumerate(n.gpus)} for n in nodes}
        self._unfit: dict[tuple[int, int | None, int], str] = {}

    @property
    def total(self) -> int:
        return self._total

    @property
    def free(self) -> int:
        return self._nfree

    @property
    def max_per_node(self) -> int:
        return max(len(n.cores) for n in self.nodes)

    def first_local_core(self, node: str) -> int | None:
        """The core a lone one-core task on ``node`` gets (cores are handed out lowest first)."""
        for n in self.nodes:
            if n.name == node and n.cores:
                return min(n.cores)
        return None

    @property
    def gpus_free(self) -> int:
        return sum(len(g) for g in self._gfree.values())

    def allocate(self, cores: int, nodes: int | None = None, gpus: int = 0) -> Allocation | None:
        """Best fit on one node; a task larger than any node spreads over the fewest nodes; with ``nodes``,
        exactly that many. With ``gpus``, that many GPUs on each of its nodes (one node unless ``nodes``)."""
        if cores > self._nfree:
            return None
        if gpus:
            return self._allocate_gpus(cores, nodes or 1, gpus)
        plan = self._plan_nodes(cores, nodes) if nodes else self._plan_any(cores)
        if plan is None:
            return None
        return self._take(plan, cores)

    def unfit(self, cores: int, nodes: int | None = None, gpus: int = 0) -> str:
        """Why a request could not be placed here even with every core free ('' when it could). The queue's
        placement knows an executor's node count and largest node only: on nodes of unequal sizes (``salloc -N2
        -n4`` gives 3 cores and 1) it may send a task of 2 cores on each of 2 nodes, which would wait for ever."""
        key = (cores, nodes, gpus)
        why = self._unfit.get(key)
        if why is None:
            need = f"{nodes} node(s) of {-(-cores // nodes)} core(s)" if nodes else f"{cores} core(s)"
            why = "" if CoreAllocator(self.nodes).allocate(cores, nodes, gpus) is not None else (
                f"needs {need}" + (f" with {gpus} GPU(s) each" if gpus else "") + "; its nodes have "
                + ", ".join(f"{n.name} {len(n.cores)} core(s)" + (f" {len(n.gpus)} GPU(s)" if gpus else "")
                            for n in self.nodes) + ": it can never run there")
            self._unfit[key] = why
        return why

    def _take(self, plan: list[tuple[str, int]], cores: int, gpus: int = 0) -> Allocation:
        parts = []
        for name, k in sorted(plan, key=lambda p: self._order[p[0]]):   # node order of the allocation
            free = self._free[name]
            taken, self._free[name] = free[:k], free[k:]
            parts.append((name, tuple(taken)))
        self._nfree -= cores
        if not gpus:
            return Allocation(tuple(parts))
        given = []
        for name, _k in parts:
            free = self._gfree[name]
            given.append((name, tuple(free[:gpus])))
            self._gfree[name] = free[gpus:]
        return Allocation(tuple(parts), tuple(given))

    def _allocate_gpus(self, cores: int, nodes: int, gpus: int) -> Allocation | None:
        """Only nodes with ``gpus`` free GPUs count: one of them by best fit on cores, or ``cores`` split evenly
        over ``nodes`` of them (those with the most free cores)."""
        elig = {n: c for n, c in self._free.items() if len(self._gfree[n]) >= gpus}
        plan = self._best_fit(cores, elig) if nodes == 1 else self._plan_nodes(cores, nodes, elig)
        return None if plan is None else self._take(plan, cores, gpus)

    @staticmethod
    def _best_fit(cores: int, free: dict[str, list[int]]) -> list[tuple[str, int]] | None:
        """The node of ``free`` with the fewest free cores that still holds ``cores``."""
        fits = [(len(c), n) for n, c in free.items() if len(c) >= cores]
        return [(min(fits)[1], cores)] if fits else None

    def _plan_any(self, cores: int) -> list[tuple[str, int]] | None:
        plan = self._best_fit(cores, self._free)
        if plan is not None:
            return plan
        if cores <= self.max_per_node:   # it fits on one node: wait for one rather than split it
            return None
        plan, left = [], cores
        for k, name in sorted(((len(c), n) for n, c in self._free.items() if c), reverse=True):
            take = min(k, left)
            plan.append((name, take))
            left -= take
            if left == 0:
                return plan
        return None

    def _plan_nodes(self, cores: int, nodes: int,
                    free: dict[str, list[int]] | None = None) -> list[tuple[str, int]] | None:
        """``cores`` in all, split as evenly as possible over exactly ``nodes`` nodes (of ``free``: all)."""
        free = self._free if free is None else free
        if nodes > len(free) or cores < nodes:
            return None
        base, extra = divmod(cores, nodes)
        want = [base + (1 if i < extra else 0) for i in range(nodes)]
        ranked = sorted(((len(c), n) for n, c in free.items()), reverse=True)[:nodes]
        if any(k < w for (k, _n), w in zip(ranked, want)):
            return None
        return [(n, w) for (_k, n), w in zip(ranked, want)]

    def release(self, alloc: Allocation) -> None:
        for name, cores in alloc.parts:
            self._free[name].extend(cores)
            self._free[name].sort()
            self._nfree += len(cores)
        for name, ids in alloc.gpus:
            self._gfree[name].extend(ids)
            self._gfree[name].sort(key=self._gpu_order[name].__getitem__)
