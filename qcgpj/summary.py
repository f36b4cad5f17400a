"""What a run prints when it ends (``qcgpj run``, ``qcgpj wait``): the count by state, the first tasks that did not
succeed with their exit code, message and stderr file, and one line counting what those lines left out."""
from __future__ import annotations

import functools
import itertools
import json
import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Collection

import click

if TYPE_CHECKING:
    from .manager import Manager

STATE_ORDER = ("SUCCEED", "FAILED", "OMITTED", "CANCELED", "EXECUTING", "SCHEDULED", "READY", "QUEUED")


def print_summary(m: Manager | None, states: dict[str, str | None], where: str = "",
             record: dict[str, dict] | None = None) -> bool:
    """The count by state, then the first tasks that did not succeed (exit code, message, stderr path), then one
    line counting, in tasks by state, what those lines left out: on a sweep with many failures the first lines
    are often one job's, and a count of jobs ('2 job(s) did not succeed') hid how many tasks failed or were
    omitted, and how."""
    counts = Counter(states.values())
    parts = [f"{st} {counts[st]}" for st in STATE_ORDER if counts.get(st)]
    click.echo(f"{len(states)} jobs" + (": " + ", ".join(parts) if parts else "") + (f" ({where})" if where else ""))
    bad = [n for n, st in states.items() if st != "SUCCEED"]
    shown = list(itertools.islice(_failed_tasks(m, bad, record), SHOW_FAILED))
    for line, _ in shown:
        click.echo("  " + line)
    left = _tasks_not_succeeded(m, bad, states, record)
    for _, covered in shown:
        left.subtract(covered)
    left = +left   # drops the states left at zero
    if left:
        order = [st for st in STATE_ORDER if left[st]] + sorted(st for st in left if st not in STATE_ORDER)
        total = sum(left.values())
        click.echo(f"  ... and {total:,} more task{'s' if total > 1 else ''} not succeeded: "
                   + ", ".join(f"{left[st]:,} {st}" for st in order))
    return not bad


SHOW_FAILED = 10
NOT_FINAL = "not final"   # the tail's word for iterations of a job that is not final (a run stopped waiting)


def _iteration_counts(its: dict[str, Any]) -> Counter:
    """An iterative job's iterations that did not succeed, by state, from its counts (info's 'iterations'); those
    not final yet (a job is final once all its iterations are) as NOT_FINAL."""
    out = Counter({st: int(its.get(st) or 0) for st in ("FAILED", "CANCELED", "OMITTED")})
    out[NOT_FINAL] = int(its.get("total") or 0) - int(its.get("finished") or 0)
    return +out


def _tasks_not_succeeded(m: Manager | None, bad: list[str], states: dict[str, str | None],
                         record: dict[str, dict] | None) -> Counter:
    """Every task of these jobs that did not succeed, by state: a single job is one task, an iterative job its
    iterations. From the run record, else one pipelined read of the counts (not info per job: a sweep may
    have 50,000 jobs that did not succeed)."""
    out: Counter = Counter()
    if record is not None:
        rows = [(n, (record.get(n) or {}).get("iterations")) for n in bad]
    else:
        assert m is not None
        fields = m.store.job_fields(bad, "n", "done", "n_FAILED", "n_CANCELED", "n_OMITTED")
        rows = [(n, None if f[0] is None else {"total": f[0], "finished": f[1], "FAILED": f[2], "CANCELED": f[3],
                                                "OMITTED": f[4]}) for n, f in zip(bad, fields)]
    for name, its in rows:
        out += _iteration_counts(its) if its else Counter({states[name] or NOT_FINAL: 1})
    return out


def _failed_tasks(m: Manager | None, bad: list[str], record: dict[str, dict] | None):
    """(line, the tasks it tells of by state) about failed tasks: an iterative job's failed iterations, else the
    job itself (an iterative job's line tells of its iterations that did not succeed: its message counts them).
    From the run record in local mode; otherwise read from the queue, with stderr paths relative to the
    executors' --wd (which the client does not know)."""
    from .jobspec import JobSpec
    from .record import iterations_by_job, stderr_path, unrecorded_entry
    from .taskrecords import parse_record
    by_job = iterations_by_job(record) if record is not None else {}   # one pass over the record, not one per job
    for name in bad[:SHOW_FAILED]:
        info = record[name] if record is not None else m.info(name)
        spec = JobSpec.from_json(json.dumps(info["spec"])) if record is None else None
        failed: list[dict] = []
        unrecorded = functools.partial(unrecorded_entry, info, directory=None if record is None else os.getcwd())
        if (info.get("iterations") or {}).get("FAILED"):
            if record is not None:
                mine = by_job.get(name, {})
                failed = _first_failed(info, mine, {it: e for it, e in mine.items() if e["state"] == "FAILED"},
                                       unrecorded)
            else:
                recs = m.store.iteration_records(name)
                bad_its = {int(k): {"name": f"{name}:{k}", **parse_record(r)} for k, r in recs.items()
                           if r.startswith("FAILED|")}
                failed = _first_failed(info, {int(k) for k in recs}, bad_its, unrecorded)
                for rec in failed:
                    rec["stderr"] = stderr_path(spec, None, int(rec["name"].rpartition(":")[2]), rec.get("nodes"))
        elif spec is not None:
            info["stderr"] = stderr_path(spec, None, None, info.get("nodes"))
        for rec in failed[:SHOW_FAILED]:
            yield _task_line(rec), Counter({rec["state"]: 1})
        if not failed:
            its = info.get("iterations")
            yield _task_line(info), _iteration_counts(its) if its else Counter({info["state"] or NOT_FINAL: 1})


def _first_failed(job: dict, recorded: Collection[int], failed: dict[int, dict],
                  unrecorded: Callable[[int], dict]) -> list[dict]:
    """The first failed iterations of an iterative job (its ``info``), in order: those with a record (``failed``,
    of the iterations ``recorded``) and those failed with their job without one (not placeable), found from the
    runs of those without a record, not by walking every iteration (a job may have 10^12); ``unrecorded(it)``:
    the details of such an iteration (of a job FAILED: final, so its state and message are the job's)."""
    from .record import job_fields
    from .taskrecords import unrecorded_runs
    its = job["iterations"]
    out = sorted(failed.items())[:SHOW_FAILED]
    if job["state"] == "FAILED":
        taken = 0   # the runs come in order: SHOW_FAILED of them at most are looked at, however many gaps
        for first, last, st in unrecorded_runs(job_fields(job), its["start"], its["total"], recorded):
            if st == "FAILED":
                take = range(first, min(last + 1, first + SHOW_FAILED - taken))
                out += [(it, unrecorded(it)) for it in take]
                taken += len(take)
                if taken >= SHOW_FAILED:
                    break
    return [e for _, e in sorted(out, key=lambda x: x[0])[:SHOW_FAILED]]


def _task_line(info: dict) -> str:
    stderr = info.get("stderr")
    code = info.get("exit_code")
    text = f"{info['name']}: {info['state']}" + (f" exit {code}" if code is not None else "")
    if info.get("message") and info["message"] != f"exit code {code}":
        text += f": {info['message']}"
    if stderr and info["state"] == "FAILED":
        text += f" (stderr: {stderr})"
    return text
