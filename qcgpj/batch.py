"""Request files and batches: what is read from a QCG-PilotJob request file, and the checks that need a whole
batch at once (duplicate names, cycles, iteration dependencies, sizes). Single jobs are jobspec's business."""
from __future__ import annotations

import logging

from .errors import DependencyError, DuplicateJobError, ResourceError
from .jobspec import AFTER, Dependency, JobSpec
from .requests import Request, parse_requests, read_requests

log = logging.getLogger(__name__)


def parse_jobs_text(text: str) -> tuple[list[JobSpec], bool]:
    """Every job a request file submits, in order, and whether it asks ``finishAfterAllTasksDone`` (what
    ``Jobs.load_from_file`` needs; ``qcgpj run``/``submit`` apply the requests one by one, see requests.py)."""
    return _flat(parse_requests(text))


def parse_jobs_file(path: str) -> tuple[list[JobSpec], bool]:
    return _flat(read_requests(path))


def _flat(reqs: list[Request]) -> tuple[list[JobSpec], bool]:
    return [j for r in reqs for j in r.jobs], any(r.kind == "control" for r in reqs)


# ---------------------------------------------------------------------- batches
def check_batch(jobs: list[JobSpec], max_cores: int | None = None, max_nodes: int | None = None) -> set[str]:
    """Checks that need the whole batch; returns the dependencies outside it (the store checks they exist)."""
    by_name: dict[str, JobSpec] = {}
    for j in jobs:
        if j.name in by_name:
            raise DuplicateJobError(j.name, "name", "used by more than one job of this batch")
        by_name[j.name] = j
    external: set[str] = set()
    for j in jobs:
        _check_fits(j, max_cores, max_nodes)
        for dep in j.after:
            if dep.job == j.name:
                raise DependencyError(j.name, AFTER, f"'{dep}': a job cannot depend on itself")
            parent = by_name.get(dep.job)
            if parent is None and not (dep.per_iteration and j.iteration is None):
                external.add(dep.job)
            else:
                _check_iterations(j, dep, parent)
    _check_cycles(jobs, by_name)
    return external


def _check_iterations(j: JobSpec, dep: Dependency, parent: JobSpec | None) -> None:
    """'a:${it}' pairs iteration i with a:i, so both need the same ids; 'a:N' needs a:N to exist."""
    pit = None if parent is None else parent.iteration
    if dep.per_iteration and (pit is None or j.iteration is None or pit.ids() != j.iteration.ids()):
        raise DependencyError(j.name, AFTER, f"'{dep}' needs both jobs iterative over the same iterations "
                                             f"('{j.name}': {_ids(j)}, '{dep.job}': {_ids(parent)})")
    if dep.iteration is not None and (pit is None or dep.iteration not in pit.ids()):
        raise DependencyError(j.name, AFTER, f"'{dep}' names no iteration of '{dep.job}' ({_ids(parent)})")


def _ids(spec: JobSpec | None) -> str:
    if spec is None:
        return "not in this batch"
    it = spec.iteration
    return "not iterative" if it is None else f"iterations {it.start}..{it.stop - 1}"


def _check_fits(j: JobSpec, max_cores: int | None, max_nodes: int | None) -> None:
    """Nodes first: with numNodes, numCores is per node, so too many nodes also makes too many cores, and the
    field to name is numNodes (numCores may not even be given)."""
    if max_nodes is not None and j.nodes_min is not None and j.nodes_min > max_nodes:
        raise ResourceError(j.name, "resources.numNodes",
                            f"needs at least {j.nodes_min} nodes, but the largest executor has {max_nodes}")
    cores = j.cores_min * (j.nodes_min or 1)
    if max_cores is not None and cores > max_cores:
        raise ResourceError(j.name, "resources.numCores",
                            f"needs at least {cores} cores, but the largest executor has {max_cores}")


def _check_cycles(jobs: list[JobSpec], by_name: dict[str, JobSpec]) -> None:
    """Iterative depth-first search (a chain of 100,000 jobs must not hit the recursion limit)."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    for root in jobs:
        if root.name in state:
            continue
        path, stack = [root.name], [iter(root.after)]
        state[root.name] = 1
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                stack.pop()
                state[path.pop()] = 2
            elif dep.job in by_name:
                mark = state.get(dep.job)
                if mark == 1:
                    cycle = path[path.index(dep.job):] + [dep.job]
                    raise DependencyError(dep.job, AFTER, "dependency cycle: " + " -> ".join(cycle))
                if mark is None:
                    state[dep.job] = 1
                    path.append(dep.job)
                    stack.append(iter(by_name[dep.job].after))
