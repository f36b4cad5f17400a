"""``qcgpj bench``: throughput, dependency latency and submission cost, measured the way users run qcgpj.

Each workload runs in a fresh namespace. With a Redis URL the InputQueue and one executor are started as
separate processes (as on a cluster) unless ``external`` says executors already serve that namespace; the
namespace's keys are deleted afterwards. Without a URL everything runs in local mode. The ``spawn`` workload
uses no queue: it measures how fast this machine starts short processes, the limit of the ``tasks`` workload.
The ``local`` workload times the whole ``qcgpj run`` command in local mode with each store (and, given its path,
QCG-PilotJob's ``qcg-pm-service`` on the same file and cores), as a user runs it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import redis

from .benchcpu import CpuMeter
from .connection import child_env, connect
from .errors import QcgpjError
from .jobs import Jobs
from .keys import rq_results
from .manager import Manager
from .signals import die_with_parent

WORKLOADS = ("spawn", "tasks", "iterations", "chain", "queue", "submit", "local", "functions")
EXTRA_WORKLOADS = ("scale",)   # run only when named: minutes per run, many processes (``qcgpj.scalebench``)


@dataclass
class Result:
    workload: str
    what: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig:
    url: str | None
    tasks: int = 10_000
    chain: int = 1_000
    submit_jobs: int = 100_000
    submit_iterations: int = 1_000_000
    cores: int | None = None
    external: bool = False
    namespace: str = "default"   # the namespace served by external executors
    private: bool = False        # a server started for this run and thrown away after it: nothing to clean
    qcg: str | None = None       # qcg-pm-service to compare the local workload with
    scale: Any = None            # the scale workload's sizes (a ``scalebench.ScaleConfig``)
    processes: int = 1           # executor processes of the started worker (its --processes)


class Services:
    """InputQueue and one executor as child processes on one namespace (unless external)."""

    def __init__(self, cfg: BenchConfig, namespace: str, model_dir: str) -> None:
        self.cfg, self.namespace, self.dir = cfg, namespace, model_dir
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []
        self.logs: list[IO[bytes]] = []   # each service's stderr, read only if it exits early

    def start(self) -> None:
        if self.cfg.external or self.cfg.url is None:
            return
        base = [sys.executable, "-m", "qcgpj"]
        common = ["-n", self.namespace]   # the URL goes by the environment (child_env): not shown by `ps`
        cores = ["--cores", str(self.cfg.cores)] if self.cfg.cores else []
        procs = ["--processes", str(self.cfg.processes)] if self.cfg.processes > 1 else []
        for args in (["inputqueue", *common], ["worker", *common, *cores, *procs, "--wd", self.dir]):
            self.names.append(args[0])
            self.logs.append(tempfile.TemporaryFile())
            self.procs.append(subprocess.Popen(base + args, stdout=subprocess.DEVNULL, stderr=self.logs[-1],
                                               env=child_env(self.cfg.url), start_new_session=True,
                                               # SIGKILL: a worker told to stop waits to report to a Redis that
                                               # dies with the bench too; nothing of a bench's queue is kept
                                               preexec_fn=die_with_parent(signal.SIGKILL)))

    def check(self) -> None:
        """A service that has exited ends the run with its last words, instead of a wait for it that never ends
        (a worker that cannot start: a module missing, an option its version does not know)."""
        for name, p, log in zip(self.names, self.procs, self.logs):
            code = p.poll()
            if code is not None:
                log.seek(0)
                last = (log.read().decode(errors="replace").strip().splitlines() or ["no message"])[-1]
                raise QcgpjError(f"the bench's {name} exited with code {code} before the run ended: {last}")

    def stop(self) -> None:
        stop_processes(self.procs)
        for log in self.logs:
            log.close()


def stop_processes(procs: list[subprocess.Popen], grace: float = 30) -> None:
    """SIGTERM to each process group (services drain on it), SIGKILL to what is left after ``grace`` seconds."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@contextmanager
def session(cfg: BenchConfig, executors: bool = True) -> Iterator[tuple[Manager, str, CpuMeter]]:
    """A manager, a prefix for job names and a meter of the CPU of the services. On its own services, a fresh
    namespace that is dropped afterwards; with external executors, their namespace, from which only this run's
    jobs are removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    shared = executors and cfg.external and cfg.url is not None
    ns = cfg.namespace if shared else f"bench-{tag}"
    wd = tempfile.mkdtemp(prefix="qcgpj-bench-")
    services = Services(cfg, ns, wd)
    if executors:
        services.start()
    # A server started for the run keeps nothing on disk on purpose: no warning about that.
    client = connect(cfg.url) if cfg.private and cfg.url is not None else None
    m = Manager(cfg.url, namespace=ns, cores=None if cfg.url else cfg.cores, root_wd=wd, client=client)
    prefix = f"b{tag}-" if shared else ""
    pids = dict(zip(("inputqueue", "executor"), (p.pid for p in services.procs)))
    meter = CpuMeter(m.client, pids, here=not shared, executors=cfg.processes if services.procs else 1)
    meter.watch = services.check
    try:
        yield m, prefix, meter
    finally:
        m.finish()
        services.stop()
        if shared:
            m.store.drop_jobs(prefix)
        elif cfg.url is not None and not cfg.private:
            m.store.drop_namespace()
        shutil.rmtree(wd, ignore_errors=True)


def _wait_executor(m: Manager, meter: CpuMeter) -> int:
    """Executors started as processes take a moment to register; the clock starts before, so it counts. The
    meter counts the CPU of the executor processes that registered (all of them with ``--processes``), not the
    worker command's: it only supervises them. Returns how many executors serve the run."""
    last = m.store.last_event_id()
    while len(alive := [e for e in m.store.executors().values() if e.get("state") == "ALIVE"]) < meter.executors:
        meter.watch()
        last = m.store.wait_event(last, 0.5)
    if "executor" in meter.pids:   # the executor processes, not the command that supervises them
        meter.pids["executor"] = [int(e["pid"]) for e in alive]
    return len(alive)


def _spawn(n: int) -> None:
    """Start and wait for n /bin/true one after the other, as the executor starts tasks (own session,
    /dev/null for stdio)."""
    for _ in range(n):
        subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True).wait()


def bench_spawn(cfg: BenchConfig) -> list[Result]:
    """The machine's own limits, with no queue at all. ``spawn``: N /bin/true started and waited for from one
    thread per core; short tasks cannot run faster than this on this machine, and the tasks row says which
    share of it the queue reaches. ``spawn1``: one /bin/true at a time from one thread, the least a hop of a
    dependency chain can take; the chain row says how much more a hop takes."""
    threads = cfg.cores or os.cpu_count() or 1
    per, extra = divmod(cfg.tasks, threads)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(_spawn, [per + (1 if i < extra else 0) for i in range(threads)]))
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    _spawn(cfg.chain)
    dt1 = time.perf_counter() - t1
    return [Result("spawn", f"{cfg.tasks} /bin/true, no queue", round(cfg.tasks / dt, 1), "tasks/s",
                   {"seconds": round(dt, 3), "threads": threads}),
            Result("spawn1", f"{cfg.chain} /bin/true, one at a time", round(dt1 * 1000 / cfg.chain, 3),
                   "ms/task", {"seconds": round(dt1, 3)})]


def bench_tasks(cfg: BenchConfig, model: str = "default") -> Result:
    """Workload a (and d with the no-op model): N single-core /bin/true jobs, the whole run."""
    t0 = time.perf_counter()
    with session(cfg) as (m, px, meter):
        jobs = Jobs()
        for i in range(cfg.tasks):
            jobs.add(name=f"{px}t{i}", exec="/bin/true", model=model if model != "default" else None)
        executors = _wait_executor(m, meter)
        cpu0 = meter.snapshot()
        t1 = time.perf_counter()
        names = m.submit(jobs)
        t2 = time.perf_counter()
        # On shared executors other jobs may sit in the namespace: wait for (and count) only ours.
        watch = meter.progress_watch()
        states = m.wait4(names, progress=watch) if px else m.wait4all(progress=watch)
        t3 = time.perf_counter()
        cpu = meter.per_task(cpu0, meter.snapshot(), cfg.tasks)
    dt = time.perf_counter() - t0
    phases = {"start": round(t1 - t0, 3), "submit": round(t2 - t1, 3), "run": round(t3 - t2, 3),
              "stop": round(time.perf_counter() - t3, 3), "executors": executors, **cpu}
    ok = sum(1 for s in states.values() if s == "SUCCEED")
    if model == "noop":
        # The queue's own ceiling: from the first submit until every task is final (starting and stopping the
        # services is process start-up, not queueing); the whole command's rate is in the details.
        span = t3 - t1
        return Result("queue", f"{cfg.tasks} jobs, no-op launcher", round(cfg.tasks / span, 1), "tasks/s",
                      {"seconds": round(span, 3), "succeeded": ok, "whole_per_s": round(cfg.tasks / dt, 1),
                       **phases})
    return Result("tasks", f"{cfg.tasks} jobs, /bin/true", round(cfg.tasks / dt, 1), "tasks/s",
                  {"seconds": round(dt, 3), "succeeded": ok, **phases})


def bench_iterations(cfg: BenchConfig) -> Result:
    """Workload b: one iterative job of N /bin/true iterations."""
    t0 = time.perf_counter()
    with session(cfg) as (m, px, meter):
        _wait_executor(m, meter)
        cpu0 = meter.snapshot()
        m.submit(Jobs().add(name=f"{px}sweep", exec="/bin/true", iteration=cfg.tasks))
        state = m.wait4([f"{px}sweep"], progress=meter.progress_watch())[f"{px}sweep"]
        cpu = meter.per_task(cpu0, meter.snapshot(), cfg.tasks)
    dt = time.perf_counter() - t0
    return Result("iterations", f"1 job of {cfg.tasks} iterations", round(cfg.tasks / dt, 1), "tasks/s",
                  {"seconds": round(dt, 3), "state": state, **cpu})


def bench_chain(cfg: BenchConfig) -> Result:
    """Workload c: a chain of dependent /bin/true jobs; ms per hop from the first start to the last end."""
    with session(cfg) as (m, px, meter):
        jobs = Jobs().add(name=f"{px}c0", exec="/bin/true")
        for i in range(1, cfg.chain):
            jobs.add(name=f"{px}c{i}", exec="/bin/true", after=[f"{px}c{i - 1}"])
        _wait_executor(m, meter)
        cpu0 = meter.snapshot()
        m.submit(jobs)
        m.wait4([f"{px}c{cfg.chain - 1}"], progress=meter.progress_watch())
        cpu = meter.per_task(cpu0, meter.snapshot(), cfg.chain)
        first, last = m.info(f"{px}c0"), m.info(f"{px}c{cfg.chain - 1}")
    span = last["end"] - first["start"]
    return Result("chain", f"chain of {cfg.chain} dependent jobs", round(span * 1000 / cfg.chain, 3), "ms/hop",
                  {"seconds": round(span, 3), **cpu})


def bench_submit(cfg: BenchConfig) -> list[Result]:
    """Workload e: submission cost, time and Redis bytes per job, with no executor (nothing runs)."""
    out = []
    with session(cfg, executors=False) as (m, _, _meter):
        if m.local is not None:
            m.local.executor.stop()
        mem0 = _used_memory(m.client)
        jobs = Jobs()
        t0 = time.perf_counter()
        for i in range(cfg.submit_jobs):
            jobs.add(name=f"s{i}", exec="/bin/true")
        m.submit(jobs)
        dt = time.perf_counter() - t0
        mem1 = _used_memory(m.client)
        out.append(Result("submit", f"{cfg.submit_jobs} separate jobs", round(dt, 3), "s",
                          {"bytes_per_job": _per(_delta(mem0, mem1), cfg.submit_jobs),
                           "jobs_per_s": round(cfg.submit_jobs / dt, 1)}))
        t0 = time.perf_counter()
        m.submit(Jobs().add(name="big", exec="/bin/true", iteration=cfg.submit_iterations))
        dt = time.perf_counter() - t0
        mem2 = _used_memory(m.client)
        out.append(Result("submit", f"1 job of {cfg.submit_iterations} iterations", round(dt, 3), "s",
                          {"bytes": _delta(mem1, mem2)}))
    return out


def bench_local(cfg: BenchConfig) -> list[Result]:
    """``qcgpj run`` of N /bin/true jobs in local mode, the whole command, with each store available; the same
    file (QCG-PilotJob's request format) through ``qcg-pm-service`` when given, for the ratio."""
    from .local import choose_store
    cores = cfg.cores or os.cpu_count() or 1
    d = tempfile.mkdtemp(prefix="qcgpj-bench-local-")
    path = os.path.join(d, "jobs.json")
    jobs = [{"name": f"t{i}", "execution": {"exec": "/bin/true"}} for i in range(cfg.tasks)]
    with open(path, "w") as f:
        json.dump([{"request": "submit", "jobs": jobs},
                   {"request": "control", "command": "finishAfterAllTasksDone"}], f)
    runs = [(st, [sys.executable, "-m", "qcgpj", "run", path, "--store", st, "--cores", str(cores)])
            for st in ("redis-server", "fakeredis") if st == "fakeredis" or _has_store(choose_store, st)]
    if cfg.qcg:
        runs.append(("QCG-PilotJob", [cfg.qcg, "--file-path", path, "--nodes", f"n0:{cores}"]))
    out = []
    try:
        for what, cmd in runs:
            wd = tempfile.mkdtemp(dir=d)
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=wd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            out.append(Result("local", f"run {cfg.tasks} /bin/true: {what}", round(cfg.tasks / dt, 1), "tasks/s",
                              {"seconds": round(dt, 3), "ok": res.returncode == 0}))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    qcg = next((r for r in out if r.what.endswith("QCG-PilotJob")), None)
    for r in out:
        if qcg is not None and r is not qcg:
            r.extra["x_qcg"] = round(qcg.extra["seconds"] / r.extra["seconds"], 2)
    return out


def _has_store(choose: Any, store: str) -> bool:
    try:
        choose(store)
        return True
    except QcgpjError:
        return False


def square(x: int) -> int:
    """The trivial importable function of the ``functions`` workload."""
    return x * x


def bench_functions(cfg: BenchConfig, chunksize: int = 100) -> list[Result]:
    """Python calls through ``qcgpj.Executor``: N calls of a trivial function through ``map`` (the whole run,
    services and warm processes started in it), a chain of dependent calls (each takes its parent's future),
    and, as the baseline users know, rq's own SimpleWorker (burst) running the same N calls from an rq queue
    in the same Redis (only its work is timed, not the enqueueing)."""
    from .futures import Executor
    out = []
    t0 = time.perf_counter()
    with session(cfg) as (m, _px, meter):
        if cfg.url is None:   # local mode: the Executor starts its own services
            m.finish()
        else:   # a worker that cannot start ends the bench here, with its reason (futures would wait for ever)
            _wait_executor(m, meter)
        ex = Executor(cfg.url, namespace=m.store.keys.namespace, cores=None if cfg.url else cfg.cores,
                      client=m.client if cfg.url else None)
        t1 = time.perf_counter()
        values = list(ex.map(square, range(cfg.tasks), chunksize=chunksize))
        t2 = time.perf_counter()
        hops = _function_chain(ex, cfg.chain)
        ex.shutdown()
        if cfg.url is not None:
            ex.drop_calls()
    rate = cfg.tasks / (t2 - t0)
    out.append(Result("functions", f"{cfg.tasks} calls, Executor.map(chunksize={chunksize})", round(rate, 1),
                      "calls/s", {"seconds": round(t2 - t0, 3), "start": round(t1 - t0, 3),
                                  "map": round(t2 - t1, 3),
                                  "correct": values == [x * x for x in range(cfg.tasks)]}))
    out.append(Result("functions", f"chain of {cfg.chain} dependent calls", round(hops * 1000 / cfg.chain, 3),
                      "ms/hop", {"seconds": round(hops, 3)}))
    if cfg.url is not None:
        rq_rate = _rq_baseline(cfg)
        out.append(Result("functions", f"rq SimpleWorker, {cfg.tasks} calls (baseline)", round(rq_rate, 1),
                          "calls/s", {"qcgpj_over_rq": round(rate / rq_rate, 2)}))
    return out


def _function_chain(ex: Any, n: int) -> float:
    """Seconds from the first call's start to the last one's end, of n calls each taking its parent's future.
    Submitted one by one behind a gate (a job that waits for a file), so the figure is the hops', not the
    client's submitting."""
    gate_dir = tempfile.mkdtemp(prefix="qcgpj-gate-")
    gate = os.path.join(gate_dir, "go")
    name = f"gate-{uuid.uuid4().hex[:8]}"
    ex.manager.submit(Jobs().add(name=name, script=f"while [ ! -e {gate} ]; do sleep 0.01; done"))
    f = first = ex.options(after=[name]).submit(square, 1)
    for _ in range(n - 1):
        f = ex.submit(square, f)
    open(gate, "w").close()
    f.result()
    shutil.rmtree(gate_dir, ignore_errors=True)
    return ex.manager.info(f.job)["end"] - ex.manager.info(first.job)["start"]


def _rq_baseline(cfg: BenchConfig) -> float:
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer
    conn = redis.Redis.from_url(cfg.url)
    q = Queue(f"qcgpj-bench-{uuid.uuid4().hex[:8]}", connection=conn, serializer=JSONSerializer)
    jobs = q.enqueue_many([Queue.prepare_data(square, args=(i,), result_ttl=600) for i in range(cfg.tasks)])
    t0 = time.perf_counter()
    worker = SimpleWorker([q], connection=conn, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")
    dt = time.perf_counter() - t0
    for i in range(0, len(jobs), 1000):   # rq keeps its jobs, results and registries: remove this run's
        conn.delete(*[k for j in jobs[i:i + 1000] for k in (j.key, rq_results(j.id))])
    conn.delete(*conn.scan_iter(match=f"rq:*{q.name}*", count=1000), q.key, worker.key)
    conn.srem("rq:queues", q.key)
    return cfg.tasks / dt


def _used_memory(client: redis.Redis) -> int | None:
    try:
        return int(client.info("memory")["used_memory"])
    except (redis.ResponseError, KeyError):
        return None


def _delta(before: int | None, after: int | None) -> int | None:
    """Memory growth; None where the server does not say (fakeredis in local mode has no INFO memory)."""
    return None if before is None or after is None else after - before


def _per(delta: int | None, n: int) -> float | None:
    return None if delta is None else round(delta / n, 1)


def run(cfg: BenchConfig, workloads: tuple[str, ...]) -> list[Result]:
    results: list[Result] = []
    for w in workloads:
        if w == "spawn":
            results.extend(bench_spawn(cfg))
        elif w == "tasks":
            results.append(bench_tasks(cfg))
        elif w == "iterations":
            results.append(bench_iterations(cfg))
        elif w == "chain":
            results.append(bench_chain(cfg))
        elif w == "queue":
            results.append(bench_tasks(cfg, model="noop"))
        elif w == "submit":
            results.extend(bench_submit(cfg))
        elif w == "local":
            results.extend(bench_local(cfg))
        elif w == "functions":
            results.extend(bench_functions(cfg))
        elif w == "scale":
            results.extend(_bench_scale(cfg))
    _share_of_spawn(cfg, results)
    return results


def _bench_scale(cfg: BenchConfig) -> list[Result]:
    from .scalebench import ScaleConfig, bench_scale
    if cfg.url is None:
        raise QcgpjError("the scale workload needs a Redis: give --redis-url or --start-redis")
    sc = ScaleConfig(cfg.url, **(cfg.scale or {}))
    return [Result("scale", f"{r['executors']} executors x {sc.cores} cores, {sc.task_seconds:g} s tasks",
                   r.pop("utilisation"), "% busy", r) for r in bench_scale(sc)]


def _share_of_spawn(cfg: BenchConfig, results: list[Result]) -> None:
    """The rate of short tasks as a share of the spawn limit measured in the same run: on its own, a rate says
    as much about the machine (whose speed, on shared virtual hosts, varies by the hour) as about the queue.
    Not with external executors: they may run on other machines than the one the limit was measured on."""
    spawn = next((r for r in results if r.workload == "spawn"), None)
    spawn1 = next((r for r in results if r.workload == "spawn1"), None)
    if spawn is None or cfg.external:
        return
    for r in results:
        if r.workload in ("tasks", "iterations", "local"):
            r.extra["of_spawn_limit"] = round(r.value / spawn.value, 2)
        elif r.workload == "chain" and spawn1 is not None:   # what a hop costs beyond its own process
            r.extra["over_spawn1_ms"] = round(r.value - spawn1.value, 3)


@contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away redis-server on a free loopback port, for ``qcgpj bench --start-redis``."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found on PATH")
    d = tempfile.mkdtemp(prefix="qcgpj-redis-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=die_with_parent())
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = connect(url, check=False)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise
                time.sleep(0.05)   # waiting for an external server to come up: no event to wait on
        yield url
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)
