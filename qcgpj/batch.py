"""Request files and batches: what is read from a QCG-PilotJob request file, and the checks that need a whole
batch at once (duplicate names, cycles, iteration dependencies, sizes). Single jobs are jobspec's business."""
from __future__ import annotations

import json
import logging
from typing import Any

from .errors import DependencyError, DuplicateJobError, JobSpecError, ResourceError
from .jobspec import AFTER, SUBMIT_FIELDS, Dependency, JobSpec, _known, _show, parse_job

log = logging.getLogger(__name__)

IGNORED_REQUESTS = frozenset({"listJobs", "jobStatus", "jobInfo", "status", "resourcesInfo", "cancelJob",
                              "removeJob", "notify", "register"})


def parse_jobs_text(text: str) -> tuple[list[JobSpec], bool]:
    """A request file: QCG-PilotJob's list of requests, or a bare list of job descriptions (its
    ``Jobs.save_to_file``). Returns the jobs and whether ``finishAfterAllTasksDone`` was asked for."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobSpecError(None, None, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise JobSpecError(None, None, "malformed JSON: nested too deeply") from None
    except ValueError as exc:   # a number of more than 4300 digits
        raise JobSpecError(None, None, f"malformed JSON: {exc}") from None
    if not isinstance(data, list):
        raise JobSpecError(None, None, f"expected a list of requests or of job descriptions, got {_show(data)}")
    jobs: list[JobSpec] = []
    finish = False
    for i, item in enumerate(data):
        if isinstance(item, dict) and "request" in item:
            finish = _request(item, f"[{i}]", jobs) or finish
        else:
            jobs.append(_job_at(item, f"[{i}]"))
    return jobs, finish


def _request(req: dict, where: str, jobs: list[JobSpec]) -> bool:
    """Apply one request; True for finishAfterAllTasksDone."""
    kind = req["request"]
    if not isinstance(kind, str):
        raise JobSpecError(None, where + ".request", f"must be a request name, got {_show(kind)}")
    if kind == "submit":
        _known(None, req, SUBMIT_FIELDS, where)
        sub = req.get("jobs")
        if not isinstance(sub, list) or not sub:
            raise JobSpecError(None, where + ".jobs", "a submit request needs a non-empty list of jobs")
        jobs.extend(_job_at(j, f"{where}.jobs[{k}]") for k, j in enumerate(sub))
    elif kind == "control":
        if req.get("command") != "finishAfterAllTasksDone":
            raise JobSpecError(None, where + ".command", f"unknown control command {req.get('command')!r} "
                                                         "(known: finishAfterAllTasksDone)")
        return True
    elif kind == "finish":
        log.info("request %s: 'finish' read; qcgpj ends when the jobs are done", where)
    elif kind in IGNORED_REQUESTS:
        log.warning("request %s (%s) has no meaning in a qcgpj file and is ignored", where, kind)
    else:
        raise JobSpecError(None, where + ".request", f"unknown request {kind!r}")
    return False


def _job_at(item: Any, where: str) -> JobSpec:
    """parse_job, with the position in the file when the job has no usable name to point at."""
    try:
        return parse_job(item)
    except JobSpecError as exc:
        if exc.job is not None:
            raise
        fld = where if exc.field is None else f"{where}.{exc.field}"
        raise type(exc)(None, fld, exc.message) from None


def parse_jobs_file(path: str) -> tuple[list[JobSpec], bool]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobSpecError(None, None, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_jobs_text(text)


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
    cores = j.cores_min * (j.nodes_min or 1)   # with numNodes, numCores is per node
    if max_cores is not None and cores > max_cores:
        raise ResourceError(j.name, "resources.numCores",
                            f"needs at least {cores} cores, but the largest executor has {max_cores}")
    if max_nodes is not None and j.nodes_min is not None and j.nodes_min > max_nodes:
        raise ResourceError(j.name, "resources.numNodes",
                            f"needs at least {j.nodes_min} nodes, but the largest executor has {max_nodes}")


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
