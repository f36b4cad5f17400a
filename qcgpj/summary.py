"""What a run prints when it ends (``qcgpj run``, ``qcgpj wait``): the count by state, the first tasks that did not
succeed with their exit code, message and stderr file, and one line counting what those lines left out."""
from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

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
    from .record import stderr_path
    for name in bad[:SHOW_FAILED]:
        info = record[name] if record is not None else m.info(name)
        spec = JobSpec.from_json(json.dumps(info["spec"])) if record is None else None
        failed: list[dict] = []
        if (info.get("iterations") or {}).get("FAILED"):
            if spec is None:
                failed = [e for k, e in record.items() if k.startswith(name + ":") and e["state"] == "FAILED"]
            else:
                failed = [{"name": f"{name}:{it}", **rec, "stderr": stderr_path(spec, None, it, rec.get("nodes"))}
                          for it, rec in m.iterations(name).items() if rec["state"] == "FAILED"]
        elif spec is not None:
            info["stderr"] = stderr_path(spec, None, None, info.get("nodes"))
        for rec in failed[:SHOW_FAILED]:
            yield _task_line(rec), Counter({rec["state"]: 1})
        if not failed:
            its = info.get("iterations")
            yield _task_line(info), _iteration_counts(its) if its else Counter({info["state"] or NOT_FINAL: 1})


def _task_line(info: dict) -> str:
    stderr = info.get("stderr")
    code = info.get("exit_code")
    text = f"{info['name']}: {info['state']}" + (f" exit {code}" if code is not None else "")
    if info.get("message") and info["message"] != f"exit code {code}":
        text += f": {info['message']}"
    if stderr and info["state"] == "FAILED":
        text += f" (stderr: {stderr})"
    return text
