"""``Jobs``: the builder QCG-PilotJob users know, each job checked as it is added.

``add`` builds the JobSpec directly (no intermediate dict, no schema): 100,000 calls and the JSON of each take
about a second, where a JSON Schema check per job would take minutes.
"""
from __future__ import annotations

import inspect
import itertools
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

from .errors import ArgumentError, DuplicateJobError, JobSpecError, QcgpjError, UnknownJobError
from .batch import parse_jobs_file
from .fieldcheck import _show
from .jobspec import JobSpec, make_job, parse_job


class Jobs:
    """An ordered batch of jobs: ``Jobs().add(name="a", exec="echo", numCores=2).add(name="b", ..., after="a")``."""

    __slots__ = ("_jobs",)

    def __init__(self) -> None:
        self._jobs: dict[str, JobSpec] = {}

    def add(self, name: str | None = None, exec: str | None = None, script: str | None = None,
            args: list | None = None, stdin: str | None = None, stdout: str | None = None,
            stderr: str | None = None, wd: str | None = None, env: dict | None = None,
            modules: list[str] | str | None = None, venv: str | None = None, model: str | None = None,
            model_opts: dict | None = None, numCores: Any = None, numNodes: Any = None,
            wt: str | float | None = None, iteration: Any = None, after: list[str] | str | None = None,
            attributes: dict | None = None, nodeCrs: dict | None = None, **unknown: Any) -> Jobs:
        """Add one job; without a name it gets a unique one (QCG-PilotJob uses a UUID4; see ``_unique_name``).

        ``numCores``/``numNodes``: an int or ``{"exact": n}`` / ``{"min": a, "max": b}``; ``iteration``: N (0..N-1),
        ``range(s, e)``, ``{"start": s, "stop": e}``, ``{"values": [...]}`` or a list of values; ``after``: a name or
        a list. Errors name the job and the field as in the file format (``resources.numCores``)."""
        if isinstance(name, dict):   # QCG-PilotJob's add({...}, **more)
            given = {k: v for k, v in locals().items() if k not in ("self", "name", "unknown")}
            return self._add_attrs(name, {**given, **unknown})
        if unknown:
            raise JobSpecError(name if isinstance(name, str) else None, next(iter(unknown)),
                               f"unknown job attribute (known: {', '.join(_ADD_PARAMS)})")
        if name is None:
            name = _unique_name()
        if iteration is not None:
            iteration = _iteration_arg(name, iteration)
        spec = make_job(name, exec, script, args, env, stdin, stdout, stderr, wd, model, model_opts, modules, venv,
                        numCores, numNodes, wt, [after] if isinstance(after, str) else after, iteration, attributes,
                        nodeCrs)
        return self._append(spec)

    def add_std(self, d: dict | None = None, **attrs: Any) -> Jobs:
        """Add one job given as a full QCG-PilotJob job description (a unique name if it has none); as there, its
        fields may also come as keywords (``add_std(name="a", execution={...})``), which win over ``d``'s."""
        if attrs or d is None:
            if not isinstance(d, (dict, type(None))):
                raise JobSpecError(None, None, f"a job description must be an object, got {_show(d)}")
            d = {**(d or {}), **attrs}
        if isinstance(d, dict) and "name" not in d:
            d = {**d, "name": _unique_name()}
        return self._append(parse_job(d))

    def _append(self, spec: JobSpec) -> Jobs:
        if spec.name in self._jobs:
            raise DuplicateJobError(spec.name, "name", "already added to this batch")
        self._jobs[spec.name] = spec
        return self

    def _add_attrs(self, attrs: dict, given: dict[str, Any]) -> Jobs:
        merged = {**attrs, **{k: v for k, v in given.items() if v is not None}}
        for key in merged:
            if key not in _ADD_PARAMS:
                raise JobSpecError(merged.get("name") if isinstance(merged.get("name"), str) else None, key,
                                   f"unknown job attribute (known: {', '.join(_ADD_PARAMS)})")
        if isinstance(merged.get("name"), dict):
            raise JobSpecError(None, "name", "must be a string")
        return self.add(**merged)

    def remove(self, name: str) -> Jobs:
        if not isinstance(name, str) or self._jobs.pop(name, None) is None:
            raise UnknownJobError(f"job '{name}' is not in this batch")
        return self

    def clear(self) -> int:
        """Remove every job; returns how many there were."""
        n = len(self._jobs)
        self._jobs.clear()
        return n

    def jobs(self) -> list[JobSpec]:
        return list(self._jobs.values())

    def ordered_names(self) -> list[str]:
        """Names in the order the jobs were added."""
        return list(self._jobs)

    job_names = ordered_job_names = ordered_names   # QCG-PilotJob's names for the same list

    def load_from_file(self, path: str) -> Jobs:
        """Add the jobs of a request file or of a file written by ``save_to_file``."""
        if not isinstance(path, (str, os.PathLike)):
            raise ArgumentError(f"Jobs.load_from_file: 'path' must be a path, got {type(path).__name__} {path!r}")
        for spec in parse_jobs_file(path)[0]:
            self._append(spec)
        return self

    def save_to_file(self, path: str) -> None:
        """Write the jobs as a JSON list of QCG-PilotJob job descriptions."""
        if not isinstance(path, (str, os.PathLike)):   # an int would be taken as an open file descriptor
            raise ArgumentError(f"Jobs.save_to_file: 'path' must be a path, got {type(path).__name__} {path!r}")
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump([s.to_dict() for s in self._jobs.values()], f, indent=2)
        except (OSError, TypeError) as exc:
            raise QcgpjError(f"cannot write {path!r}: {getattr(exc, 'strerror', None) or exc}") from None

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._jobs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._jobs


_names = itertools.count()
_prefix = uuid.uuid4().hex[:16]


def _unique_name() -> str:
    """A random 64-bit prefix per process plus a counter: unique in practice like QCG-PilotJob's UUID4 names, at a
    tenth of the cost (uuid4() reads the OS random source on every call)."""
    return f"{_prefix}-{next(_names)}"


def _new_prefix() -> None:
    global _prefix, _names
    _prefix, _names = uuid.uuid4().hex[:16], itertools.count()


if hasattr(os, "register_at_fork"):   # forked workers must not repeat their parent's names
    os.register_at_fork(after_in_child=_new_prefix)
_ADD_PARAMS = tuple(p for p in inspect.signature(Jobs.add).parameters if p not in ("self", "unknown"))


def _iteration_arg(job: str, it: Any) -> Any:
    """The builder's shorthands: ``10`` means 0..9, ``range(2, 5)`` 2..4, a list is the values; a dict is the
    description's own form."""
    if isinstance(it, (list, tuple)):
        return {"values": it}
    if isinstance(it, range) and it.step == 1:
        return {"start": it.start, "stop": it.stop}
    if isinstance(it, dict):
        return it
    if isinstance(it, int) and not isinstance(it, bool) and it >= 1:
        return {"stop": it}
    raise JobSpecError(job if isinstance(job, str) else None, "iteration",
                       f"must be a number of iterations (>= 1), a range, a list of values or a dict, got {it!r}")
