"""The record of a local run: written to the run directory before the private queue is dropped, so what ran can
still be asked about (``qcgpj info --from DIR NAME``, ``qcgpj status --from DIR``, ``qcgpj report --from DIR``).

JSON lines: a first line about the run, then one line per job (``Manager.info``'s fields) and, for iterative
jobs, one per iteration that has a record of its own in the queue (it started, or ended by itself). The others
never started, and share what the queue knew of them: their job's line says it (its state and message, the
range in ``iterations``, and for a job not final the hash fields ``unrecorded`` of where placement had got to),
and readers derive each one's state and message from it as ``info`` does on a live queue
(:func:`qcgpj.store.unrecorded_info`). So a record grows with the tasks that ran, not with the iteration count:
a job of 10^12 iterations canceled after a few ran is a few lines. An older record, with a line for every
iteration, reads the same. Like QCG-PilotJob's ``jobs.report``, one line per job is greppable and appends
cheaply.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from .errors import QcgpjError, UnknownJobError

if TYPE_CHECKING:
    from .jobspec import JobSpec

RECORD_FILE = "qcgpj-run.jsonl"
UNRECORDED_FIELDS = ("next", "pdeps")   # what unrecorded_state reads besides the state and it0, for a job not final


def path_in(directory: str) -> str:
    return os.path.join(directory, RECORD_FILE)


def write(m: Any, names: Sequence[str], directory: str, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Write the record of ``names`` (all jobs of the run) in one pass of reads; returns its path and entries.
    Written aside and moved in place, so a reader never sees half a record; nothing is left aside on an error
    (a full disk: one-line QcgpjError)."""
    path = path_in(directory)
    tmp = path + ".tmp"
    entries = {}
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps({"run": meta}) + "\n")
            for entry in _entries(m, names, directory):
                entries[entry["name"]] = entry
                f.write(json.dumps(entry) + "\n")
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise QcgpjError(f"cannot write the record of the run, {path}: {exc.strerror or exc}") from None
        raise
    return path, entries


def _entries(m: Any, names: Sequence[str], directory: str) -> Iterator[dict[str, Any]]:
    from .jobspec import JobSpec   # here: the CLI imports this module for every command, services included
    from .taskrecords import FINAL_STATES, parse_record
    hashes = m.store.job_hashes(names)
    for name in names:
        h = hashes.get(name)
        if not h:
            continue
        info = m.job_info(name, h)
        spec = JobSpec.from_json(h["spec"])
        info["stderr"] = stderr_path(spec, directory, None, info.get("nodes"))
        if "iterations" in info and info["state"] not in FINAL_STATES:   # its unrecorded ones: READY, SCHEDULED...
            info["unrecorded"] = {k: h.get(k) for k in UNRECORDED_FIELDS}
        yield info
        if "iterations" in info:   # only those with a record of their own: the job's line tells of the others
            recs = m.store.iteration_records(name)
            for it in sorted(int(k) for k in recs):
                rec = parse_record(recs[str(it)])
                yield {"name": f"{name}:{it}", **rec, "stderr": stderr_path(spec, directory, it, rec.get("nodes"))}


def job_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The job hash's fields, as far as an iterative job's line keeps them, from which its iterations without a
    line take their state and message (store.unrecorded_state, unrecorded_message); an older record has no
    ``unrecorded`` (it wrote every iteration of a job not final)."""
    return {"state": entry.get("state"), "message": entry.get("message"), "it0": entry["iterations"]["start"],
            **(entry.get("unrecorded") or {})}


def unrecorded_entry(job_entry: Mapping[str, Any], it: int, directory: str | None) -> dict[str, Any]:
    """Iteration ``it`` of this job, which has no line of its own: what ``info`` gives on a live queue, with the
    stderr file it would have written (in ``directory``, the run's)."""
    from .jobspec import JobSpec
    from .taskrecords import unrecorded_info
    spec = JobSpec.from_json(json.dumps(job_entry["spec"]))
    name = job_entry["name"]
    return {"name": f"{name}:{it}", **unrecorded_info(job_fields(job_entry), it),
            "stderr": stderr_path(spec, directory, it, None)}


def iterations_by_job(entries: Mapping[str, dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Job -> iteration -> its line, for the iterations that have one: read once, not per iteration asked."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for key, e in entries.items():
        job, colon, it = key.rpartition(":")
        if colon and it.isdigit():
            out.setdefault(job, {})[int(it)] = e
    return out


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
    # JSON, but not our lines (another tool's file, an edit): said here, not as a TypeError of a reader
    bad = next((i for i, e in enumerate(lines) if not isinstance(e, dict) or not isinstance(e.get("run", {}), dict)
                or not isinstance(e.get("name", ""), str)), None)
    if bad is not None:
        raise QcgpjError(f"cannot read {path}: line {bad + 1} is not a line of a qcgpj run's record")
    meta = lines[0].get("run", {}) if lines else {}
    return meta, {e["name"]: e for e in lines[1:] if "name" in e}


def lookup(directory: str, name: str) -> dict[str, Any]:
    meta, entries = load(directory)
    return find(meta, entries, directory, name)


def find(meta: Mapping[str, Any], entries: Mapping[str, dict[str, Any]], directory: str, name: str) -> dict[str, Any]:
    """A job or iteration of a loaded record: its line, or for an iteration without one, what its job's line
    says of it (as ``info`` would on the queue); UnknownJobError for what the record does not hold."""
    if name in entries:
        e = entries[name]
        return {k: v for k, v in e.items() if k != "unrecorded"} if "unrecorded" in e else e   # info's shape
    job, colon, it = name.partition(":")
    e = entries.get(job)
    if colon and e is not None and "iterations" in e:
        its = e["iterations"]
        try:
            k = int(it)
        except ValueError:
            k = None
        if k is not None and its["start"] <= k < its["start"] + its["total"]:
            return unrecorded_entry(e, k, meta.get("directory") or directory)
    raise UnknownJobError(f"'{name}' is not in the record of {directory}")
