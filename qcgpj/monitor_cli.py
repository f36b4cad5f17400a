"""``qcgpj top`` and ``qcgpj report``: watching a namespace live and reporting on it afterwards."""
from __future__ import annotations

import json
from typing import Any

import click

from .cli import STATE_ORDER, Seconds, _errors, _remote, from_option, main, ns_option, record_url_option, url_option

@main.command()
@url_option
@ns_option
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--json", "as_json", is_flag=True, help="One frame as JSON (raw epochs), then exit.")
@click.option("--interval", type=Seconds(min=0.1), default=1.0, show_default=True, help="Seconds per frame.")
@_errors
def top(redis_url: str | None, namespace: str, once: bool, as_json: bool, interval: float) -> None:
    """A live view of the namespace: executors, tasks by state, throughput, ETA, latest failures (q quits)."""
    from . import top as view
    store = _remote(redis_url, namespace).store
    if as_json:
        click.echo(json.dumps(view.snapshot(store), indent=1))
    elif once:
        from rich.console import Console
        Console().print(view.render(view.snapshot(store)))
    else:
        view.live(store, interval)


@main.group()
def report() -> None:
    """Reports over a namespace: stats, jobs, gantt, utilisation."""


def _report_source(redis_url: str | None, namespace: str, from_dir: str | None) -> Any:
    from .report import RecordSource, RedisSource
    return RecordSource(from_dir) if from_dir is not None else RedisSource(_remote(redis_url, namespace).store)


def _emit_rows(rows: list[dict[str, Any]], as_json: bool, as_csv: bool) -> bool:
    """Rows as JSON or CSV if asked; False when the caller prints them for people."""
    from .report import as_csv as to_csv
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    elif as_csv:
        click.echo(to_csv(rows), nl=False)
    return as_json or as_csv


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (raw epochs).")
csv_option = click.option("--csv", "as_csv", is_flag=True, help="CSV output (raw epochs).")


@report.command(name="stats")
@record_url_option
@ns_option
@from_option
@json_option
@csv_option
@_errors
def report_stats(redis_url: str | None, namespace: str, from_dir: str | None, as_json: bool, as_csv: bool) -> None:
    """Jobs and tasks by state, spans, core-hours, core utilisation, queue wait, per-executor figures (--csv: one
    row of the figures, nested ones as 'runtime.max'; the per-executor and per-job lists are in --json)."""
    from .report import flat_figures, stats
    from .timefmt import duration, local_time
    s = stats(_report_source(redis_url, namespace, from_dir))
    if as_json:
        click.echo(json.dumps(s, indent=1))
        return
    if _emit_rows([flat_figures(s)], False, as_csv):
        return

    def span(x: dict | None) -> str:
        return "-" if x is None else f"{local_time(x['start'])} .. {local_time(x['end'])} ({duration(x['seconds'])})"

    def summary(x: dict | None) -> str:
        return "-" if x is None else (f"mean {duration(x['mean'])}, median {duration(x['median'])}, "
                                      f"max {duration(x['max'])} over {x['count']:,}")
    pct = "-" if s["utilisation_pct"] is None else f"{s['utilisation_pct']:.1f} %"
    click.echo(f"jobs {s['jobs']:,}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["jobs_by_state"].items())))
    click.echo(f"tasks {s['tasks']:,}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["tasks_by_state"].items())))
    click.echo(f"service span   {span(s['service_span'])}")
    click.echo(f"task span      {span(s['task_span'])}")
    click.echo(f"core-hours     {s['core_hours']:.3f} used; utilisation {pct} "
               f"({s['busy_core_seconds']:,.1f} busy of {s['available_core_seconds']:,.1f} core-seconds)")
    click.echo(f"task runtime   {summary(s['runtime'])}")
    click.echo(f"queue wait     {summary(s['queue_wait'])} (submitted to started)")
    _usage_lines(s)
    for e in s["executors"]:
        u = "-" if e["utilisation_pct"] is None else f"{e['utilisation_pct']:.1f} %"
        click.echo(f"  {e['id']}  {e['state']}  {e['cores']} cores  {e['tasks']:,} tasks  utilisation {u}  "
                   f"{local_time(e['started'])} .. {local_time(e['ended']) if e['ended'] else 'now'}")


def _usage_lines(s: dict[str, Any], most: int = 10) -> None:
    """CPU and memory of the tasks that were processes; per job, the least efficient ``most`` jobs."""
    from .timefmt import duration
    if not s["measured_tasks"]:
        return

    def line(u: dict[str, Any]) -> str:
        eff = "-" if u["cpu_efficiency_pct"] is None else f"{u['cpu_efficiency_pct']:.1f} %"
        return (f"{duration(u['cpu_user'])} user + {duration(u['cpu_system'])} system, CPU efficiency {eff}, "
                f"max RSS {u['max_rss_kb'] / 1024:,.1f} MiB over {u['measured_tasks']:,} task(s)")
    click.echo(f"cpu and memory {line(s)}")
    jobs = sorted(s["jobs_usage"], key=lambda u: (u["cpu_efficiency_pct"] is None, u["cpu_efficiency_pct"] or 0))
    for u in jobs[:most]:
        click.echo(f"  {u['job']}  {line(u)}")
    if len(jobs) > most:
        click.echo(f"  ... {len(jobs) - most:,} more jobs (least efficient first; all in --json)")


@report.command(name="jobs")
@record_url_option
@ns_option
@from_option
@click.option("--state", type=click.Choice(STATE_ORDER, case_sensitive=False), default=None,
              help="Only tasks in this state.")
@click.option("--executor", default=None, help="Only tasks run by this executor.")
@click.option("--name", default=None, metavar="PATTERN", help="Only tasks whose name matches (shell-style, 'sw:*').")
@click.option("--sort", type=click.Choice(["start", "end", "runtime", "name"]), default="start", show_default=True)
@click.option("--limit", type=int, default=None, help="At most this many rows.")
@json_option
@csv_option
@_errors
def report_jobs(redis_url: str | None, namespace: str, from_dir: str | None, state: str | None,
                executor: str | None, name: str | None, sort: str, limit: int | None, as_json: bool,
                as_csv: bool) -> None:
    """Tasks (jobs, and iterations as NAME:IT) with their executor, times and outcome; more than 1,000 iterations
    in a row that never started are one row, NAME:FIRST-LAST, with their count."""
    from .report import select_tasks, task_dicts
    from .timefmt import duration, local_time
    rows = task_dicts(select_tasks(_report_source(redis_url, namespace, from_dir), state, executor, name, sort)[:limit])
    if _emit_rows(rows, as_json, as_csv):
        return
    for r in rows:
        many = f" ({r['count']:,} iterations)" if r["count"] > 1 else ""   # a run of them that never started
        click.echo(f"{r['task']}\t{r['state']}\t{r['executor'] or '-'}\t{local_time(r['start'])}\t"
                   f"{duration(r['runtime'])}\t{r['message']}{many}".rstrip())


@report.command(name="gantt")
@record_url_option
@ns_option
@from_option
@click.option("--output", "-o", default=None, metavar="FILE", help="Image to write: .png, .svg or .pdf.")
@click.option("--colour", "--color", "colour", type=click.Choice(["state", "job"]), default="state",
              show_default=True, help="Colour tasks by state or by job.")
@json_option
@csv_option
@_errors
def report_gantt(redis_url: str | None, namespace: str, from_dir: str | None, output: str | None, colour: str,
                 as_json: bool, as_csv: bool) -> None:
    """Tasks on core lanes per executor over time (lanes packed from the tasks' core counts)."""
    from .report import lanes
    if not output and not (as_json or as_csv):
        raise click.UsageError("give --output FILE, --json or --csv")
    rows = lanes(_report_source(redis_url, namespace, from_dir))
    if _emit_rows(rows, as_json, as_csv):
        return
    from .plots import gantt
    n = gantt(rows, output, colour_by=colour)
    click.echo(f"{output}: {len(rows):,} task slots on {n} core lanes")


@report.command(name="utilisation")
@record_url_option
@ns_option
@from_option
@click.option("--output", "-o", default=None, metavar="FILE", help="Image to write: .png, .svg or .pdf.")
@json_option
@csv_option
@_errors
def report_utilisation(redis_url: str | None, namespace: str, from_dir: str | None, output: str | None, as_json: bool,
                       as_csv: bool) -> None:
    """Busy cores over time, against the cores the executors offered."""
    from .report import utilisation
    if not output and not (as_json or as_csv):
        raise click.UsageError("give --output FILE, --json or --csv")
    points = utilisation(_report_source(redis_url, namespace, from_dir))
    if _emit_rows(points, as_json, as_csv):
        return
    from .plots import utilisation as plot
    plot(points, output)
    click.echo(f"{output}: {len(points):,} points")

