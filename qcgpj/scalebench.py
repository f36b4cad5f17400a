"""``qcgpj bench -w scale``: many executors on one queue, and what each task costs Redis as their number grows.

N executors of C cores serve one namespace of ``sleep D`` jobs with one InputQueue. The executors are the real
``Executor`` (registration, heartbeat, BLMOVE claims, the ``sync`` script, reports, control, their threads and
connections, one Redis client each), many per process; only the runner differs: :class:`TimerRunner` "runs" a
task by waiting its declared duration on a timer, with no process, no CPU pinning and no launcher threads. So
what Redis sees (scripts, keys, round trips) is what real executors send; only the tasks are not there.

Measured over a steady window (after every executor joined and a warm-up): core utilisation (busy core-seconds,
from the start and end times the executors reported, over the window's core-seconds), tasks/s (ends in the
window), and the Redis server's deltas per task: CPU (INFO cpu), commands (INFO commandstats: every call,
those inside scripts included) and bytes in and out (INFO stats); plus the CPU of the simulator processes and of
the InputQueue, to tell which one saturates.
"""
from __future__ import annotations

import heapq
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import click
import redis

from .benchcpu import proc_cpu
from .connection import ENV_URL, child_env, connect
from .signals import stop_on_signals
from .jobs import Jobs
from .launching import Runner, Slot
from .manager import Manager

log = logging.getLogger(__name__)
PER_PROCESS = 50    # simulated executors per process: their threads share one GIL
TOP_COMMANDS = 8    # commands listed per run, by calls per task
SCRIPT_CALLS = ("evalsha", "eval", "fcall")   # the round trip is a function (FCALL) where the server has them


class _Timer:
    """A "running" task: nothing runs; kill() ends it at the runner's next wake-up."""

    __slots__ = ("done", "killed", "runner", "slot")

    def __init__(self, runner: "TimerRunner", slot: Slot) -> None:
        self.runner, self.slot, self.killed, self.done = runner, slot, False, False

    pid = None
    usage = None
    message = "killed"

    def kill(self) -> None:
        if not self.killed:
            self.killed = True
            self.runner.killed(self)

    kill_now = kill

    def poll(self) -> int | None:
        return None


class TimerRunner(Runner):
    """The executor's runner with tasks replaced by timers: a ``sleep D`` task ends D seconds after it started
    (any other task at once). The dispatcher sleeps until the next end, as it would on the tasks' pidfds, and
    reports each end when it wakes to it, as it would a process's.

    Its own cost is kept to what the timers need, as the simulators are the limit of a large run: ends are
    popped from a heap (not found by scanning every timer at each wake-up), and a killed timer ends at the next
    wake-up from a list of its own (its heap entry is skipped when it comes due)."""

    def __init__(self, ended: Callable[[Slot, "int | None"], None], post: Callable[[str, Any], None],
                 waiters: int) -> None:
        super().__init__(ended, post, waiters=1)
        self._timers: list[tuple[float, int, _Timer]] = []   # (end, seq, timer): a heap
        self._killed: list[_Timer] = []
        self._n = 0

    def pin_home(self, core: int | None) -> None:
        self.home = None   # no pinning: hundreds of simulated executors share a few CPUs

    def start(self, slot: Slot) -> None:
        argv = slot.launch.ctx.argv
        seconds = float(argv[1]) if len(argv) == 2 and os.path.basename(argv[0]) == "sleep" else 0.0
        timer = slot.running = _Timer(self, slot)
        self._n += 1
        heapq.heappush(self._timers, (time.monotonic() + seconds, self._n, timer))
        if slot.canceled:
            timer.kill()

    def killed(self, timer: _Timer) -> None:
        """From the thread that killed it (the dispatcher, or any thread in a local run's second Ctrl-C)."""
        self._killed.append(timer)
        self.wake()

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def wait(self, timeout: float) -> None:
        super().wait(timeout)   # the wake-up pipe (the dispatcher caps timeout at next_deadline)
        if self._killed:
            killed, self._killed = self._killed, []
            for timer in killed:
                self._end(timer)
        timers = self._timers
        t = time.monotonic()
        while timers and timers[0][0] <= t:
            self._end(heapq.heappop(timers)[2])

    def _end(self, timer: _Timer) -> None:
        if not timer.done:
            timer.done = True
            self._ended(timer.slot, -15 if timer.killed else 0)


# ---------------------------------------------------------------------- the simulator process
def serve_executors(url: str, namespace: str, first: int, count: int, cores: int, wd: str) -> None:
    """Run ``count`` executors (ids sim-<first>...) in this process until SIGTERM, then drain them."""
    from .executor import Executor
    from .resources import Node
    executors = [Executor(connect(url), [Node(f"simnode{i}", tuple(range(cores)))], namespace=namespace,
                          eid=f"sim-{i}", root_wd=wd, runner=TimerRunner)
                 for i in range(first, first + count)]
    threads = [threading.Thread(target=ex.run, name=f"sim-{ex.eid}", daemon=True) for ex in executors]
    done = threading.Event()
    stop_on_signals(done.set, (signal.SIGTERM,))   # not done.set() in a handler: it may deadlock
    for t in threads:
        t.start()
    while not done.wait(0.2):
        if all(ex._gen for ex in executors):   # all joined
            break
    # Executor.start() shortens the GIL's switch interval for one executor's hand-offs; with hundreds of
    # threads in one process that costs more CPU than it saves (the Redis side does not depend on it).
    sys.setswitchinterval(0.005)
    done.wait()
    for ex in executors:
        ex.stop()
    for t in threads:
        t.join()


@click.command()
@click.option("--redis-url", envvar=ENV_URL, required=True)
@click.option("--namespace", required=True)
@click.option("--first", type=int, required=True)
@click.option("--count", type=int, required=True)
@click.option("--cores", type=int, required=True)
@click.option("--wd", required=True)
def _sim_main(redis_url: str, namespace: str, first: int, count: int, cores: int, wd: str) -> None:
    """One simulator process (started by the scale workload)."""
    logging.basicConfig(level=logging.WARNING)
    serve_executors(redis_url, namespace, first, count, cores, wd)


# ---------------------------------------------------------------------- the workload
@dataclass
class ScaleConfig:
    url: str
    executors: tuple[int, ...] = (10, 100, 300)
    cores: int = 100          # per executor
    task_seconds: float = 1.0
    duration: float = 60.0    # the measured window, seconds
    warmup: float | None = None   # seconds after the last executor joined (default: 2 tasks' length, >= 3 s)
    per_process: int = PER_PROCESS


def _snapshot(client: redis.Redis, procs: dict[str, list[int]]) -> dict[str, Any]:
    info = client.info("all")
    return {"t": time.time(), "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "in": int(info["total_net_input_bytes"]), "out": int(info["total_net_output_bytes"]),
            "calls": {k[len("cmdstat_"):]: (int(v["calls"]), int(v["usec"]))
                      for k, v in info.items() if k.startswith("cmdstat_")},
            "procs": {name: sum(proc_cpu(p) or 0.0 for p in pids) for name, pids in procs.items()}}


def _busy(m: Manager, names: list[str], t0: float, t1: float) -> tuple[float, int]:
    """Busy core-seconds of these (one-core) jobs within [t0, t1], and how many ended in it."""
    busy, ended = 0.0, 0
    for i in range(0, len(names), 5000):
        for start, end in m.store.job_fields(names[i:i + 5000], "start", "end"):
            if not start:   # not started yet (None), or ended without starting ('')
                continue
            s, e = float(start), float(end) if end else t1
            busy += max(0.0, min(e, t1) - max(s, t0))
            ended += t0 <= e <= t1 and end is not None
    return busy, ended


def start_processes(cfg: ScaleConfig, ns: str, n: int, wd: str) -> list[subprocess.Popen]:
    """The InputQueue, then the simulators of ``n`` executors. The URL goes by the environment: on their
    command lines a password in it would show in `ps` to every user of the machine."""
    env = child_env(cfg.url, {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME", "LANG")})
    procs = [subprocess.Popen([sys.executable, "-m", "qcgpj", "inputqueue", "-n", ns], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    for first in range(0, n, cfg.per_process):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "qcgpj.scalebench", "--namespace", ns, "--first", str(first),
             "--count", str(min(cfg.per_process, n - first)), "--cores", str(cfg.cores), "--wd", wd],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    return procs


def run_one(cfg: ScaleConfig, n: int) -> dict[str, Any]:
    """One run with ``n`` executors on a fresh namespace (dropped afterwards)."""
    from .bench import stop_processes
    ns = f"scale-{n}-{uuid.uuid4().hex[:6]}"
    client = connect(cfg.url, check=False)
    m = Manager(cfg.url, namespace=ns, client=client)
    idle = _snapshot(client, {})
    time.sleep(1.0)   # Redis's own CPU with no work (timers, the bench's INFO), to read the per-task figures against
    idle_cpu = _snapshot(client, {})["cpu"] - idle["cpu"]
    warmup = cfg.warmup if cfg.warmup is not None else max(3.0, 2 * cfg.task_seconds)
    rate = n * cfg.cores / cfg.task_seconds
    # Enough that the queue never runs dry: the window and warm-up at full rate, plus what executors hold ahead.
    total = int(rate * (cfg.duration + warmup + 10) * 1.1) + n * (2 * cfg.cores + 32)
    names = [f"t{i}" for i in range(total)]
    jobs = Jobs()
    for name in names:
        jobs.add(name=name, exec="sleep", args=[f"{cfg.task_seconds:g}"])
    m.submit(jobs)
    wd = tempfile.mkdtemp(prefix="qcgpj-scale-")
    procs = start_processes(cfg, ns, n, wd)
    pids = {"inputqueue": [procs[0].pid], "simulators": [p.pid for p in procs[1:]]}
    try:
        last = m.store.last_event_id()
        while client.scard(m.store.keys.live) < n:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a simulator or the InputQueue exited early")
            last = m.store.wait_event(last, 0.5)
        time.sleep(warmup)   # the bench's own clock: the window starts once every executor runs at full rate
        a = _snapshot(client, pids)
        time.sleep(cfg.duration)
        b = _snapshot(client, pids)
        pending = client.llen(m.store.keys.pending)
    finally:
        stop_processes(procs)
        shutil.rmtree(wd, ignore_errors=True)
    busy, ended = _busy(m, names, a["t"], b["t"])
    m.store.drop_namespace()
    m.finish()
    return {**_figures(cfg, n, a, b, busy, ended, pending), "redis_idle_cpu": round(idle_cpu / 1.0, 3)}


def _figures(cfg: ScaleConfig, n: int, a: dict[str, Any], b: dict[str, Any], busy: float, ended: int,
             pending: int) -> dict[str, Any]:
    span = b["t"] - a["t"]
    per = max(ended, 1)
    calls = {c: (b["calls"][c][0] - a["calls"].get(c, (0, 0))[0], b["calls"][c][1] - a["calls"].get(c, (0, 0))[1])
             for c in b["calls"]}
    calls = {c: v for c, v in calls.items() if v[0] > 0 and c != "info"}   # INFO: the bench's own snapshots
    top = sorted(calls.items(), key=lambda kv: -kv[1][0])[:TOP_COMMANDS]
    redis_cpu = b["cpu"] - a["cpu"]
    return {
        "executors": n, "cores": n * cfg.cores, "task_s": cfg.task_seconds, "window_s": round(span, 1),
        "utilisation": round(100 * busy / (n * cfg.cores * span), 1),
        "tasks_per_s": round(ended / span, 1),
        "redis_us_per_task": round(1e6 * redis_cpu / per, 1),
        "redis_cpu": round(redis_cpu / span, 2),          # cores
        "calls_per_task": round(sum(v[0] for v in calls.values()) / per, 2),
        "scripts_per_task": round(sum(v[0] for c, v in calls.items() if c in SCRIPT_CALLS) / per, 3),
        "bytes_in_per_task": round((b["in"] - a["in"]) / per, 1),
        "bytes_out_per_task": round((b["out"] - a["out"]) / per, 1),
        "simulators_cpu": round((b["procs"]["simulators"] - a["procs"]["simulators"]) / span, 2),
        "inputqueue_cpu": round((b["procs"]["inputqueue"] - a["procs"]["inputqueue"]) / span, 2),
        "commands": ",".join(f"{c}:{v[0] / per:.2f}/{v[1] / per:.1f}us" for c, v in top),
        "ran_dry": pending == 0,
    }


def bench_scale(cfg: ScaleConfig) -> list[dict[str, Any]]:
    return [run_one(cfg, n) for n in cfg.executors]


if __name__ == "__main__":
    _sim_main()
