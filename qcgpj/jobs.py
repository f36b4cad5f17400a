"""``Jobs``: the builder QCG-PilotJob users know, checked as each job is added."""
from __future__ import annotations

import itertools
import uuid
from typing import Any, Iterator

from .errors import DuplicateJobError, JobSpecError
from .jobspec import JobSpec, parse_job

_EXEC_KEYS = ("exec", "script", "args", "stdin", "stdout", "stderr", "wd", "env", "modules", "venv", "model",
              "model_opts")
_session = uuid.uuid4().hex[:8]
_counter = itertools.count()


class Jobs:
    """An ordered batch of job descriptions: ``Jobs().add(name=..., exec=..., numCores=2, iteration=10)``."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobSpec] = {}

    def add(self, name: str | None = None, exec: str | None = None, script: str | None = None,  # noqa: A002
            args: list | None = None, stdin: str | None = None, stdout: str | None = None,
            stderr: str | None = None, wd: str | None = None, env: dict | None = None,
            modules: list[str] | str | None = None, venv: str | None = None, model: str | None = None,
            model_opts: dict | None = None, numCores: Any = None, numNodes: Any = None,  # noqa: N803
            wt: Any = None, iteration: Any = None, after: list[str] | str | None = None,
            attributes: dict | None = None) -> "Jobs":
        """Add one job; a missing name gets a unique one, as in QCG-PilotJob."""
        local = locals()
        execution = {k: local[k] for k in _EXEC_KEYS if local[k] is not None}
        d: dict[str, Any] = {"name": name if name is not None else f"job-{_session}-{next(_counter)}",
                             "execution": execution}
        res = {k: v for k, v in (("numCores", numCores), ("numNodes", numNodes), ("wt", wt)) if v is not None}
        if res:
            d["resources"] = res
        if after is not None:
            d["dependencies"] = {"after": [after] if isinstance(after, str) else list(after)}
        if iteration is not None:
            d["iteration"] = _iteration(iteration)
        if attributes is not None:
            d["attributes"] = attributes
        return self.add_std(d)

    def add_std(self, d: dict) -> "Jobs":
        """Add one job given as a QCG-PilotJob job description dict."""
        spec = parse_job(d)
        if spec.name in self._jobs:
            raise DuplicateJobError(spec.name, "name", "already added to this batch")
        self._jobs[spec.name] = spec
        return self

    def remove(self, name: str) -> "Jobs":
        if self._jobs.pop(name, None) is None:
            raise JobSpecError(name, "name", "not in this batch")
        return self

    def jobs(self) -> list[JobSpec]:
        return list(self._jobs.values())

    def ordered_names(self) -> list[str]:
        return list(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._jobs.values())


def _iteration(it: Any) -> Any:
    """``10`` means 0..9; a list is values; a dict is passed on as written."""
    if isinstance(it, list):
        return {"values": it}
    if isinstance(it, int) and not isinstance(it, bool):
        return {"start": 0, "stop": it}
    return it
