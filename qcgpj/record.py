"""The record of a local run: written to the run directory before the private queue is dropped, so what ran can
still be asked about (``qcgpj info --from DIR NAME``, ``qcgpj status --from DIR``).

JSON lines: a first line about the run, then one line per job (``Manager.info``'s fields) and, for iterative
jobs, one per iteration that has a record, or every iteration of a job that was not final (their states as
``info`` gave them). Like QCG-PilotJob's ``jobs.report``, one line per job is greppable and
appends cheaply.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .errors import QcgpjError, UnknownJobError

if TYPE_CHECKING:
    from .jobspec import JobSpec

RECORD_FILE = "qcgpj-run.jsonl"


def path_in(directory: str) -> str:
    return os.path.join(directory, RECORD_FILE)


def write(m: Any, names: Sequence[str], directory: str, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Write the record of ``names`` (all jobs of the run) in one pass of reads; returns its path and entries."""
    path = path_in(directory)
    tmp = path + ".tmp"
    entries = {}
    with open(tmp, "w") as f:
        f.write(json.dumps({"run": meta}) + "\n")
        for entry in _entries(m, names, directory):
            entries[entry["name"]] = entry
            f.write(json.dumps(entry) + "\n")
    os.replace(tmp, path)
    return path, entries


def _entries(m: Any, names: Sequence[str], directory: str) -> Iterator[dict[str, Any]]:
    from .jobspec import JobSpec   # here: the CLI imports this module for every command, services included
    from .store import FINAL_STATES
    hashes = m.store.job_hashes(names)
    for name in names:
        h = hashes.get(name)
        if not h:
            continue
        info = m.job_info(name, h)
        spec = JobSpec.from_json(h["spec"])
        info["stderr"] = stderr_path(spec, directory, None, info.get("nodes"))
        yield info
        if "iterations" in info:   # those of a job not final too: their states differ from its (READY, SCHEDULED)
            final = info["state"] in FINAL_STATES
            for it, rec in sorted(m.iterations(name).items()):
                if not final or rec.get("exit_code") is not None or rec["state"] in ("FAILED", "CANCELED", "OMITTED"):
                    yield {"name": f"{name}:{it}", **rec, "stderr": stderr_path(spec, directory, it, rec.get("nodes"))}


_ROOT = "/\0root"   # stands for the executors' root where the caller does not know it: no real path holds a NUL


def stderr_path(spec: JobSpec, directory: str | None, it: int | None,
                nodes: dict[str, list[int]] | None = None) -> str | None:
    """Where a task's stderr went, as its executor resolved it (``jobspec.task_variables``: the executor's own), in
    ``directory``, the executor's root; None: not known, relative to it (a client of a queue, which names the file
    as the executors' --wd has it). None: not redirected, or not one file (an iterative job's own entry for a
    per-iteration path, a task that never started for ${ncores}...). ``nodes``: the task's cores (its ``info``)."""
    from .jobspec import placement_of, resolved, task_variables
    if not spec.stderr:
        return None
    root = _ROOT if directory is None else directory
    var = task_variables(spec.name, spec.iteration, it, root, placement_of(nodes) if nodes else None)
    wd = resolved(spec.wd, var) if spec.wd else ""
    path = resolved(spec.stderr, var)
    if wd is None or path is None:
        return None
    full = os.path.join(os.path.join(root, wd) if wd else root, path)
    if directory is None:
        if full.startswith(_ROOT + "/"):
            return full[len(_ROOT) + 1:]
        if _ROOT in full:
            return None   # ${root_wd} inside a path, not at its start: not a file a client can name
    return full


def load(directory: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the run, name -> entry) from a record; a one-line error when there is none."""
    path = path_in(directory)
    try:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise QcgpjError(f"no record of a run in {directory} (no {RECORD_FILE}): only local `qcgpj run` "
                         "writes one") from None
    except (OSError, ValueError) as exc:
        raise QcgpjError(f"cannot read {path}: {exc}") from None
    meta = lines[0].get("run", {}) if lines else {}
    return meta, {e["name"]: e for e in lines[1:] if "name" in e}


def lookup(directory: str, name: str) -> dict[str, Any]:
    _meta, entries = load(directory)
    if name not in entries:
        raise UnknownJobError(f"'{name}' is not in the record of {directory}")
    return entries[name]
