"""The long-running services: ``qcgpj inputqueue`` and the executor, ``qcgpj-worker`` (also ``qcgpj worker``)."""
from __future__ import annotations

import gc
import os
import sys

import click

from . import workerprocs
from .cli import (DURATION, Command, Seconds, _check_wd, _checked, _errors, _logging, connect_wait_option, main,
                  ns_option, resource_options, service_url_option, verbose_option)
from .connection import ENV_URL, SERVICE_RETRIES, check_settings, connect
from .errors import QcgpjError
from .keys import check_executor_id
from .resources import Node
from .signals import can_supervise, stop_on_signals


def _freeze() -> None:
    """What the service holds once set up (modules, classes, its own objects) lives as long as the process: out of
    the cyclic collector's way, neither its full passes while serving nor the last one at exit walk it again (that
    last pass, ~25 ms, was most of a service's time from SIGTERM to exit). No collection first: it would cost as
    much, on the way to joining the queue, and find next to nothing (some twenty objects)."""
    gc.freeze()


@main.command()
@service_url_option
@ns_option
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Times a task may be started on executors that die before it ends FAILED.")
@click.option("--lease", type=Seconds(min=0.1), default=5.0, show_default=True,
              help="Leader lease, seconds.")
@click.option("--executor-retention", type=DURATION, default="1d", show_default=True,
              help="Forget executors that left or died this long ago (until then 'resources --all' lists them).")
@click.option("--keep-finished", type=DURATION, default=None,
              help="Remove final jobs this long after they ended (default: keep them).")
@click.option("--unplaceable-timeout", type=Seconds(min=0), default=300.0, show_default=True,
              help="Seconds a ready job may fit no live executor (too many cores or nodes) before it ends FAILED; "
                   "0: never. Jobs wait for the first executor as long as it takes.")
@connect_wait_option
@verbose_option
@_errors
def inputqueue(redis_url: str | None, namespace: str, max_attempts: int, lease: float, executor_retention: float,
               keep_finished: float | None, unplaceable_timeout: float, connect_wait: float,
               verbose: int) -> None:
    """Run the InputQueue service (placement, executor liveness) until interrupted."""
    from .inputqueue import InputQueue
    _logging(max(verbose, 1))
    if not redis_url:
        raise QcgpjError(f"the InputQueue needs a queue: give --redis-url or set {ENV_URL}")
    client = connect(redis_url, wait=connect_wait, retries=SERVICE_RETRIES)
    check_settings(client)
    iq = InputQueue(client, namespace, max_attempts=max_attempts, lease_ttl=lease,
                    executor_retention=executor_retention, keep_finished=keep_finished,
                    unplaceable_timeout=unplaceable_timeout)
    stop_on_signals(iq.stop)
    _freeze()
    iq.run()


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@service_url_option
@ns_option
@resource_options
@click.option("--wd", default=None, callback=_check_wd,
              help="Root working directory of tasks, where the worker runs (default: current directory).")
@click.option("--exit-when-idle", is_flag=True,
              help="Exit when no job in the queue is left unfinished, or when idle while the ready work needs more "
                   "than this executor has.")
@click.option("--idle-grace", type=Seconds(min=0), default=0.0, show_default=True,
              help="With --exit-when-idle: exit only once that has lasted this many seconds.")
@click.option("--prefetch", type=click.IntRange(min=0), default=None,
              help="Tasks claimed ahead on this executor, fixed (0: none; default: adapts to the rate tasks "
                   "end, from max(cores, 16) up to 256).")
@click.option("--heartbeat", type=Seconds(min=0.01), default=2.0, show_default=True,
              help="Seconds between heartbeats (less than --ttl).")
@click.option("--ttl", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds without heartbeat before it is dead.")
@click.option("--id", "eid", default=None, callback=_checked(check_executor_id),
              help="Executor id (default: host-pid-random).")
@click.option("--reconcile", type=Seconds(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds between checks of the running list against what this worker knows.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Serve this node's cores with N executor processes, each with its share of the cores and "
                   "CPUs (for tasks of a few ms: one interpreter leaves cores idle); a job larger than a share "
                   "waits for an executor that has its cores.")
@connect_wait_option
@verbose_option
@_errors
def worker_main(redis_url: str | None, namespace: str, cores: int | None, nodes: str | None, gpus: int | None,
                mem: int | None, wd: str | None,
                exit_when_idle: bool, prefetch: int | None, heartbeat: float, ttl: int, eid: str | None,
                reconcile: float, processes: int, connect_wait: float, verbose: int, idle_grace: float) -> None:
    """qcgpj-worker: an executor that runs the queue's tasks on this allocation's cores."""
    from .executor import Executor
    from .resources import discover
    _logging(max(verbose, 1))
    if not redis_url:
        raise QcgpjError(f"the worker needs a queue: give --redis-url or set {ENV_URL}")
    if heartbeat >= ttl:
        raise click.BadParameter(f"{heartbeat:g} s is not less than --ttl ({ttl} s): the executor would be "
                                 "declared dead between two heartbeats", param_hint="'--heartbeat'")
    try:
        node_list = discover(cores=cores, nodes=nodes, gpus=gpus, mem=mem)
    except ValueError as exc:
        raise QcgpjError(str(exc)) from None
    in_slurm = bool(os.environ.get("SLURM_JOB_ID")) and not nodes
    shares = _shares(node_list, processes, in_slurm)
    if processes > 1 and eid:
        check_executor_id(f"{eid}-{processes - 1}")   # the processes' ids: checked once, here
    client = connect(redis_url, wait=connect_wait, retries=SERVICE_RETRIES)
    check_settings(client)   # bad URLs, credentials, ACLs: one line from the command, before any fork
    if processes > 1 or can_supervise():
        client.close()   # each executor process makes its own connection
        index, node_list = workerprocs.fork(shares)   # the supervisor never returns from it
        eid = f"{eid}-{index}" if eid and processes > 1 else eid
        client = connect(redis_url, wait=connect_wait, retries=SERVICE_RETRIES)
    ex = Executor(client, node_list, namespace, eid=eid, root_wd=wd, prefetch=prefetch, heartbeat=heartbeat,
                  ttl=ttl, exit_when_idle=exit_when_idle, slurm=in_slurm, reconcile=reconcile,
                  idle_grace=idle_grace)
    os.chdir(ex.root_wd)   # tasks in the root directory then start without a change of directory (workers.spawn)
    stop_on_signals(ex.stop)
    _freeze()
    ex.run()
    function_model = sys.modules.get(f"{__package__}.workers.function")   # loaded once a Python call ran here
    if function_model is not None:
        function_model.FunctionWorker.close()


def _shares(node_list: list[Node], processes: int, in_slurm: bool) -> list[workerprocs.Share]:
    """What each executor process gets: with --processes N, its share of the node's cores and of the CPUs; one
    process keeps the whole node list and the command's CPU mask."""
    if processes == 1:
        return [(node_list, None)]
    return [([node], cpus) for node, cpus in
            workerprocs.split(node_list, processes, sorted(os.sched_getaffinity(0)), in_slurm)]


main.add_command(worker_main, name="worker")
