"""From a claimed entry and its job spec to what a worker plugin launches: substitution, paths, environment."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .connection import task_environ
from .jobspec import JobSpec, substitute, task_variables
from .resources import Allocation
from .store import Entry

from .workers import get_worker
from .workers.base import TaskContext, Worker



@dataclass(slots=True)
class Launch:
    ctx: TaskContext
    worker: Worker
    walltime: float | None


class SpecCache:
    """Job specs by name; a small LRU saves a Redis read per task. A spec that comes again replaces the cached one
    if it differs: a job removed and submitted again under its name (the claim sends the spec with the first
    entry of a job in each round trip)."""

    def __init__(self, size: int = 1024) -> None:
        self._specs: OrderedDict[str, tuple[str, JobSpec]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, name: str, spec_json: str) -> JobSpec:
        with self._lock:
            return self._get(name, spec_json)

    def _get(self, name: str, spec_json: str) -> JobSpec:
        got = self._specs.get(name)
        if got is None or (spec_json and spec_json != got[0]):
            if not spec_json:
                raise KeyError(name)
            got = (spec_json, JobSpec.from_json(spec_json))
            self._specs[name] = got
            if len(self._specs) > self._size:
                self._specs.popitem(last=False)
        self._specs.move_to_end(name)
        return got[1]


def _placement(alloc: Allocation, local_node: str) -> tuple[str, ...]:
    """The allocation as the task's variables give it: cores, nodes, node list, this node's cores, every node's
    cores (``to_text``), cores per node, all cores. Built for every task: one node (the usual case) is built
    without the general case's passes over the parts."""
    parts = alloc.parts
    if len(parts) == 1:
        node, cores = parts[0]
        text = ",".join(map(str, cores))
        n = str(len(cores))
        return n, "1", node, text if node == local_node else "", f"{node}={text}", n, text
    here = ",".join(map(str, alloc.cores_on(local_node)))
    return (str(alloc.ncores), str(len(parts)), ",".join(alloc.nodes), here, alloc.to_text(), ",".join([str(len(c)) for _n, c in parts]),
            ",".join([str(c) for _n, cores in parts for c in cores]))


SLURM_MODELS = {"default": "srun", "threads": "srunthreads"}   # inside an allocation, tasks are srun steps


def build_launch(spec: JobSpec, entry: Entry, alloc: Allocation, root_wd: str, local_node: str,
                 models: dict[str, str] | None = None, base_env: dict[str, str] | None = None) -> Launch:
    """Everything a worker needs, with ${...} substituted; creates the working directory.

    ``base_env`` is the executor's environment read once when it started: copying os.environ decodes every
    variable each time, which costs more than the rest of preparing a task."""
    place = _placement(alloc, local_node)
    var = task_variables(spec.name, spec.iteration, entry.iteration, root_wd, place)

    def sub(text: str | None) -> str | None:
        return substitute(text, var) if text and "${" in text else text

    if spec.script is not None:
        argv = ["/bin/bash", "-c", sub(spec.script) or ""]
    else:
        argv = [sub(spec.exec) or "", *(sub(a) or "" for a in spec.args)]
    wd = os.path.join(root_wd, sub(spec.wd) or "") if spec.wd else root_wd
    if spec.wd:
        os.makedirs(wd, exist_ok=True)

    def path(p: str | None, create: bool = False) -> str | None:
        if not p:
            return None
        full = os.path.join(wd, sub(p) or "")
        if create and os.sep in (sub(p) or ""):
            os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    env = (base_env if base_env is not None else task_environ()).copy()
    for key, value in spec.env.items():
        env[key] = sub(value) or ""
    ncores, nnodes, nlist, here, node_cores, per_node, cpu_set = place
    env.update({
        "QCGPJ_TASK": entry.task, "QCGPJ_JOB": spec.name, "QCGPJ_ITERATION": var.get("it", ""),
        "QCGPJ_NCORES": ncores, "QCGPJ_NNODES": nnodes, "QCGPJ_NODES": nlist,
        "QCGPJ_CORES": here, "QCGPJ_NODE_CORES": node_cores, "QCGPJ_ROOT_WD": root_wd,
        # QCG-PilotJob's names for the same, so its scripts run unchanged
        "QCG_PM_NNODES": nnodes, "QCG_PM_NODELIST": nlist, "QCG_PM_NPROCS": ncores,
        "QCG_PM_NTASKS": ncores, "QCG_PM_STEP_ID": entry.task,
        "QCG_PM_TASKS_PER_NODE": per_node, "QCG_PM_CPU_SET": cpu_set,   # every node's
    })
    if alloc.gpus:   # nodeCrs: exactly its GPUs (ids as this node's CUDA_VISIBLE_DEVICES numbers them)
        mine = ",".join(alloc.gpus_on(local_node))
        env.update({"CUDA_VISIBLE_DEVICES": mine, "QCGPJ_GPUS": mine,
                    "QCGPJ_NODE_GPUS": ";".join(f"{n}={','.join(ids)}" for n, ids in alloc.gpus)})
    ctx = TaskContext(task_id=entry.task, job=spec.name, iteration=entry.iteration, argv=argv, env=env, cwd=wd,
                      stdin=path(spec.stdin), stdout=path(spec.stdout, True), stderr=path(spec.stderr, True),
                      allocation=alloc,
                      model_opts=dict(spec.model_opts), modules=list(spec.modules), venv=sub(spec.venv),
                      local_node=local_node, python_target=sub(spec.exec) if spec.model == "python" else None,
                      walltime=spec.walltime)
    model = (models or {}).get(spec.model, spec.model)
    return Launch(ctx, get_worker(model), spec.walltime)
