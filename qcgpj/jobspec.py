"""The job model: QCG-PilotJob's job description, parsed and checked field by field.

Validation is hand-written over small typed readers rather than a JSON Schema: it must cost microseconds per
job (100,000 jobs are submitted in seconds) and every error must name the job and the dotted field.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import DependencyError, DuplicateJobError, JobSpecError, ResourceError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
WT_RE = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$")
SUBST_RE = re.compile(r"\$\{(\w+)\}")

JOB_FIELDS = {"name", "execution", "resources", "dependencies", "iteration", "attributes"}
EXEC_FIELDS = {"exec", "script", "args", "env", "stdin", "stdout", "stderr", "wd", "model", "model_opts",
               "modules", "venv"}
RES_FIELDS = {"numCores", "numNodes", "wt"}
_PATH_FIELDS = frozenset({"stdin", "stdout", "stderr", "wd", "venv"})
RANGE_FIELDS = {"exact", "min", "max"}
IGNORED_REQUESTS = {"listJobs", "status", "jobInfo", "resourcesInfo", "notify", "cancelJob", "removeJob",
                    "finish", "control"}


@dataclass(frozen=True, slots=True)
class Iteration:
    """Iterations ``start..stop-1``, or one per value (then ``${itval}`` is the value)."""

    start: int
    stop: int
    values: tuple | None = None

    @property
    def count(self) -> int:
        return self.stop - self.start

    def ids(self) -> range:
        return range(self.start, self.stop)

    def value(self, it: int) -> str:
        return str(self.values[it - self.start]) if self.values is not None else str(it)

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)} if self.values is not None else {"start": self.start, "stop": self.stop}


@dataclass(frozen=True, slots=True)
class Dependency:
    """``a`` (the whole job), ``a:3`` (its iteration 3) or ``a:${it}`` (iteration i waits for a:i)."""

    job: str
    iteration: int | None = None
    per_iteration: bool = False

    @classmethod
    def parse(cls, text: Any, owner: str) -> "Dependency":
        if not isinstance(text, str) or not text:
            raise DependencyError(owner, "dependencies.after", f"expected a job name, got {text!r}")
        job, sep, it = text.partition(":")
        if not NAME_RE.match(job):
            raise DependencyError(owner, "dependencies.after", f"invalid job name {job!r}")
        if not sep:
            return cls(job)
        if it == "${it}":
            return cls(job, per_iteration=True)
        if it.isdigit():
            return cls(job, iteration=int(it))
        raise DependencyError(owner, "dependencies.after", f"'{text}': after ':' expected an iteration or ${{it}}")

    def __str__(self) -> str:
        if self.per_iteration:
            return f"{self.job}:${{it}}"
        return self.job if self.iteration is None else f"{self.job}:{self.iteration}"


@dataclass(slots=True)
class JobSpec:
    """One job as submitted; stored as its QCG-PilotJob JSON (``to_json``), read back by the executors."""

    name: str
    exec: str | None = None
    script: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    wd: str | None = None
    model: str = "default"
    model_opts: dict[str, Any] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    venv: str | None = None
    cores_min: int = 1
    cores_max: int | None = 1
    nodes_min: int | None = None
    nodes_max: int | None = None
    walltime: float | None = None
    after: list[Dependency] = field(default_factory=list)
    iteration: Iteration | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def n_iterations(self) -> int:
        return self.iteration.count if self.iteration is not None else 1

    def to_dict(self) -> dict[str, Any]:
        ex: dict[str, Any] = {"exec": self.exec} if self.exec is not None else {"script": self.script}
        for key in ("args", "env", "stdin", "stdout", "stderr", "wd", "model_opts", "modules", "venv"):
            value = getattr(self, key)
            if value:
                ex[key] = value
        if self.model != "default":
            ex["model"] = self.model
        d: dict[str, Any] = {"name": self.name, "execution": ex}
        res: dict[str, Any] = {}
        if (self.cores_min, self.cores_max) != (1, 1):
            res["numCores"] = _range_dict(self.cores_min, self.cores_max)
        if self.nodes_min is not None:
            res["numNodes"] = _range_dict(self.nodes_min, self.nodes_max)
        if self.walltime is not None:
            res["wt"] = f"{self.walltime:g}s"
        if res:
            d["resources"] = res
        if self.after:
            d["dependencies"] = {"after": [str(a) for a in self.after]}
        if self.iteration is not None:
            d["iteration"] = self.iteration.to_dict()
        if self.attributes:
            d["attributes"] = self.attributes
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "JobSpec":
        """Rebuild a stored spec. It was validated when submitted, so this skips the checks: executors read
        one spec per job on the hot path."""
        d = json.loads(s)
        ex, res = d["execution"], d.get("resources", {})
        r = _Reader(d["name"])
        spec = cls(d["name"], ex.get("exec"), ex.get("script"), ex.get("args", []), ex.get("env", {}),
                   ex.get("stdin"), ex.get("stdout"), ex.get("stderr"), ex.get("wd"), ex.get("model", "default"),
                   ex.get("model_opts", {}), ex.get("modules", []), ex.get("venv"))
        if "numCores" in res:
            spec.cores_min, spec.cores_max = r.count(res["numCores"], "resources.numCores")
        if "numNodes" in res:
            spec.nodes_min, spec.nodes_max = r.count(res["numNodes"], "resources.numNodes")
        if "wt" in res:
            spec.walltime = parse_walltime(res["wt"])
        if "dependencies" in d:
            spec.after = [Dependency.parse(a, spec.name) for a in d["dependencies"]["after"]]
        if "iteration" in d:
            spec.iteration = _read_iteration(r, d["iteration"])
        spec.attributes = d.get("attributes", {})
        return spec


def _range_dict(lo: int, hi: int | None) -> Any:
    if hi == lo:
        return {"exact": lo}
    return {"min": lo} if hi is None else {"min": lo, "max": hi}


# ---------------------------------------------------------------------- small typed readers
class _Reader:
    """Reads one job's dict, raising errors that name the job and the dotted field."""

    def __init__(self, job: str | None) -> None:
        self.job = job

    def fail(self, fld: str, msg: str) -> JobSpecError:
        return JobSpecError(self.job, fld, msg)

    def known(self, d: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in d:
            if key not in allowed:
                path = f"{where}.{key}" if where else key
                raise self.fail(path, f"unknown field (known: {', '.join(sorted(allowed))})")

    def dict_(self, value: Any, fld: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(fld, f"must be an object, got {type(value).__name__}")
        return value

    def str_(self, value: Any, fld: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(fld, f"must be a non-empty string, got {value!r}")
        return value

    def strlist(self, value: Any, fld: str, numbers: bool = False) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise self.fail(fld, f"must be a list, got {type(value).__name__}")
        out = []
        for i, v in enumerate(value):
            if isinstance(v, str) or (numbers and isinstance(v, (int, float)) and not isinstance(v, bool)):
                out.append(str(v))
            else:
                raise self.fail(f"{fld}[{i}]", f"must be a string, got {v!r}")
        return out

    def strdict(self, value: Any, fld: str) -> dict[str, str]:
        d = self.dict_(value, fld)
        out = {}
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise self.fail(f"{fld}.{k}", f"must be a string, got {v!r}")
            out[str(k)] = str(v)
        return out

    def count(self, value: Any, fld: str) -> tuple[int, int | None]:
        """An int, {exact}, or {min, max}: (min, max) with max None for no upper bound."""
        if _is_int(value):
            return self.positive(value, fld), self.positive(value, fld)
        d = self.dict_(value, fld)
        self.known(d, RANGE_FIELDS, fld)
        if "exact" in d:
            if "min" in d or "max" in d:
                raise self.fail(fld, "'exact' excludes 'min' and 'max'")
            n = self.positive(d["exact"], f"{fld}.exact")
            return n, n
        if "min" not in d and "max" not in d:
            raise self.fail(fld, "expected an integer, {exact} or {min, max}")
        lo = self.positive(d.get("min", 1), f"{fld}.min")
        hi = self.positive(d["max"], f"{fld}.max") if "max" in d else None
        if hi is not None and hi < lo:
            raise self.fail(f"{fld}.max", f"max {hi} is less than min {lo}")
        return lo, hi

    def positive(self, value: Any, fld: str) -> int:
        if not _is_int(value) or value < 1:
            raise self.fail(fld, f"must be a positive integer, got {value!r}")
        return int(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_walltime(s: Any) -> float:
    """'1h2m3s', '10m', '30s', '2h', '1d' or a number of seconds."""
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        if s <= 0:
            raise ValueError("must be positive")
        return float(s)
    if not isinstance(s, str) or not s.strip():
        raise ValueError(f"expected a duration like '1h30m', got {s!r}")
    m = WT_RE.match(s)
    if not m or not any(m.groups()):
        raise ValueError(f"expected a duration like '1h30m' or '90s', got {s!r}")
    d, h, mi, sec = m.groups()
    total = int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)
    if total <= 0:
        raise ValueError("must be positive")
    return total


def parse_job(d: Any) -> JobSpec:
    """One QCG-PilotJob job description -> JobSpec; raises JobSpecError naming the job and field."""
    if not isinstance(d, dict):
        raise JobSpecError(None, None, f"a job description must be an object, got {type(d).__name__}")
    name = d.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise JobSpecError(name if isinstance(name, str) else None, "name",
                           "required; letters, digits, '_', '.', '-' (no ':', spaces or braces), at most 200")
    r = _Reader(name)
    r.known(d, JOB_FIELDS, "")
    spec = JobSpec(name=name)
    _read_execution(r, spec, r.dict_(d.get("execution"), "execution"))
    _read_resources(r, spec, r.dict_(d.get("resources"), "resources"))
    deps = r.dict_(d.get("dependencies"), "dependencies")
    r.known(deps, {"after"}, "dependencies")
    after = deps.get("after")
    if after is not None and not isinstance(after, (list, str)):
        raise r.fail("dependencies.after", "must be a list of job names")
    spec.after = [Dependency.parse(a, name) for a in ([after] if isinstance(after, str) else after or [])]
    if "iteration" in d and d["iteration"] is not None:
        spec.iteration = _read_iteration(r, d["iteration"])
    spec.attributes = r.dict_(d.get("attributes"), "attributes")
    return spec


def _read_execution(r: _Reader, spec: JobSpec, ex: dict) -> None:
    r.known(ex, EXEC_FIELDS, "execution")
    spec.exec = r.str_(ex.get("exec"), "execution.exec")
    spec.script = r.str_(ex.get("script"), "execution.script")
    if (spec.exec is None) == (spec.script is None):
        raise r.fail("execution", "exactly one of 'exec' and 'script' is required")
    if "args" in ex:
        spec.args = r.strlist(ex["args"], "execution.args", numbers=True)
    if "env" in ex:
        spec.env = r.strdict(ex["env"], "execution.env")
    for key in _PATH_FIELDS.intersection(ex):   # most jobs set few of these: look only at those present
        setattr(spec, key, r.str_(ex[key], f"execution.{key}"))
    model = ex.get("model")
    if model is not None:
        if not isinstance(model, str) or not MODEL_RE.match(model):
            raise r.fail("execution.model", f"must be a model name like 'default' or 'threads', got {model!r}")
        spec.model = model
    if "model_opts" in ex:
        spec.model_opts = r.dict_(ex["model_opts"], "execution.model_opts")
    if "modules" in ex:
        spec.modules = r.strlist(ex["modules"], "execution.modules")
    if spec.model == "python" and (spec.exec is None or ":" not in spec.exec):
        raise r.fail("execution.exec", "the python model needs 'package.module:function'")


def _read_resources(r: _Reader, spec: JobSpec, res: dict) -> None:
    r.known(res, RES_FIELDS, "resources")
    if res.get("numCores") is not None:
        spec.cores_min, spec.cores_max = r.count(res["numCores"], "resources.numCores")
    if res.get("numNodes") is not None:
        spec.nodes_min, spec.nodes_max = r.count(res["numNodes"], "resources.numNodes")
    if res.get("wt") is not None:
        try:
            spec.walltime = parse_walltime(res["wt"])
        except ValueError as exc:
            raise r.fail("resources.wt", str(exc)) from None


def _read_iteration(r: _Reader, it: Any) -> Iteration:
    if _is_int(it):
        it = {"stop": it}
    d = r.dict_(it, "iteration")
    r.known(d, {"start", "stop", "values"}, "iteration")
    if "values" in d:
        if "start" in d or "stop" in d:
            raise r.fail("iteration", "'values' excludes 'start' and 'stop'")
        vals = d["values"]
        if not isinstance(vals, list) or not vals:
            raise r.fail("iteration.values", "must be a non-empty list")
        return Iteration(0, len(vals), tuple(vals))
    if "stop" not in d:
        raise r.fail("iteration.stop", "required (or 'values')")
    start = d.get("start", 0)
    for key, v in (("start", start), ("stop", d["stop"])):
        if not _is_int(v) or v < 0:
            raise r.fail(f"iteration.{key}", f"must be a non-negative integer, got {v!r}")
    if d["stop"] <= start:
        raise r.fail("iteration.stop", f"must be greater than start ({start})")
    return Iteration(start, d["stop"])


# ---------------------------------------------------------------------- files and batches
def parse_jobs_text(text: str) -> tuple[list[JobSpec], bool]:
    """A request file (QCG-PilotJob's requests, or a bare list of jobs) -> (jobs, finish after all done)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobSpecError(None, None, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise JobSpecError(None, None, "expected a list of requests or of job descriptions")
    jobs: list[JobSpec] = []
    finish = False
    for i, item in enumerate(data):
        if isinstance(item, dict) and "request" in item:
            req = item["request"]
            if req == "submit":
                sub = item.get("jobs")
                if not isinstance(sub, list):
                    raise JobSpecError(None, f"[{i}].jobs", "a submit request needs a list of jobs")
                jobs.extend(parse_job(j) for j in sub)
            elif req == "control" and item.get("command") == "finishAfterAllTasksDone":
                finish = True
            elif req in IGNORED_REQUESTS:
                log.warning("request %d (%s) is not needed by qcgpj and was ignored", i, req)
            else:
                raise JobSpecError(None, f"[{i}].request", f"unknown request {req!r}")
        else:
            jobs.append(parse_job(item))
    return jobs, finish


def parse_jobs_file(path: str) -> tuple[list[JobSpec], bool]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise JobSpecError(None, None, f"cannot read {path}: {exc.strerror}") from None
    return parse_jobs_text(text)


def check_batch(jobs: list[JobSpec], max_cores: int | None = None, max_nodes: int | None = None) -> set[str]:
    """Checks that need the whole batch; returns the dependencies outside it (the store checks they exist)."""
    by_name: dict[str, JobSpec] = {}
    for j in jobs:
        if j.name in by_name:
            raise DuplicateJobError(j.name, "name", "used twice in this batch")
        by_name[j.name] = j
    external: set[str] = set()
    for j in jobs:
        _check_resources(j, max_cores, max_nodes)
        for dep in j.after:
            if dep.job == j.name:
                raise DependencyError(j.name, "dependencies.after", "a job cannot depend on itself")
            parent = by_name.get(dep.job)
            if parent is None:
                external.add(dep.job)
                continue
            if dep.per_iteration and (j.iteration is None or parent.iteration is None
                                      or j.iteration.ids() != parent.iteration.ids()):
                raise DependencyError(j.name, "dependencies.after",
                                      f"'{dep}' needs both jobs iterative over the same iterations")
            if dep.iteration is not None and (parent.iteration is None or dep.iteration not in parent.iteration.ids()):
                raise DependencyError(j.name, "dependencies.after", f"'{dep}' names no iteration of '{dep.job}'")
    _check_cycles(jobs, by_name)
    return external


def _check_resources(j: JobSpec, max_cores: int | None, max_nodes: int | None) -> None:
    nodes = j.nodes_min or 1
    if max_cores is not None and j.cores_min * nodes > max_cores:
        raise ResourceError(j.name, "resources.numCores",
                            f"{j.cores_min * nodes} cores requested, but the largest executor has {max_cores}")
    if max_nodes is not None and j.nodes_min is not None and j.nodes_min > max_nodes:
        raise ResourceError(j.name, "resources.numNodes",
                            f"{j.nodes_min} nodes requested, but the largest executor has {max_nodes}")


def _check_cycles(jobs: list[JobSpec], by_name: dict[str, JobSpec]) -> None:
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    for root in jobs:
        if root.name in state:
            continue
        path = [root.name]
        stack = [iter([d.job for d in root.after if d.job in by_name])]
        state[root.name] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                state[path.pop()] = 2
            elif state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise DependencyError(nxt, "dependencies.after", "dependency cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter([d.job for d in by_name[nxt].after if d.job in by_name]))


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Replace ${name} for the known names; anything else (a shell's ${HOME}) is left alone."""
    return SUBST_RE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)
