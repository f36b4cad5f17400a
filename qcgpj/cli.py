"""Command line: ``qcgpj`` (client and InputQueue) and ``qcgpj-worker`` (the executor)."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from collections import Counter
from typing import Any, Callable

import click
import redis

from .connection import ENV_URL, check_settings, connect
from .errors import QcgpjError
from .batch import parse_jobs_file
from .bench import WORKLOADS
from .manager import Manager


STATE_ORDER = ("SUCCEED", "FAILED", "OMITTED", "CANCELED", "EXECUTING", "SCHEDULED", "READY", "QUEUED")


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors become one line on stderr and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QcgpjError as exc:
            raise click.ClickException(str(exc)) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:   # lost after the client's retries
            raise click.ClickException(f"lost the connection to Redis: {exc}") from None
    return wrapper


def _logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


url_option = click.option("--redis-url", envvar=ENV_URL, default=None, metavar="URL",
                          help=f"Redis URL (env {ENV_URL}); none: local mode, everything in this process.")
ns_option = click.option("--namespace", "-n", envvar="QCGPJ_NAMESPACE", default="default", show_default=True,
                         help="Independent queue inside one Redis.")
verbose_option = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """qcgpj: many small jobs inside HPC allocations, through one Redis-backed global queue."""


def _remote(redis_url: str | None, namespace: str) -> Manager:
    if not redis_url:
        raise QcgpjError(f"this command needs a queue: give --redis-url or set {ENV_URL}")
    return Manager(redis_url, namespace=namespace)


def _wait_with_progress(m: Manager, names: list[str] | None, timeout: float | None, show: bool) -> dict:
    total = len(names) if names is not None else max(len(m.store.job_names()), 1)
    with click.progressbar(length=total, label="jobs done", file=sys.stderr, show_pos=True,
                           hidden=not show) as bar:
        seen = [0]

        def progress(done: int, asked: int) -> None:
            if asked != bar.length:
                bar.length = asked
            bar.update(done - seen[0])
            seen[0] = done

        if names is None:
            return m.wait4all(timeout=timeout, progress=progress)
        return m.wait4(names, timeout=timeout, progress=progress)


def _summary(m: Manager, states: dict[str, str | None]) -> bool:
    counts = Counter(states.values())
    parts = [f"{st} {counts[st]}" for st in STATE_ORDER if counts.get(st)]
    click.echo(f"{len(states)} jobs: " + ", ".join(parts))
    bad = [n for n, st in states.items() if st != "SUCCEED"]
    for name in bad[:10]:
        info = m.info(name)
        click.echo(f"  {name}: {info['state']} {info.get('message') or ''}".rstrip())
    if len(bad) > 10:
        click.echo(f"  ... and {len(bad) - 10} more")
    return not bad


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@url_option
@ns_option
@click.option("--cores", type=int, default=None, help="Local mode: cores to use (default: this machine's).")
@click.option("--nodes", default=None, metavar="N1:C,N2:C", help="Local mode: nodes to pretend (testing).")
@click.option("--timeout", type=float, default=None, help="Give up waiting after S seconds.")
@click.option("--progress/--no-progress", default=None, help="Progress display (default: when on a terminal).")
@verbose_option
@_errors
def run(file: str, redis_url: str | None, namespace: str, cores: int | None, nodes: str | None,
        timeout: float | None, progress: bool | None, verbose: int) -> None:
    """Run the jobs of FILE and wait for them: locally with no Redis, or on a queue's executors."""
    _logging(verbose)
    specs, _finish = parse_jobs_file(file)
    with Manager(redis_url, namespace=namespace, cores=cores, nodes=nodes) as m:
        names = m.submit(specs)
        show = sys.stderr.isatty() if progress is None else progress
        states = _wait_with_progress(m, names, timeout, show)
        ok = _summary(m, states)
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@url_option
@ns_option
@_errors
def submit(file: str, redis_url: str | None, namespace: str) -> None:
    """Submit the jobs of FILE to the queue (all or none)."""
    specs, _finish = parse_jobs_file(file)
    names = _remote(redis_url, namespace).submit(specs)
    click.echo(f"submitted {len(names)} job(s)")


@main.command()
@click.argument("names", nargs=-1)
@url_option
@ns_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
def status(names: tuple[str, ...], redis_url: str | None, namespace: str, as_json: bool) -> None:
    """States of NAMES (default: all jobs) and a count by state."""
    m = _remote(redis_url, namespace)
    states = m.status(list(names) if names else None)
    if as_json:
        click.echo(json.dumps(states, indent=1))
        return
    for name, st in states.items():
        click.echo(f"{name}\t{st}")
    counts = Counter(states.values())
    click.echo("total " + str(len(states)) + ": " + ", ".join(f"{s} {counts[s]}" for s in STATE_ORDER if counts[s]))


@main.command(name="list")
@url_option
@ns_option
@click.option("--json", "as_json", is_flag=True)
@_errors
def list_(redis_url: str | None, namespace: str, as_json: bool) -> None:
    """All jobs in submission order."""
    states = _remote(redis_url, namespace).list()
    if as_json:
        click.echo(json.dumps(states, indent=1))
    else:
        for name, st in states.items():
            click.echo(f"{name}\t{st}")


@main.command()
@click.argument("name")
@url_option
@ns_option
@click.option("--json", "as_json", is_flag=True)
@_errors
def info(name: str, redis_url: str | None, namespace: str, as_json: bool) -> None:
    """Details of job NAME, or of one iteration NAME:IT."""
    data = _remote(redis_url, namespace).info(name)
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    for key, value in data.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@main.command()
@click.argument("names", nargs=-1, required=True)
@url_option
@ns_option
@_errors
def cancel(names: tuple[str, ...], redis_url: str | None, namespace: str) -> None:
    """Cancel jobs or iterations (NAME or NAME:IT); their dependents are OMITTED."""
    for name, res in _remote(redis_url, namespace).cancel(list(names)).items():
        click.echo(f"{name}\t{res}")


@main.command()
@click.argument("names", nargs=-1)
@url_option
@ns_option
@click.option("--timeout", type=float, default=None)
@click.option("--progress/--no-progress", default=None)
@_errors
def wait(names: tuple[str, ...], redis_url: str | None, namespace: str, timeout: float | None,
         progress: bool | None) -> None:
    """Wait until NAMES (default: all jobs) are final; exit 1 unless all SUCCEEDed."""
    m = _remote(redis_url, namespace)
    show = sys.stderr.isatty() if progress is None else progress
    states = _wait_with_progress(m, list(names) or None, timeout, show)
    sys.exit(0 if _summary(m, states) else 1)


@main.command()
@url_option
@ns_option
@click.option("--all", "departed", is_flag=True, help="List the executors that left or died too.")
@click.option("--json", "as_json", is_flag=True)
@_errors
def resources(redis_url: str | None, namespace: str, departed: bool, as_json: bool) -> None:
    """Executors, their cores and what is in use."""
    res = _remote(redis_url, namespace).resources(departed)
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return
    click.echo(f"nodes {res['total_nodes']}  cores {res['total_cores']}  used {res['used_cores']}  "
               f"free {res['free_cores']}")
    for eid, e in res["executors"].items():
        click.echo(f"  {eid}\t{e.get('state')}\tcores {e.get('total')}\trunning {e.get('running')}\t"
                   f"nodes {e.get('nodes')}" + (f"\tslurm job {e['slurm_job']}" if e.get("slurm_job") else ""))


@main.command()
@url_option
@ns_option
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Times a task may be started on executors that die before it ends FAILED.")
@click.option("--lease", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Leader lease, seconds.")
@verbose_option
@_errors
def inputqueue(redis_url: str | None, namespace: str, max_attempts: int, lease: float, verbose: int) -> None:
    """Run the InputQueue service (placement, executor liveness) until interrupted."""
    from .inputqueue import InputQueue
    _logging(max(verbose, 1))
    if not redis_url:
        raise QcgpjError(f"the InputQueue needs a queue: give --redis-url or set {ENV_URL}")
    client = connect(redis_url)
    check_settings(client)
    iq = InputQueue(client, namespace, max_attempts=max_attempts, lease_ttl=lease)
    _on_signals(iq.stop)
    iq.run()


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        logging.getLogger("qcgpj").info("signal %d: stopping", signum)
        stop()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@url_option
@ns_option
@click.option("--cores", type=int, default=None, help="Cores to use (default: the allocation's or machine's).")
@click.option("--nodes", default=None, metavar="N1:C,N2:C", help="Nodes and cores to own, instead of discovery.")
@click.option("--wd", default=None, help="Root working directory of tasks (default: current directory).")
@click.option("--exit-when-idle", is_flag=True, help="Exit when no job in the queue is left unfinished.")
@click.option("--idle-grace", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --exit-when-idle: exit only once the queue has stayed empty this many seconds.")
@click.option("--prefetch", type=int, default=None,
              help="Tasks claimed ahead on this executor, fixed (default: adapts to the rate tasks end, "
                   "from max(cores, 16) up to 256).")
@click.option("--heartbeat", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="Seconds between heartbeats (less than --ttl).")
@click.option("--ttl", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds without heartbeat before it is dead.")
@click.option("--id", "eid", default=None, help="Executor id (default: host-pid-random).")
@click.option("--reconcile", type=float, default=5.0, show_default=True,
              help="Seconds between checks of the running list against what this worker knows.")
@verbose_option
@_errors
def worker_main(redis_url: str | None, namespace: str, cores: int | None, nodes: str | None, wd: str | None,
                exit_when_idle: bool, prefetch: int | None, heartbeat: float, ttl: int, eid: str | None,
                reconcile: float, verbose: int, idle_grace: float) -> None:
    """qcgpj-worker: an executor that runs the queue's tasks on this allocation's cores."""
    from .executor import Executor
    from .resources import discover
    _logging(max(verbose, 1))
    if not redis_url:
        raise QcgpjError(f"the worker needs a queue: give --redis-url or set {ENV_URL}")
    if heartbeat >= ttl:
        raise click.BadParameter(f"{heartbeat:g} s is not less than --ttl ({ttl} s): the executor would be "
                                 "declared dead between two heartbeats", param_hint="'--heartbeat'")
    client = connect(redis_url)
    try:
        node_list = discover(cores=cores, nodes=nodes)
    except ValueError as exc:
        raise QcgpjError(str(exc)) from None
    in_slurm = bool(os.environ.get("SLURM_JOB_ID")) and not nodes
    ex = Executor(client, node_list, namespace, eid=eid, root_wd=wd, prefetch=prefetch, heartbeat=heartbeat,
                  ttl=ttl, exit_when_idle=exit_when_idle, slurm=in_slurm, reconcile=reconcile,
                  idle_grace=idle_grace)
    _on_signals(ex.stop)
    ex.run()


@main.command()
@url_option
@click.option("--start-redis", is_flag=True, help="Start a private redis-server for the run (needs it on PATH).")
@click.option("--workload", "-w", "workloads", multiple=True, type=click.Choice(WORKLOADS),
              help="Workloads to run (default: all).")
@click.option("--tasks", type=int, default=10_000, show_default=True, help="Jobs (or iterations) per run.")
@click.option("--chain", type=int, default=1_000, show_default=True, help="Length of the dependency chain.")
@click.option("--submit-jobs", type=int, default=100_000, show_default=True,
              help="Separate jobs in the submission workload.")
@click.option("--submit-iterations", type=int, default=1_000_000, show_default=True,
              help="Iterations of the one iterative job in the submission workload.")
@click.option("--cores", type=int, default=None, help="Executor cores (default: this machine's).")
@click.option("--external", is_flag=True,
              help="Use executors already serving the namespace given by -n (only this run's jobs are removed "
                   "afterwards).")
@ns_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable figures.")
@verbose_option
@_errors
def bench(redis_url: str | None, start_redis: bool, workloads: tuple[str, ...], tasks: int, chain: int,
          submit_jobs: int, submit_iterations: int, cores: int | None, external: bool, namespace: str,
          as_json: bool, verbose: int) -> None:
    """Measure throughput, dependency latency and submission cost on this machine."""
    from contextlib import nullcontext

    from .bench import BenchConfig, private_redis, run as run_bench
    _logging(verbose)
    ctx = private_redis() if start_redis else nullcontext(redis_url)
    with ctx as url:
        cfg = BenchConfig(url, tasks=tasks, chain=chain, submit_jobs=submit_jobs,
                          submit_iterations=submit_iterations, cores=cores, external=external,
                          namespace=namespace, private=start_redis)
        results = run_bench(cfg, workloads or WORKLOADS)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in results], indent=1))
        return
    click.echo(f"qcgpj bench ({'redis ' + url if url else 'local mode'}, {os.cpu_count()} cpus)")
    click.echo(f"{'workload':<11} {'what':<36} {'value':>10}  unit      details")
    for r in results:
        extra = " ".join(f"{k}={v}" for k, v in r.extra.items() if v is not None)   # None: not measurable here
        click.echo(f"{r.workload:<11} {r.what:<36} {r.value:>10}  {r.unit:<9} {extra}")


main.add_command(worker_main, name="worker")

from . import alloc_cli  # noqa: E402,F401  (registers `qcgpj alloc`; it uses this module's options)
