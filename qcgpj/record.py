"""The record of a local run: written to the run directory before the private queue is dropped, so what ran can
still be asked about (``qcgpj info --from DIR NAME``, ``qcgpj status --from DIR``).

JSON lines: a first line about the run, then one line per job (``Manager.info``'s fields) and, for iterative
jobs, one per iteration that has a record. Like QCG-PilotJob's ``jobs.report``, one line per job is greppable and
appends cheaply.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

from .errors import QcgpjError, UnknownJobError

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
    hashes = m.store.job_hashes(names)
    for name in names:
        h = hashes.get(name)
        if not h:
            continue
        info = m.job_info(name, h)
        info["stderr"] = stderr_path(info["spec"], directory, None, info.get("nodes"))
        yield info
        if "iterations" in info:
            for it, rec in sorted(m.iterations(name).items()):
                if rec.get("exit_code") is not None or rec["state"] in ("FAILED", "CANCELED", "OMITTED"):
                    yield {"name": f"{name}:{it}", **rec,
                           "stderr": stderr_path(info["spec"], directory, it, rec.get("nodes"))}


def stderr_path(spec: dict[str, Any], directory: str, it: int | None,
                nodes: dict[str, list[int]] | None = None) -> str | None:
    """Where a task's stderr went, as the executor resolved it (None: not redirected, or not one file: an iterative
    job's own entry for a per-iteration path). ``nodes``: the task's cores (its ``info``), for ${ncores}..."""
    from .jobspec import SUBST_RE, substitute   # here: the CLI imports this module for every command, services included
    from .requests import LAUNCH_VARIABLES
    exe = spec.get("execution", {})
    if not exe.get("stderr"):
        return None
    var = {"root_wd": directory, "jname": spec.get("name", "")}
    iteration = spec.get("iteration")
    if iteration is None:
        var["it"] = var["itval"] = ""
    elif it is not None:
        values = iteration.get("values")
        var["it"] = str(it)
        var["itval"] = str(values[it]) if values is not None and 0 <= it < len(values) else str(it)
    if nodes:
        var.update(ncores=str(sum(len(c) for c in nodes.values())), nnodes=str(len(nodes)), nlist=",".join(nodes))
    wd = substitute(exe["wd"], var) if exe.get("wd") else ""
    path = substitute(exe["stderr"], var)
    if any(m.group(1) in LAUNCH_VARIABLES for m in SUBST_RE.finditer(wd + path)):
        return None   # a variable of the task this entry is not (or that never started)
    return os.path.join(os.path.join(directory, wd) if wd else directory, path)


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
