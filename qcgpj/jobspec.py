"""The job model: QCG-PilotJob's job description, parsed and checked field by field.

The checks are hand-written over plain dicts, not a JSON Schema: a job must cost microseconds (a batch of 100,000
jobs is built and serialised in about a second), and every error must name the job and the dotted field so the
user can fix the file. The same checks serve request files (``parse_job``) and the Python builder (``make_job``).
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from json.encoder import encode_basestring_ascii as _q
from typing import Any

from .errors import DependencyError, JobSpecError, ResourceError, clip
from .fieldcheck import (MAX_ITERATION_DIGITS, NAME_RE, _check_name, _count, _dict, _env, _known,
                         _os_strings, _plain_dict, _positive, _show, _str, _strlist, _warn_once, format_walltime,
                         _unprintable, parse_walltime)
from .gpus import crs_json, node_crs

log = logging.getLogger(__name__)

MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
KNOWN_MODELS = frozenset({"default", "threads", "openmpi", "intelmpi", "srunmpi", "python"})
SUBST_RE = re.compile(r"\$\{(\w+)\}")
AFTER = "dependencies.after"

JOB_FIELDS = frozenset({"name", "execution", "resources", "dependencies", "iteration", "attributes"})
EXEC_FIELDS = frozenset({"exec", "script", "args", "env", "stdin", "stdout", "stderr", "wd", "model", "model_opts",
                         "modules", "venv"})
RES_FIELDS = frozenset({"numCores", "numNodes", "wt", "nodeCrs"})
ITER_FIELDS = frozenset({"start", "stop", "values"})
DEP_FIELDS = frozenset({"after"})
SUBMIT_FIELDS = frozenset({"request", "jobs"})
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


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
        return str(it) if self.values is None else str(self.values[it - self.start])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Iteration:
        """A stored (checked) ``iteration`` back, as ``to_dict`` wrote it."""
        values = d.get("values")
        return Iteration(d.get("start", 0), d["stop"]) if values is None else Iteration(0, len(values), tuple(values))

    def to_dict(self) -> dict[str, Any]:
        if self.values is not None:
            return {"values": list(self.values)}
        return {"stop": self.stop} if self.start == 0 else {"start": self.start, "stop": self.stop}


@dataclass(frozen=True, slots=True)
class Dependency:
    """``a`` (the whole job), ``a:3`` (its iteration 3) or ``a:${it}`` (iteration i waits for a:i)."""

    job: str
    iteration: int | None = None
    per_iteration: bool = False

    @classmethod
    def parse(cls, text: Any, owner: str) -> Dependency:
        if not isinstance(text, str):
            raise DependencyError(owner, AFTER, f"must be a job name, got {_show(text)}")
        job, sep, it = text.partition(":")
        if NAME_RE.fullmatch(job) is None:
            raise DependencyError(owner, AFTER, f"'{clip(text)}': {clip(job)!r} is not a valid job name")
        if not sep:
            return cls(job)
        if it == "${it}":
            return cls(job, None, True)
        if it.isascii() and it.isdigit():
            if len(it) > MAX_ITERATION_DIGITS:
                raise DependencyError(owner, AFTER, f"'{clip(text)}' names no iteration (at most 10^12 of a job)")
            return cls(job, int(it))
        raise DependencyError(owner, AFTER, f"'{clip(text)}': expected 'job', 'job:N' or 'job:${{it}}'")

    def __str__(self) -> str:
        if self.per_iteration:
            return self.job + ":${it}"
        return self.job if self.iteration is None else f"{self.job}:{self.iteration}"


@dataclass(slots=True)
class JobSpec:
    """One job as submitted; stored as its QCG-PilotJob JSON (``to_json``) and read back by the executors.

    Sequences are tuples: a spec does not change once built, and a tuple of strings is one object less per job
    for the garbage collector to walk (100,000 jobs in a batch)."""

    name: str
    exec: str | None = None
    script: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    wd: str | None = None
    model: str = "default"
    model_opts: dict[str, Any] = field(default_factory=dict)
    modules: tuple[str, ...] = ()
    venv: str | None = None
    cores_min: int = 1
    cores_max: int | None = 1
    nodes_min: int | None = None
    nodes_max: int | None = None
    walltime: float | None = None
    after: tuple[Dependency, ...] = ()
    iteration: Iteration | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    sizing: Sizing | None = None             # sizes fixed at submit (size_at_submit); never stored
    spread: str | None = None                # maximum-iters' unequal shares: "c|known|least" ("k|": nodes), as
                                             # the job hash's 'spread' (placement sizes each iteration from it)
    gpus: int = 0                            # nodeCrs: GPUs on each of its nodes (qcgpj.gpus)
    mem: int = 0                             # nodeCrs: MiB each of its nodes must declare

    @property
    def n_iterations(self) -> int:
        return 1 if self.iteration is None else self.iteration.count

    def to_dict(self) -> dict[str, Any]:
        """The QCG-PilotJob description, without empty or default fields (a fresh copy)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """Compact JSON, written by hand: it is on the submit path of every job, where the general encoder
        costs several times more. Strings are escaped as ``json.dumps`` does."""
        ex = ',"exec":' + _q(self.exec) if self.exec else ""
        if self.script:
            ex += ',"script":' + _q(self.script)
        if self.args:
            ex += ',"args":[' + ",".join(map(_q, self.args)) + "]"
        if self.env:
            ex += ',"env":{' + ",".join([_q(k) + ":" + _q(v) for k, v in self.env.items()]) + "}"
        if self.stdin:
            ex += ',"stdin":' + _q(self.stdin)
        if self.stdout:
            ex += ',"stdout":' + _q(self.stdout)
        if self.stderr:
            ex += ',"stderr":' + _q(self.stderr)
        if self.wd:
            ex += ',"wd":' + _q(self.wd)
        if self.model != "default":
            ex += ',"model":' + _q(self.model)
        if self.model_opts:
            ex += ',"model_opts":' + _ENCODE(self.model_opts)
        if self.modules:
            ex += ',"modules":[' + ",".join(map(_q, self.modules)) + "]"
        if self.venv:
            ex += ',"venv":' + _q(self.venv)
        out = '{"name":' + _q(self.name) + ',"execution":{' + ex[1:] + "}"
        sched = self.sizing is not None and self.sizing[0] != WHOLE_NODES   # not sized yet (Jobs.save_to_file)
        on_nodes = sched and self.sizing is not None and self.sizing[2]
        if sched and not on_nodes:
            res = ',"numCores":' + _scheduler_json(self.cores_min, *self.sizing[:2])
        else:
            res = "" if self.cores_min == 1 and self.cores_max == 1 else \
                ',"numCores":' + _count_json(self.cores_min, self.cores_max)
        if on_nodes and self.sizing is not None and self.nodes_min is not None:
            res += ',"numNodes":' + _scheduler_json(self.nodes_min, *self.sizing[:2])
        elif self.nodes_min is not None:
            res += ',"numNodes":' + _count_json(self.nodes_min, self.nodes_max)
        if self.walltime is not None:
            res += ',"wt":"' + format_walltime(self.walltime) + '"'
        if self.gpus or self.mem:
            res += "," + crs_json(self.gpus, self.mem)
        if res:
            out += ',"resources":{' + res[1:] + "}"
        if self.after:
            out += ',"dependencies":{"after":[' + ",".join([_q(str(a)) for a in self.after]) + "]}"
        it = self.iteration
        if it is not None:
            out += ',"iteration":' + (_ENCODE(it.to_dict()) if it.values is not None else
                                      f'{{"stop":{it.stop}}}' if it.start == 0 else
                                      f'{{"start":{it.start},"stop":{it.stop}}}')
        if self.attributes:
            out += ',"attributes":' + _ENCODE(self.attributes)
        return out + "}"

    @classmethod
    def from_json(cls, s: str) -> JobSpec:
        """Rebuild a stored spec. It was checked when submitted, so this trusts it: executors read one per job."""
        d = json.loads(s)
        ex, res = d["execution"], d.get("resources", {})
        cores = _count_trusted(res.get("numCores"), 1)
        nodes = _count_trusted(res.get("numNodes"), None)
        it = d.get("iteration")
        if it is not None:
            it = Iteration.from_dict(it)
        wt = res.get("wt")
        after = tuple(Dependency.parse(a, d["name"]) for a in d["dependencies"]["after"]) if "dependencies" in d else ()
        crs = res.get("nodeCrs")
        spec = cls(d["name"], ex.get("exec"), ex.get("script"), tuple(ex.get("args", ())), ex.get("env", {}),
                   ex.get("stdin"), ex.get("stdout"), ex.get("stderr"), ex.get("wd"), ex.get("model", "default"),
                   ex.get("model_opts", {}), tuple(ex.get("modules", ())), ex.get("venv"), cores[0], cores[1], nodes[0],
                   nodes[1], None if wt is None else parse_walltime(wt), after, it, d.get("attributes", {}))
        if crs:
            spec.gpus, spec.mem = crs.get("gpu", 0), crs.get("mem", 0)
        return spec


def _count_json(lo: int, hi: int | None) -> str:
    if hi == lo:
        return f'{{"exact":{lo}}}'
    return f'{{"min":{lo}}}' if hi is None else f'{{"min":{lo},"max":{hi}}}'


def _scheduler_json(lo: int, name: str, parts: int) -> str:
    """An iteration scheduler as it was given (``_scheduler``'s result back in the description's form)."""
    params = f',"params":{{"parts":{parts}}}' if parts else ""
    return f'{{"min":{lo},"scheduler":{{"name":"{name}"{params}}}}}'


def _count_trusted(v: Any, default: int | None) -> tuple[Any, Any]:
    if v is None:
        return default, default
    if isinstance(v, int):
        return v, v
    if "exact" in v:
        return v["exact"], v["exact"]
    return v.get("min", 1), v.get("max")


# ---------------------------------------------------------------------- building a spec
def make_job(name: Any, exec: Any = None, script: Any = None, args: Any = None, env: Any = None,
             stdin: Any = None, stdout: Any = None, stderr: Any = None, wd: Any = None, model: Any = None,
             model_opts: Any = None, modules: Any = None, venv: Any = None, numCores: Any = None,
             numNodes: Any = None, wt: Any = None, after: Any = None, iteration: Any = None,
             attributes: Any = None, nodeCrs: Any = None) -> JobSpec:
    """A checked JobSpec from the fields of a description (None = absent); the builder and the parser share it.
    Written for speed (one constructor call, no temporary objects on the common paths): it runs once per job."""
    job = name if type(name) is str and NAME_RE.fullmatch(name) else _check_name(name)
    if exec is not None and (type(exec) is not str or not exec):
        _str(job, exec, "execution.exec")
    if script is not None:
        _str(job, script, "execution.script")
    if (exec is None) == (script is None):
        raise JobSpecError(job, "execution", "exactly one of 'exec' and 'script' is required")
    args = () if args is None else _strlist(job, args, "execution.args", True)
    if script is not None and args:
        raise JobSpecError(job, "execution.args", "'args' go with 'exec'; a 'script' is run as written")
    if stdin is not None:   # one test per field: a loop over them would cost more than the checks
        _str(job, stdin, "execution.stdin")
    if stdout is not None:
        _str(job, stdout, "execution.stdout")
    if stderr is not None:
        _str(job, stderr, "execution.stderr")
    if wd is not None:
        _str(job, wd, "execution.wd")
    if venv == "":   # EasyVVUQ's templates send an empty venv for none
        venv = None
    if venv is not None:
        _str(job, venv, "execution.venv")
    env = {} if env is None else _env(job, env)
    modules = () if modules is None else _strlist(job, modules, "execution.modules", False)
    _os_strings(job, exec, script, args, stdin, stdout, stderr, wd, venv, env, modules)
    cores = (1, 1) if numCores is None else _count(job, numCores, "resources.numCores")
    nodes = (None, None) if numNodes is None else _count(job, numNodes, "resources.numNodes")
    if wt is not None:
        try:
            wt = parse_walltime(wt)
        except (ValueError, TypeError) as exc:
            raise JobSpecError(job, "resources.wt", str(exc)) from None
    sizing: Sizing | None = None
    nodes_sched = type(numNodes) is dict and numNodes.get("scheduler") is not None
    cores_sched = type(numCores) is dict and numCores.get("scheduler") is not None
    if (nodes_sched or cores_sched) and iteration is None:   # QCG-PilotJob sizes iterations only: a single job
        _unscheduled(job, numCores if cores_sched else None, numNodes if nodes_sched else None)   # takes its range
        nodes_sched = cores_sched = False
    if nodes_sched:   # QCG-PilotJob's schedulers size either
        if cores_sched:
            raise JobSpecError(job, NODES_SCHED, "an iteration scheduler sizes numCores or numNodes, not both")
        sizing = (*_scheduler(job, numNodes, NODES_SCHED), True, numCores is None)
    elif cores_sched:
        sizing = (*_scheduler(job, numCores, SCHED), False, False)
    elif numCores is None and nodes[0] is not None:
        sizing = WHOLE_NODES, 0, False, True
    spec = JobSpec(job, exec, script, args, env, stdin, stdout, stderr, wd,
                   "default" if model is None else _model(job, model, exec),
                   {} if model_opts is None else _plain_dict(job, model_opts, "execution.model_opts"),
                   modules, venv,
                   cores[0], cores[1], nodes[0], nodes[1], wt, () if after is None else _after(job, after),
                   None if iteration is None else _iteration(job, iteration),
                   {} if attributes is None else _plain_dict(job, attributes, "attributes"), sizing)
    if nodeCrs is not None:
        spec.gpus, spec.mem = node_crs(job, nodeCrs)
    return spec


# ---------------------------------------------------------------------- sizes fixed at submit
WHOLE_NODES, MAXIMUM_ITERS, SPLIT_INTO = "whole-nodes", "maximum-iters", "split-into"
SCHED, NODES_SCHED = "resources.numCores.scheduler", "resources.numNodes.scheduler"
Sizing = tuple[str, int, bool, bool]   # WHOLE_NODES or a scheduler, its parts, on numNodes, whole nodes' cores


def _scheduler(job: str, count: dict, fld: str) -> tuple[str, int]:
    """QCG-PilotJob's iteration resource schedulers: ``{"name": "maximum-iters"}`` (as many iterations at once
    as the cores allow, each as large as it can be) or ``{"name": "split-into", "params": {"parts": N}}`` (the
    cores in N equal parts; N defaults to the number of iterations). Taken as QCG-PilotJob takes them: the name
    in any case, an unknown one as its default (maximum-iters, with a warning here), ``parts`` through int();
    refused where it refuses: 'max' or 'exact' beside a scheduler, a name or params of the wrong type."""
    sched = count["scheduler"]
    sched = _dict(job, {"name": sched} if isinstance(sched, str) else sched, fld)   # older files: a name
    name = sched.get("name", MAXIMUM_ITERS)
    if not isinstance(name, str):
        raise JobSpecError(job, fld + ".name", f"must be a scheduler's name ({MAXIMUM_ITERS}, {SPLIT_INTO}), got "
                                               f"{_show(name)}")
    kind = name.lower()
    if kind not in (MAXIMUM_ITERS, SPLIT_INTO):
        if name not in _unknown_schedulers:
            _unknown_schedulers.add(name)
            log.warning("job '%s', field '%s.name': unknown scheduler '%s' taken as %s, as QCG-PilotJob does "
                        "(known: %s, %s)", job, fld, name, MAXIMUM_ITERS, MAXIMUM_ITERS, SPLIT_INTO)
        kind = MAXIMUM_ITERS
    if count.get("max") is not None or count.get("exact") is not None:
        what = "nodes" if fld == NODES_SCHED else "cores"
        raise JobSpecError(job, fld, f"'{kind}' chooses the {what} of each iteration: give 'min' only, not 'max' "
                                     "or 'exact'")
    params = sched.get("params")
    parts = None if params is None else _dict(job, params, fld + ".params").get("parts")
    if parts is None or kind != SPLIT_INTO:
        return kind, 0
    if isinstance(parts, str) and parts.strip().isascii() and parts.strip().isdigit():   # QCG-PilotJob: int(parts)
        parts = int(parts)
    return kind, _positive(job, parts, fld + ".params.parts")


_unknown_schedulers: set[str] = set()   # names warned about once (a batch may hold 100,000 jobs that use one)


def _unscheduled(job: str, cores: dict | None, nodes: dict | None) -> None:
    """A scheduler on a job without iterations: QCG-PilotJob ignores it (the job takes its min..max as given), but
    its ResourceSize refuses one beside 'exact'."""
    for count, fld in ((cores, SCHED), (nodes, NODES_SCHED)):
        if count is not None and count.get("exact") is not None:
            raise JobSpecError(job, fld, "an iteration scheduler sizes a range: not with 'exact'")


def size_at_submit(specs: list[JobSpec], total: int | None, per_node: int | None,
                   nodes: int | None = None) -> list[JobSpec]:
    """Fix the cores (or nodes) of jobs whose size depends on the resources (whole nodes, iteration schedulers)
    against those known now: the largest live executor's, or in local mode the machine's. With no executor yet,
    such a job keeps its least size (a warning says so)."""
    if not any(s.sizing for s in specs):
        return specs
    return [s if s.sizing is None else _sized(s, total, per_node, nodes) for s in specs]


def _sized(s: JobSpec, total: int | None, per_node: int | None, nodes: int | None) -> JobSpec:
    kind, parts, on_nodes, whole = s.sizing or ("", 0, False, False)
    known = nodes if on_nodes else total
    if (whole and per_node is None) or (kind != WHOLE_NODES and known is None):
        _warn_once(f"job '{s.name}': {kind} sizes against the executors' {'nodes' if on_nodes else 'cores'}, and "
                   f"none is up yet: it gets its least size ({s.cores_min} core(s){' per node' if s.nodes_min else ''}"
                   f"{f' on {s.nodes_min} node(s)' if on_nodes else ''})")
        return replace(s, sizing=None, nodes_max=s.nodes_min if on_nodes else s.nodes_max)
    cores = per_node if whole and per_node is not None else s.cores_min
    if kind == WHOLE_NODES or known is None:
        return replace(s, cores_min=cores, cores_max=cores, sizing=None)
    least = (s.nodes_min or 1) if on_nodes else s.cores_min
    n = s.n_iterations
    spread = None
    if kind == SPLIT_INTO:
        size = known // (parts or n)
    else:   # the first iteration has the least share; the last the most (placement gives each its own)
        size = maximum_iters_share(known, least, n, 0)
        if size >= least and maximum_iters_share(known, least, n, n - 1) != size:
            spread = f"{'k' if on_nodes else 'c'}|{known}|{least}"
    if size < least:
        unit = "node(s)" if on_nodes else "core(s)"
        raise ResourceError(s.name, NODES_SCHED if on_nodes else SCHED,
                            f"'{kind}' gives each iteration {size} {unit} of the {known} known now, less than the "
                            f"least asked for ({least})")
    if on_nodes:
        return replace(s, cores_min=cores, cores_max=cores if whole else s.cores_max, nodes_min=size,
                       nodes_max=size, sizing=None, spread=spread)
    return replace(s, cores_min=size, cores_max=size, sizing=None, spread=spread)


def maximum_iters_share(known: int, least: int, n: int, j: int) -> int:
    """The cores (or nodes) QCG-PilotJob's maximum-iters gives iteration j (0-based) of n out of ``known``: as few
    rounds as ``least`` allows, the earlier rounds one iteration larger when they do not divide evenly, and in a
    round of m iterations ``known // m`` each, one more for its last ``known % m`` (10 cores over 3: 3, 3, 4), so
    every round uses every core. common.lua's ``maximum_iters_share`` is the same arithmetic, per iteration."""
    rounds = -(-n // max(known // least, 1))
    q, big = divmod(n, rounds)   # the first `big` rounds have q + 1 iterations, the others q
    if j < big * (q + 1):
        m, pos = q + 1, j % (q + 1)
    else:
        m, pos = q, (j - big * (q + 1)) % q
    return known // m + int(pos >= m - known % m)


def _model(job: str, model: Any, exec: Any) -> str:
    if not isinstance(model, str) or MODEL_RE.fullmatch(model) is None:
        raise JobSpecError(job, "execution.model",
                           f"must be a model name like 'default' or 'openmpi', got {_show(model)}")
    if model.lower() in KNOWN_MODELS:   # QCG-PilotJob ignores the case of its models; plugins keep theirs
        model = model.lower()
    module, _, function = (exec or "").partition(":")
    if model == "python" and not (module.strip() and function.strip()):   # ':f', 'os:' failed only at launch
        raise JobSpecError(job, "execution.exec", "the python model runs 'package.module:function' given as 'exec', "
                                                  f"got {_show(exec)}")
    return model


def _after(job: str, after: Any) -> tuple[Dependency, ...]:
    if not isinstance(after, (list, tuple)):
        raise DependencyError(job, AFTER, f"must be a list of job names, got {_show(after)}")
    if len(after) == 1:   # the common case, without the cost of removing repeats
        deps: tuple[Dependency, ...] = (_dependency(after[0], job),)
    else:                 # a repeated name would be counted twice and never reach zero
        deps = tuple(dict.fromkeys([_dependency(text, job) for text in after]))
    for dep in deps:
        if dep.job == job:
            raise DependencyError(job, AFTER, f"'{dep}': a job cannot depend on itself")
    return deps


def _dependency(text: Any, job: str) -> Dependency:
    """Dependency.parse through a cache: many jobs of a batch often wait for the same one."""
    try:
        return _cached_dependency(text)
    except (DependencyError, TypeError):
        return Dependency.parse(text, job)   # raises again, naming the job


@lru_cache(maxsize=4096)   # Dependency and Iteration are frozen, so jobs may share them
def _cached_dependency(text: str) -> Dependency:
    return Dependency.parse(text, "")


@lru_cache(maxsize=1024)
def _range_iteration(start: int, stop: int) -> Iteration:
    return Iteration(start, stop)


def _iteration(job: str, v: Any) -> Iteration:
    _known(job, _dict(job, v, "iteration"), ITER_FIELDS, "iteration")
    values = v.get("values")
    if values is not None:
        if v.get("start") is not None or v.get("stop") is not None:
            raise JobSpecError(job, "iteration", "'values' cannot be combined with 'start' or 'stop'")
        if not isinstance(values, (list, tuple)) or not values:
            raise JobSpecError(job, "iteration.values", f"must be a non-empty list, got {_show(values)}")
        for i, x in enumerate(values):
            if not isinstance(x, (str, int, float)) or isinstance(x, bool) or _unprintable(x) or (
                    type(x) is float and not math.isfinite(x)):
                raise JobSpecError(job, f"iteration.values[{i}]", f"must be a string or a number, got {_show(x)}")
        return Iteration(0, len(values), tuple(values))
    if v.get("stop") is None:
        raise JobSpecError(job, "iteration.stop", "required (or 'values')")
    start = 0 if v.get("start") is None else _positive(job, v["start"], "iteration.start", 0)
    stop = _positive(job, v["stop"], "iteration.stop", 0)
    if stop <= start:
        raise JobSpecError(job, "iteration.stop", f"must be greater than start ({start}), got {stop}")
    return _range_iteration(start, stop)


def parse_job(d: Any) -> JobSpec:
    """One QCG-PilotJob job description -> JobSpec; raises JobSpecError naming the job and field.

    A null value counts as absent: QCG-PilotJob itself writes ``"script": null`` next to ``"exec"``."""
    if not isinstance(d, dict):
        raise JobSpecError(None, None, f"a job description must be an object, got {_show(d)}")
    job = _check_name(d.get("name"))
    _known(job, d, JOB_FIELDS, "")
    ex = d.get("execution")
    if ex is None:
        raise JobSpecError(job, "execution", "required: an object with 'exec' or 'script'")
    _known(job, _dict(job, ex, "execution"), EXEC_FIELDS, "execution")
    res = d.get("resources")
    res = {} if res is None else _dict(job, res, "resources")
    _known(job, res, RES_FIELDS, "resources")
    deps = d.get("dependencies")
    deps = {} if deps is None else _dict(job, deps, "dependencies")
    _known(job, deps, DEP_FIELDS, "dependencies")
    get = ex.get
    return make_job(job, get("exec"), get("script"), get("args"), get("env"), get("stdin"), get("stdout"),
                    get("stderr"), get("wd"), get("model"), get("model_opts"), get("modules"), get("venv"),
                    res.get("numCores"), res.get("numNodes"), res.get("wt"), deps.get("after"), d.get("iteration"),
                    d.get("attributes"), res.get("nodeCrs"))


# ---------------------------------------------------------------------- a task's variables
LAUNCH_VARIABLES = frozenset({"it", "itval", "ncores", "nnodes", "nlist", "root_wd", "jname"})


def task_variables(job: str, iteration: Iteration | None, it: int | None, root_wd: str | None,
                   place: Sequence[str] | None) -> dict[str, str]:
    """The ``${...}`` a task is launched with (README: Substituted at launch). The one place that knows them: the
    executor launches with them, the run record and ``qcgpj wait`` find with them where a finished task's stderr
    went, compat's ``info`` its working directory; copies of this drifted apart. ``place``: the task's cores as
    (ncores, nnodes, nlist, ...), see ``placement_of``. What the caller does not know (None: the executors' root
    seen from a client of a queue, the cores of a task that never started, the iteration of an iterative job's
    own entry) is left out, so its ``${...}`` stays as written and ``resolved`` tells."""
    var = {"jname": job}
    if it is not None:
        var["it"] = str(it)
        var["itval"] = "" if iteration is None else iteration.value(it)
    elif iteration is None:
        var["it"] = var["itval"] = ""
    if root_wd is not None:
        var["root_wd"] = root_wd
    if place is not None:
        var["ncores"], var["nnodes"], var["nlist"] = place[0], place[1], place[2]
    return var


def placement_of(nodes: Mapping[str, Sequence[int]]) -> tuple[str, str, str]:
    """(ncores, nnodes, nlist) of a task's cores as ``info`` gives them ({node: [cores]}, in the order given)."""
    return str(sum(len(c) for c in nodes.values())), str(len(nodes)), ",".join(nodes)


def resolved(text: str, variables: Mapping[str, str]) -> str | None:
    """``text`` with a task's variables substituted; None if one of them was not known (left as written)."""
    if "${" not in text:
        return text
    if any(m.group(1) in LAUNCH_VARIABLES and m.group(1) not in variables for m in SUBST_RE.finditer(text)):
        return None
    return substitute(text, variables)


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Replace ${name} for the names given; others (a shell's ${HOME}) stay as written."""
    if "${" not in text:
        return text
    return SUBST_RE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)
