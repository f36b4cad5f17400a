"""``qcgpj bench``: the command; the workloads are in ``bench`` and ``scalebench``."""
from __future__ import annotations

import json
import os

import click

from .bench import EXTRA_WORKLOADS, WORKLOADS
from .cli import INT_LIST, _errors, _logging, local_url_option, main, ns_option, verbose_option


@main.command()
@local_url_option
@click.option("--start-redis", is_flag=True, help="Start a private redis-server for the run (needs it on PATH).")
@click.option("--workload", "-w", "workloads", multiple=True, type=click.Choice(WORKLOADS + EXTRA_WORKLOADS),
              help="Workloads to run (default: all but scale).")
@click.option("--tasks", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Jobs (or iterations) per run.")
@click.option("--chain", type=click.IntRange(min=1), default=1_000, show_default=True,
              help="Length of the dependency chain.")
@click.option("--submit-jobs", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Separate jobs in the submission workload.")
@click.option("--submit-iterations", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Iterations of the one iterative job in the submission workload.")
@click.option("--cores", type=click.IntRange(min=1), default=None, help="Executor cores (default: this machine's).")
@click.option("--worker-processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Executor processes of the worker the bench starts (its --processes).")
@click.option("--external", is_flag=True,
              help="Use executors already serving the namespace given by -n (only this run's jobs are removed "
                   "afterwards).")
@click.option("--qcg-pm-service", "qcg", default=None, metavar="PATH",
              help="The local workload also times QCG-PilotJob's qcg-pm-service (file mode) on the same file.")
@click.option("--executors", type=INT_LIST, default="10,100,300", show_default=True,
              help="scale: simulated executor counts, one run each.")
@click.option("--executor-cores", type=click.IntRange(min=1), default=100, show_default=True,
              help="scale: cores per simulated executor.")
@click.option("--task-seconds", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="scale: each task's duration.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="scale: seconds measured per run (after every executor joined and a warm-up).")
@ns_option
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the workloads this many times and give each figure as its range over the runs.")
@click.option("--against", default=None, metavar="DIR",
              help="Another qcgpj checkout: each run runs its code too, right after this version's, so that "
                   "both are measured in the same minutes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable figures.")
@verbose_option
@_errors
def bench(redis_url: str | None, start_redis: bool, workloads: tuple[str, ...], tasks: int, chain: int,
          submit_jobs: int, submit_iterations: int, cores: int | None, worker_processes: int, external: bool,
          qcg: str | None,
          executors: tuple[int, ...], executor_cores: int, task_seconds: float, duration: float,
          namespace: str, runs: int, against: str | None, as_json: bool, verbose: int) -> None:
    """Measure throughput, dependency latency and submission cost on this machine."""
    from contextlib import nullcontext

    from .bench import BenchConfig, private_redis, run as run_bench
    _logging(verbose)
    if runs > 1 or against is not None:
        return _series(click.get_current_context(), runs, against, as_json)
    ctx = private_redis() if start_redis else nullcontext(redis_url)
    with ctx as url:
        cfg = BenchConfig(url, tasks=tasks, chain=chain, submit_jobs=submit_jobs,
                          submit_iterations=submit_iterations, cores=cores, external=external,
                          namespace=namespace, private=start_redis, qcg=qcg, processes=worker_processes,
                          scale={"executors": executors, "cores": executor_cores, "task_seconds": task_seconds,
                                 "duration": duration})
        results = run_bench(cfg, workloads or WORKLOADS)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in results], indent=1))
        return
    click.echo(f"qcgpj bench ({'redis ' + url if url else 'local mode'}, {os.cpu_count()} cpus)")
    click.echo(f"{'workload':<11} {'what':<36} {'value':>10}  unit      details")
    for r in results:
        extra = " ".join(f"{k}={v}" for k, v in r.extra.items() if v is not None)   # None: not measurable here
        click.echo(f"{r.workload:<11} {r.what:<36} {r.value:>10}  {r.unit:<9} {extra}")


def _series(ctx: click.Context, runs: int, against: str | None, as_json: bool) -> None:
    """--runs / --against: every run a ``qcgpj bench --json`` process of its own, with the same options."""
    from . import benchruns
    versions = [benchruns.Version(benchruns.THIS)]
    if against is not None:
        versions.append(benchruns.checkout(against))
    done = benchruns.series(versions, _forwarded(ctx), runs, told=lambda s: click.echo(s, err=True))
    if as_json:
        click.echo(json.dumps({"runs": done, "ranges": benchruns.by_version(done)}, indent=1))
        return
    for line in benchruns.table(done, runs):
        click.echo(line)


def _forwarded(ctx: click.Context) -> list[str]:
    """The options given to this command, as arguments for each run's own (all but the series' and output's)."""
    out: list[str] = []
    for p in ctx.command.params:
        if p.name in ("runs", "against", "as_json", "verbose") or not isinstance(p, click.Option):
            continue
        if ctx.get_parameter_source(p.name) in (click.core.ParameterSource.DEFAULT, None):
            continue
        value, opt = ctx.params[p.name], p.opts[0]
        if p.count:
            out += [opt] * value
        elif p.is_flag:
            out += [opt] if value else []
        elif p.multiple:
            for v in value:
                out += [opt, str(v)]
        elif isinstance(value, tuple):
            out += [opt, ",".join(map(str, value))]
        elif value is not None:
            # each run works in a directory of its own: a relative path given here must still name the same file
            out += [opt, os.path.abspath(value) if p.name == "qcg" and os.sep in value else str(value)]
    return out
