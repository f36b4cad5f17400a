"""CPU time per task of each process of a bench run: the executor, the InputQueue, redis-server and the client.

Wall-clock rates on a shared machine vary by a factor of two from one minute to the next; the CPU each
process spends per task does not depend on what else runs, so it is the figure to compare changes by.
Processes are read from ``/proc/PID/stat`` (user + system, all threads, not the tasks it reaped), redis-server
from its own ``INFO cpu`` (so a server on another host counts too), the client from ``getrusage``.

Two more figures say where the rest of the machine went: ``tasks``, the CPU of the tasks themselves (the
processes the executor reaped, from the same ``stat`` line; in local mode the client's reaped children), and
``idle``, the CPU time no process used (``/proc/stat``, all CPUs), both per task. With short tasks the tasks'
own CPU is most of the machine: what the engine may still win is the idle and its own share, not more.
"""
from __future__ import annotations

import os
import resource
from typing import Any, Callable

import redis

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), or None where /proc does not say."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK   # utime, stime (stat(5))


def children_cpu(pid: int) -> float | None:
    """User + system CPU seconds of the children a live process has reaped (cutime, cstime)."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[13]) + int(fields[14])) / _TICK


def idle_cpu() -> float | None:
    """Seconds all CPUs together spent idle (idle + iowait of ``/proc/stat``) since boot."""
    try:
        with open("/proc/stat") as f:
            values = f.readline().split()[1:]
        return (int(values[3]) + int(values[4])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def redis_cpu(client: Any) -> float | None:
    """The server's user + system CPU seconds (INFO cpu); None where it has no such section (fakeredis)."""
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (redis.RedisError, KeyError, ValueError):
        return None


def _total(read: Any, pids: int | list[int]) -> float | None:
    """What ``read`` gives for a process, or summed over several (None if any cannot be read)."""
    values = [read(pid) for pid in (pids if isinstance(pids, list) else [pids])]
    return None if None in values else sum(values)


class CpuMeter:
    """Snapshots of the CPU used so far by each named process; :meth:`per_task` gives µs per task between two."""

    def __init__(self, client: Any, pids: dict[str, int | list[int]], here: bool = True, executors: int = 1) -> None:
        """``pids``: a process, or several counted as one (a worker's executor processes). ``here``: the tasks run
        on this machine (not on external executors), so its idle time is theirs. ``executors``: the executor
        processes of the worker measured, found once they registered."""
        self.client, self.pids, self.here, self.executors = client, pids, here, executors
        self.watch: Callable[[], None] = lambda: None   # raises when a process measured has gone (bench.Services)

    def progress_watch(self) -> Callable[[int, int], None]:
        """``watch`` as a wait's progress callback: called at each wake-up of the wait (at least every second)."""
        return lambda _done, _total: self.watch()

    def snapshot(self) -> dict[str, float | None]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        snap: dict[str, float | None] = {name: _total(proc_cpu, pid) for name, pid in self.pids.items()}
        snap["redis"] = redis_cpu(self.client)
        snap["client"] = ru.ru_utime + ru.ru_stime
        if not self.here:
            return snap
        if "executor" in self.pids:
            snap["tasks"] = _total(children_cpu, self.pids["executor"])
        else:   # local mode: the executor runs in this process
            rc = resource.getrusage(resource.RUSAGE_CHILDREN)
            snap["tasks"] = rc.ru_utime + rc.ru_stime
        snap["idle"] = idle_cpu()
        return snap

    @staticmethod
    def per_task(before: dict[str, float | None], after: dict[str, float | None], n: int) -> dict[str, float]:
        """``{name}_cpu_us``: microseconds of CPU per task of each process measured both times."""
        out = {}
        for name, t0 in before.items():
            t1 = after.get(name)
            if t0 is not None and t1 is not None and n:
                out[f"{name}_cpu_us"] = round((t1 - t0) * 1e6 / n, 1)
        return out
