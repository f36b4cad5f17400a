"""``qcgpj alloc``: allocation queues (add, list, remove, pause, resume) and the allocator service (serve)."""
from __future__ import annotations

import json
import os
import shlex
from typing import Any

import click

from .alloc import AllocQueue
from .allocstore import AllocStore
from .cli import Group, Seconds, _errors, _logging, main, ns_option, url_option, verbose_option
from .connection import ENV_URL, SERVICE_RETRIES, check_settings, connect
from .errors import AllocError, QcgpjError
from .signals import stop_on_signals


def _store(redis_url: str | None, namespace: str) -> AllocStore:
    if not redis_url:
        raise QcgpjError(f"this command needs a queue: give --redis-url or set {ENV_URL}")
    return AllocStore(connect(redis_url), namespace)


@click.group(cls=Group)
def alloc() -> None:
    """Automatic allocation: Slurm jobs that run workers while work waits."""


@alloc.group()
def add() -> None:
    """Add an allocation queue."""


@add.command(context_settings={"show_default": True})
@click.option("--name", required=True, help="Name of the allocation queue.")
@click.option("--max-allocations", type=int, default=1, help="Allocations queued or running at once, at most.")
@click.option("--nodes", type=int, default=1, help="Nodes of one allocation.")
@click.option("--time", "time_limit", default="1h", help="Time limit of one allocation (30m, 1h, 1-12:00:00 ...).")
@click.option("--partition", default=None)
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--cores-per-node", type=int, default=None,
              help="Cores to ask for per node (--ntasks-per-node); default: whole nodes (--exclusive), as many "
                   "as sinfo shows for the partition.")
@click.option("--worker-cmd", default="qcgpj-worker",
              help="How the batch script starts the worker, e.g. 'env PYTHONPATH=/src python3 -m qcgpj worker' "
                   "(the URL, namespace and --exit-when-idle are appended).")
@click.option("--wd", default=None, help="Working directory of the workers' tasks (default: the current one).")
@click.option("--dir", "folder", default=None,
              help="Folder of the batch scripts and their output (default: ~/.qcgpj/alloc/NAMESPACE/NAME).")
@click.option("--idle-grace", type=Seconds(min=0), default=30.0,
              help="Seconds a worker waits for more work before leaving.")
@click.option("--failure-limit", type=int, default=3, help="Failures in a row that pause the queue.")
@click.option("--register-timeout", type=Seconds(min=0, min_open=True), default=300.0,
              help="Seconds a started allocation has to register its worker before it is cancelled.")
@click.option("--max-files", type=int, default=100, help="Files kept in --dir (oldest removed first).")
@click.option("--max-bytes", type=int, default=10 << 20, help="Bytes kept in --dir.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
@url_option
@ns_option
@_errors
def slurm(name: str, max_allocations: int, nodes: int, time_limit: str, partition: str | None,
          account: str | None, qos: str | None, cores_per_node: int | None, worker_cmd: str, wd: str | None,
          folder: str | None, idle_grace: float, failure_limit: int, register_timeout: float, max_files: int,
          max_bytes: int, extra: tuple[str, ...], redis_url: str | None, namespace: str) -> None:
    """A queue of Slurm allocations; arguments after -- go to sbatch as they are."""
    folder = folder or os.path.join(os.path.expanduser("~"), ".qcgpj", "alloc", namespace, name)
    _check_new(worker_cmd, folder)
    q = AllocQueue(name=name, max_allocations=max_allocations, nodes=nodes, time=time_limit, partition=partition,
                   account=account, qos=qos, cores_per_node=cores_per_node, extra=list(extra), worker_cmd=worker_cmd,
                   wd=os.path.abspath(wd or os.getcwd()), dir=os.path.abspath(folder), idle_grace=idle_grace,
                   failure_limit=failure_limit, register_timeout=register_timeout, max_files=max_files,
                   max_bytes=max_bytes)
    _store(redis_url, namespace).add(q)
    click.echo(f"allocation queue '{name}' added: up to {max_allocations} x {nodes} node(s), {q.time}; "
               f"scripts and output in {q.dir}")


def _check_new(worker_cmd: str, folder: str) -> None:
    """What the allocator finds wrong only when it submits (every allocation failing, or its own end), said at
    once. Not in AllocQueue: a stored queue is read again and must not fail on a folder changed since."""
    try:
        words = shlex.split(worker_cmd)
    except ValueError as exc:
        raise AllocError(f"--worker-cmd: {worker_cmd!r}: {exc}") from None
    if not words:
        raise AllocError("--worker-cmd: give the command that starts the worker, e.g. qcgpj-worker")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise AllocError(f"--dir: {folder} is not a folder")


def _listing(store: AllocStore) -> list[dict[str, Any]]:
    queues = {name: (q, store.jobs(name)) for name, q in store.queues().items()}
    ended = _ended(store, {jid: info for _q, jobs in queues.values() for jid, info in jobs.items()})
    rows = []
    for name, (q, jobs) in queues.items():
        st = store.status(name)
        rows.append({"name": name, "state": "PAUSED" if st.get("paused") else "ACTIVE",
                     "allocations": sorted(jobs.keys() - ended), "ended": sorted(jobs.keys() & ended),
                     "max_allocations": q.max_allocations,
                     "nodes": q.nodes, "time": q.time, "partition": q.partition,
                     "failures": int(st.get("failures") or 0), "paused": st.get("paused") or "",
                     "last_failure": st.get("reason") or "", "too_large": st.get("toolarge") or "",
                     "last": st.get("last") or "", "dir": q.dir, "definition": json.loads(q.to_json())})
    return rows


def _ended(store: AllocStore, jobs: dict[str, dict[str, Any]]) -> set[str]:
    """The allocations written down that squeue no longer lists, told as the allocator tells them (which clears
    them at its next pass): one whose worker registered, or submitted more than a few seconds ago (squeue may
    not list a job just submitted). None when Slurm cannot be asked from here."""
    from . import slurm as slurm_cmds
    from .allocator import SETTLE
    from .allocstore import now
    if not jobs:
        return set()
    try:
        listed = {j.id for j in slurm_cmds.our_jobs()}
    except AllocError:
        return set()
    gone = jobs.keys() - listed
    registered = store.slurm_executors() if gone else {}
    return {jid for jid in gone if jid in registered or now() - jobs[jid].get("submitted", 0) >= SETTLE}


@alloc.command(name="list")
@url_option
@ns_option
@click.option("--json", "as_json", is_flag=True)
@_errors
def list_(redis_url: str | None, namespace: str, as_json: bool) -> None:
    """Allocation queues, their allocations, and why a queue is paused or a task is not served."""
    rows = _listing(_store(redis_url, namespace))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']}\t{r['state']}\tallocations {len(r['allocations'])}/{r['max_allocations']} "
                   f"{' '.join(r['allocations'])}\t{r['nodes']} node(s) {r['time']}"
                   + (f" partition {r['partition']}" if r["partition"] else ""))
        if r["ended"]:
            click.echo(f"  ended, not cleared yet: {' '.join(r['ended'])}")
        for label, key in (("paused", "paused"), ("failures in a row", "failures"),
                           ("last failure", "last_failure"), ("too large", "too_large"), ("last decision", "last")):
            if r[key]:
                click.echo(f"  {label}: {r[key]}")


@alloc.command()
@click.argument("name")
@click.option("--cancel", is_flag=True, help="Cancel its allocations too (default: they leave when idle).")
@url_option
@ns_option
@_errors
def remove(name: str, cancel: bool, redis_url: str | None, namespace: str) -> None:
    """Remove allocation queue NAME."""
    from . import slurm as slurm_cmds
    store = _store(redis_url, namespace)
    q = store.queue(name)
    ids = set(store.jobs(name))
    if cancel:
        ids |= {j.id for j in slurm_cmds.our_jobs() if j.name == q.tag(namespace)}
        slurm_cmds.cancel(sorted(ids))
    store.remove(name)
    left = "cancelled" if cancel else "left to finish"
    click.echo(f"allocation queue '{name}' removed; {len(ids)} allocation(s) {left}")


@alloc.command()
@click.argument("name")
@url_option
@ns_option
@_errors
def pause(name: str, redis_url: str | None, namespace: str) -> None:
    """Submit no more allocations for NAME (those running stay)."""
    _store(redis_url, namespace).pause(name, "paused by the user")
    click.echo(f"allocation queue '{name}' paused")


@alloc.command()
@click.argument("name")
@url_option
@ns_option
@_errors
def resume(name: str, redis_url: str | None, namespace: str) -> None:
    """Submit allocations for NAME again; its failure count starts from zero."""
    _store(redis_url, namespace).resume(name)
    click.echo(f"allocation queue '{name}' resumed")


@alloc.command()
@url_option
@ns_option
@click.option("--poll", type=Seconds(min=0.1), default=2.0, show_default=True,
              help="Seconds between looks at Slurm when the queue does not change.")
@click.option("--lease", type=Seconds(min=0.5), default=10.0, show_default=True,
              help="Leader lease, seconds.")
@click.option("--dry-run", is_flag=True, help="Print what would be submitted and why, once; no Slurm needed.")
@verbose_option
@_errors
def serve(redis_url: str | None, namespace: str, poll: float, lease: float, dry_run: bool, verbose: int) -> None:
    """Run the allocator until interrupted (SIGTERM leaves the allocations running)."""
    from .allocator import Allocator
    _logging(verbose if dry_run else max(verbose, 1))
    if not redis_url:
        raise QcgpjError(f"the allocator needs a queue: give --redis-url or set {ENV_URL}")
    client = connect(redis_url, retries=SERVICE_RETRIES)   # its loop waits out an outage and logs it
    check_settings(client)
    a = Allocator(client, redis_url, namespace, poll=poll, lease_ttl=lease, dry_run=dry_run, say=click.echo)
    if dry_run:
        if not a.step():
            click.echo("no allocation queues (qcgpj alloc add slurm ...)")
        return
    stop_on_signals(a.stop)
    a.run()


main.add_command(alloc)
