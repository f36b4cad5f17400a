"""Command line: ``qcgpj`` (client and InputQueue) and ``qcgpj-worker`` (the executor)."""
from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

import click
import redis

from . import __version__
from .connection import ENV_URL, redis_error
from . import record
from .errors import QcgpjError, TimeoutError
from .keys import Keys
from . import arguments
from .summary import STATE_ORDER, print_summary

if TYPE_CHECKING:   # the client's modules are imported where used: `qcgpj worker` and `qcgpj inputqueue` start
    #                 through this module and need none of them (see Group.lazy)
    from .manager import Manager
    from .progress import Interrupts
    from .requests import Request


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors, and Redis's refusals (ACL, memory, a lost connection after the client's retries), become one
    line on stderr and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.UsageError as exc:   # a check of the options' combination, made in the command itself
            raise _usage(exc) from None
        except QcgpjError as exc:
            raise _one_line(str(exc)) from None
        except redis.RedisError as exc:
            raise _one_line(str(redis_error(exc))) from None
    return wrapper


def _one_line(message: str) -> click.ClickException:
    return click.ClickException(" ".join(message.split("\n")))


_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())   # click >= 8.2


class _OneLineUsage:
    """A bad option or argument is one line and exit code 1 like any other bad input (click prints its usage
    and exits 2)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)   # type: ignore[misc]
        except click.UsageError as exc:
            raise _usage(exc) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)   # type: ignore[misc]
        except click.UsageError as exc:
            raise _usage(exc) from None


def _usage(exc: click.UsageError) -> click.UsageError | click.ClickException:
    if isinstance(exc, _HELP):   # no arguments at all: the help, as click shows it
        return exc
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return _one_line(exc.format_message() + hint)


class Command(_OneLineUsage, click.Command):
    pass


class Group(_OneLineUsage, click.Group):
    command_class = Command
    group_class = type   # subgroups (report, alloc ...) are of this class too

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}   # command name -> the module that registers it, imported when it is asked for

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            importlib.import_module(self.lazy[name], __package__)
        return super().get_command(ctx, name)


# The services and tools register themselves in their modules, imported only when their command runs (or help
# lists it): `qcgpj worker` and `qcgpj inputqueue` start without the modules of the bench, the allocator, top.
LAZY_COMMANDS = {"alloc": ".alloc_cli", "bench": ".bench_cli", "top": ".monitor_cli", "report": ".monitor_cli",
                 "inputqueue": ".service_cli", "worker": ".service_cli"}


def _checked(check: Callable[[str], Any], convert: bool = False
             ) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback from one of our checks (which raise QcgpjError); with ``convert`` the option's value is
    what the check returns (a parsed size, say), else the text as given."""
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        try:
            if value is None:
                return None
            got = check(value)
            return got if convert else value
        except QcgpjError as exc:
            raise click.BadParameter(str(exc)) from None
    return callback


def _not_nan(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number of seconds")
    return value


def _read_requests(file: str) -> list[Request]:
    """The requests of FILE; a file with none is a mistake (a wrong file, an emptied list), not a success."""
    from .requests import ANSWERED, read_requests
    reqs = read_requests(file)
    if not any(r.kind in ANSWERED or r.jobs or r.names for r in reqs):
        raise QcgpjError(f"{file} holds no jobs")
    return reqs


def _answers(as_json: bool) -> Callable[[dict], None]:
    """How a request file's answers are shown: JSON lines, or one readable line each (errors on stderr)."""
    from .requests import readable

    def show(answer: dict) -> None:
        if as_json:
            click.echo(json.dumps(answer, default=str))
        else:
            click.echo(readable(answer), err="error" in answer)
    return show


json_answers_option = click.option("--json", "as_json", is_flag=True,
                                   help="Answers to the file's listJobs, jobStatus, jobInfo... requests as JSON "
                                        "lines on stdout.")


def _check_wd(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """The tasks' root directory, made now: a worker that cannot write there would fail every task."""
    if value is not None:
        try:
            os.makedirs(value, exist_ok=True)
        except OSError as exc:
            raise click.BadParameter(f"cannot make {value}: {exc.strerror}") from None
    return value


def _logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Duration(click.ParamType):
    """'90', '15m', '2h', '1d' as seconds."""
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        from .housekeeping import parse_duration
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


class Seconds(click.FloatRange):
    """A FloatRange of seconds that is a number: nan passes FloatRange's bounds (every comparison with it is false)
    and inf breaks the services' waits and leases with a traceback."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{out} is not a number of seconds", param, ctx)
        return out


class _IntList(click.ParamType):
    """'10,100,300' as a tuple of positive ints."""
    name = "n,n,..."

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            out = ()
        if not out or min(out) < 1:
            self.fail(f"{value!r}: give positive whole numbers separated by commas", param, ctx)
        return out


INT_LIST = _IntList()
# Only `run` and `bench` have a local mode; every other command reads or changes a queue (status, info and
# report also a local run's record, --from DIR).
local_url_option = click.option("--redis-url", envvar=ENV_URL, default=None, metavar="URL",
                                help=f"Redis URL of a queue (env {ENV_URL}); none: local mode, everything in this "
                                     "process.")
url_option = click.option("--redis-url", envvar=ENV_URL, default=None, metavar="URL",
                          help=f"Redis URL of the queue (env {ENV_URL}); required.")
record_url_option = click.option("--redis-url", envvar=ENV_URL, default=None, metavar="URL",
                                 help=f"Redis URL of the queue (env {ENV_URL}); required unless --from DIR.")
service_url_option = click.option("--redis-url", envvar=ENV_URL, default=None, metavar="URL",
                                  help=f"Redis URL of the queue to serve (env {ENV_URL}); required.")
ns_option = click.option("--namespace", "-n", envvar="QCGPJ_NAMESPACE", default="default", show_default=True,
                         callback=_checked(Keys), help="Independent queue inside one Redis.")
cores_option = click.option("--cores", type=click.IntRange(min=1), default=None,
                            help="Cores to use (default: the allocation's or this machine's).")
nodes_option = click.option("--nodes", default=None, metavar="N1:C[:G],N2:C[:G]", callback=_checked(arguments.nodes),
                            help="Nodes, cores and GPUs to own, instead of discovery (testing, in local mode); "
                                 "a bare C is node n<i>.")


gpus_option = click.option("--gpus", type=click.IntRange(min=0), default=None, metavar="N",
                           help="GPUs of each node, ids 0..N-1 (default: CUDA_VISIBLE_DEVICES, Slurm's GPU "
                                "variables or nvidia-smi; none found: none).")
mem_option = click.option("--mem", default=None, metavar="SIZE",
                          callback=_checked(arguments.optional_mem, convert=True),
                          help="Memory of each node for nodeCrs.mem, MiB or with a unit (4G) (default: Slurm's "
                               "SLURM_MEM_PER_NODE or this machine's; none with --nodes).")

def resource_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--cores, --nodes, --gpus and --mem: the resources of a local run and of a worker, declared alike."""
    return cores_option(nodes_option(gpus_option(mem_option(fn))))


timeout_option = click.option("--timeout", type=click.FloatRange(min=0), default=None, callback=_not_nan,
                              help="Give up waiting after S seconds.")
connect_wait_option = click.option(
    "--connect-wait", type=Seconds(min=0), default=60.0, show_default=True, metavar="S",
    help="Seconds to wait for a Redis that does not answer yet (restarting, loading) before giving up.")
verbose_option = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")


@click.group(cls=Group, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="qcgpj", message="%(prog)s %(version)s")
def main() -> None:
    """qcgpj: many small jobs inside HPC allocations, through one Redis-backed global queue."""


def _remote(redis_url: str | None, namespace: str) -> Manager:
    if not redis_url:
        raise QcgpjError(f"this command needs a queue: give --redis-url or set {ENV_URL}")
    from .manager import Manager
    return Manager(redis_url, namespace=namespace)


def _show(progress: bool | None) -> bool:
    """The progress line by default only on a terminal: piped or logged, a run prints nothing but its summary."""
    return sys.stderr.isatty() and sys.stdout.isatty() if progress is None else progress


def _wait_with_progress(m: Manager, names: list[str] | None, timeout: float | None, show: bool,
                        interrupts: Interrupts | None = None, hint: str | None = None) -> dict:
    """Wait for NAMES (None: every job), with the progress line; Interrupted after a Ctrl-C."""
    from .progress import Display, Watch
    if names is None:
        names = m.store.job_names()
        if not names:
            return m.wait4all(timeout=timeout)   # nothing known: still says so if jobs were lost
    with Display(show) as display:
        return m.wait4(names, timeout=timeout, progress=Watch(m, names, display, interrupts, hint))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@local_url_option
@ns_option
@resource_options
@click.option("--store", type=click.Choice(("fakeredis", "redis-server")), default=None,
              help="Local mode's store (default: a private redis-server when on PATH, else fakeredis).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, callback=_not_nan,
              help="After S seconds: local mode cancels what is left (exit 1); with a queue, stop waiting.")
@click.option("--progress/--no-progress", default=None, help="Progress display (default: when on a terminal).")
@json_answers_option
@verbose_option
@_errors
def run(file: str, redis_url: str | None, namespace: str, cores: int | None, nodes: str | None, gpus: int | None,
        mem: int | None, store: str | None, timeout: float | None, progress: bool | None, as_json: bool,
        verbose: int) -> None:
    """Run the jobs of FILE and wait for them: locally with no Redis, or on a queue's executors.

    Ctrl-C in local mode cancels what is queued and kills what runs (a second Ctrl-C exits at once); with a
    queue it only stops waiting: the jobs go on."""
    from .manager import Manager
    from .progress import Interrupts
    from .requests import Interpreter
    _logging(verbose)
    reqs = _read_requests(file)
    m = Manager(redis_url, namespace=namespace, cores=cores, nodes=nodes, store=store, gpus=gpus, mem=mem)
    local = m.local is not None
    with Interrupts(m.abort) as interrupts:
        try:
            interp = Interpreter(m, _answers(as_json))
            try:
                interp.run(reqs)
            except QcgpjError:
                if local and interp.names:   # the file fails: what it started does not run on unseen
                    m.store.cancel(list(interp.names))
                raise
            names = list(interp.names)
            code = _run_wait(m, names, timeout, _show(progress), interrupts, namespace, local) if names else 0
            code = code or (1 if interp.failed else 0)
        finally:
            m.finish()
    sys.exit(code)


def _run_wait(m: Manager, names: list[str], timeout: float | None, show: bool, interrupts: Interrupts,
              namespace: str, local: bool) -> int:
    from .progress import Interrupted
    hint = None if local else (f"no executor serves namespace '{namespace}' yet: start one with "
                               f"`qcgpj-worker --redis-url URL -n {namespace}`")
    code = 0
    started = time.time()
    try:
        states = _wait_with_progress(m, names, timeout, show, interrupts, hint)
    except (Interrupted, TimeoutError) as exc:
        if not local:
            if isinstance(exc, TimeoutError):
                raise
            click.echo(f"stopped waiting: the {len(names)} job(s) go on in the queue; cancel them with "
                       f"`qcgpj cancel -n {namespace} NAME...` (the names are in the file)", err=True)
            return interrupts.code
        code = interrupts.code if isinstance(exc, Interrupted) else 1
        m.cancel(names)   # first: after a SIGHUP, writing to the closed terminal fails
        click.echo(str(exc) if code != 1 else f"timed out after {timeout:g} s", err=True)
        click.echo("canceling what is queued and killing what runs (Ctrl-C again: at once)", err=True)
        states = m.wait4(names, timeout=CANCEL_WAIT)
    where = f"local mode, store {m.store_kind}" if local else ""
    entries = None
    if local:
        meta = {"started": started, "ended": time.time(), "store": m.store_kind, "cores": m.local.total_cores,
                "nodes": m.local.total_nodes, "executor": m.local.executor.eid, "directory": os.getcwd()}
        try:
            path, entries = record.write(m, names, os.getcwd(), meta)
            where += f"; record: {os.path.relpath(path)}"
        except QcgpjError as exc:   # the queue is still here: the summary is read from it
            click.echo(f"qcgpj: {exc}", err=True)
            where += "; no record"
            code = code or 1
    ok = print_summary(m, states, where, entries)
    return code or (0 if ok else 1)


CANCEL_WAIT = 60.0   # seconds: canceled states are written at once; this only bounds a stuck store


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@url_option
@ns_option
@click.option("--durable", is_flag=True,
              help="Return only once Redis confirms the jobs are on disk (WAITAOF, appendfsync always) or on a "
                   "replica (WAIT); refused, writing nothing, where it cannot.")
@click.option("--batch-id", default=None, metavar="ID",
              help="Name this submit: submitting the same ID again after it succeeded writes nothing (a safe "
                   "retry after an interrupted submit).")
@json_answers_option
@_errors
def submit(file: str, redis_url: str | None, namespace: str, durable: bool, batch_id: str | None,
           as_json: bool) -> None:
    """Submit the jobs of FILE to the queue: the file's requests in order, each submit all or none."""
    _logging(0)   # the settings check's warnings
    reqs = _read_requests(file)
    m = _remote(redis_url, namespace)
    if durable or batch_id is not None:
        submits = [r for r in reqs if r.jobs]
        if len(submits) != 1 or len(reqs) != 1:
            raise QcgpjError("--durable and --batch-id take a file of one batch (a list of jobs or one submit)")
        names = m.submit(submits[0].jobs, durable=durable, batch_id=batch_id)
        click.echo(f"submitted {len(names)} job(s)")
        return
    from .requests import Interpreter
    interp = Interpreter(m, _answers(as_json))
    interp.run(reqs)
    click.echo(f"submitted {interp.submitted} job(s)", err=as_json)
    if interp.failed:
        sys.exit(1)


from_option = click.option("--from", "from_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                           help=f"Read the record a local `qcgpj run` left in DIR ({record.RECORD_FILE}).")


@main.command()
@click.argument("names", nargs=-1)
@record_url_option
@ns_option
@from_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
def status(names: tuple[str, ...], redis_url: str | None, namespace: str, from_dir: str | None,
           as_json: bool) -> None:
    """States of NAMES (default: all jobs) and a count by state."""
    if from_dir is not None:
        meta, entries = record.load(from_dir)
        states = {n: record.find(meta, entries, from_dir, n)["state"] for n in names} if names else \
            {n: e["state"] for n, e in entries.items() if ":" not in n}
    else:
        states = _remote(redis_url, namespace).status(list(names) if names else None)
    counts = Counter(states.values())
    if as_json:
        click.echo(json.dumps({"jobs": states, "counts": {s: counts[s] for s in STATE_ORDER if counts[s]}}, indent=1))
        return
    for name, st in states.items():
        click.echo(f"{name}\t{st}")
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
@record_url_option
@ns_option
@from_option
@click.option("--json", "as_json", is_flag=True)
@_errors
def info(name: str, redis_url: str | None, namespace: str, from_dir: str | None, as_json: bool) -> None:
    """Details of job NAME, or of one iteration NAME:IT."""
    data = record.lookup(from_dir, name) if from_dir is not None else _remote(redis_url, namespace).info(name)
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    from .timefmt import duration, local_time
    for key, value in data.items():
        if key in ("created", "start", "end", "unplaceable"):
            value = local_time(value)
        elif key == "runtime":
            value = duration(value)
        elif value is None:   # an iterative job's executor and exit code (its iterations have theirs)
            value = "-"
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def _with_stdin(names: tuple[str, ...]) -> list[str]:
    """NAMES with '-' replaced by the names on standard input, one a line (blank lines ignored): a campaign's
    100,000 names do not fit a command line (ARG_MAX), and Python's start-up slows with the argument count.
    A line that cannot be a name is refused with its number, before anything is changed."""
    if names.count("-") > 1:
        raise click.UsageError("'-' (names from standard input) may be given once")
    out: list[str] = []
    for name in names:
        if name != "-":
            out.append(name)
            continue
        for number, line in enumerate(click.get_text_stream("stdin"), 1):
            line = line.strip()
            if not line:
                continue
            if arguments.TASK_RE.fullmatch(line) is None:
                raise QcgpjError(f"standard input, line {number}: {line[:60]!r} is not a job name "
                                 "(one name a line, as NAME or NAME:IT)")
            out.append(line)
    return out


@main.command()
@click.argument("names", nargs=-1)
@url_option
@ns_option
@click.option("--all", "all_", is_flag=True,
              help="Every job not final; jobs submitted after it started are left alone (those that depend on a "
                   "canceled job are OMITTED).")
@_errors
def cancel(names: tuple[str, ...], redis_url: str | None, namespace: str, all_: bool) -> None:
    """Cancel jobs or iterations (NAME or NAME:IT; '-': names from standard input, one a line) or --all; their
    dependents are OMITTED. With a name unknown, nothing is canceled."""
    if all_ and names:
        raise click.UsageError("give job NAMES or --all, not both")
    if not all_ and not names:
        raise click.UsageError("give job NAMES ('-': from standard input) or --all")
    m = _remote(redis_url, namespace)
    if not all_:
        given = _with_stdin(names)
        if not given:
            click.echo("nothing to cancel: no names on standard input")
            return
        for name, res in m.cancel(given).items():
            click.echo(f"{name}\t{res}")
        return
    ended = Counter(m.cancel_all().values())
    if not ended:
        click.echo("nothing to cancel: no job of the namespace is waiting or running")
        return
    click.echo(f"canceled {ended['CANCELED']} job(s)"
               + (f", {ended['OMITTED']} OMITTED (they waited on one that did not succeed)" if ended["OMITTED"] else ""))


@main.command()
@click.argument("names", nargs=-1)
@url_option
@ns_option
@timeout_option
@click.option("--progress/--no-progress", default=None)
@_errors
def wait(names: tuple[str, ...], redis_url: str | None, namespace: str, timeout: float | None,
         progress: bool | None) -> None:
    """Wait until NAMES (default: all jobs) are final; exit 1 unless all SUCCEEDed (Ctrl-C: 130, the jobs go on)."""
    from .progress import Interrupted, Interrupts
    m = _remote(redis_url, namespace)
    with Interrupts(lambda: None) as interrupts:
        try:
            states = _wait_with_progress(m, list(names) or None, timeout, _show(progress), interrupts)
        except Interrupted:
            click.echo("stopped waiting: the jobs go on in the queue", err=True)
            sys.exit(interrupts.code)
    sys.exit(0 if print_summary(m, states) else 1)


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
               f"free {res['free_cores']}" + (f"  gpus {res['total_gpus']}  used {res['used_gpus']}"
                                              if res["total_gpus"] else ""))
    from .timefmt import local_time
    for eid, e in res["executors"].items():
        since = f"\tleft {local_time(e['ended'])}" if e.get("ended") else f"\tsince {local_time(e.get('started'))}"
        click.echo(f"  {eid}\t{e.get('state')}\tcores {e.get('total')}\trunning {e.get('running')}\t"
                   + (f"gpus {e['gpus']}\t" if e.get("gpus") else "") + f"nodes {e.get('nodes')}"
                   + (f"\tpid {e['pid']}" if e.get("pid") else "") + since
                   + (f"\tslurm job {e['slurm_job']}" if e.get("slurm_job") else ""))


@main.command()
@click.argument("names", nargs=-1)
@url_option
@ns_option
@click.option("--finished", is_flag=True, help="Every final job (kept: those that unfinished jobs depend on).")
@click.option("--older-than", type=DURATION, default=None, help="With --finished: only jobs that ended this long ago.")
@click.option("--all", "all_", is_flag=True, help="Every job; refused unless all are final.")
@_errors
def remove(names: tuple[str, ...], redis_url: str | None, namespace: str, finished: bool, older_than: float | None,
           all_: bool) -> None:
    """Remove final jobs NAMES (all or none; '-': names from standard input, one a line), --finished ones or
    --all, with every key they have in Redis."""
    if sum((bool(names), finished, all_)) != 1:
        raise click.UsageError("give job NAMES, --finished or --all (one of them)")
    if older_than is not None and not finished:
        raise click.UsageError("--older-than goes with --finished")
    m = _remote(redis_url, namespace)
    given = _with_stdin(names) if names else []
    if names and not given:
        click.echo("nothing to remove: no names on standard input")
        return
    if finished:
        from .housekeeping import remove_finished
        removed, kept = remove_finished(m.store, older_than)
        click.echo(f"removed {len(removed)} job(s)")
        for name, deps in list(kept.items())[:10]:
            click.echo(f"  kept {name}: not final yet, {deps.replace(',', ', ')} depend(s) on it")
        return
    removed_names = m.remove(m.store.job_names() if all_ else given)
    click.echo(f"removed {len(removed_names)} job(s)")


@main.command()
@url_option
@ns_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_errors
def purge(redis_url: str | None, namespace: str, yes: bool) -> None:
    """Delete every key of the namespace: jobs, executors, events."""
    m = _remote(redis_url, namespace)
    live = len(m.store.executors())
    warn = f" ({live} live executor(s) will find themselves declared dead)" if live else ""
    if not yes:
        click.confirm(f"Delete every job and key of namespace '{namespace}'{warn}?", abort=True)
    m.store.drop_namespace()
    click.echo(f"namespace '{namespace}' purged")
