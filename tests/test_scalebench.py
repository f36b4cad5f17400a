"""``qcgpj bench -w scale`` at toy sizes: it runs the simulated executors against a private server and reports
every figure; no threshold on any of them (the machine is shared)."""
from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

from qcgpj.launching import Slot
from qcgpj.resources import Allocation
from qcgpj.scalebench import TimerRunner
from qcgpj.store import Entry
from tests.test_cli import qcgpj

FIELDS = {"executors", "cores", "task_s", "window_s", "tasks_per_s", "redis_us_per_task", "redis_cpu",
          "calls_per_task", "scripts_per_task", "bytes_in_per_task", "bytes_out_per_task", "simulators_cpu",
          "inputqueue_cpu", "commands", "ran_dry", "redis_idle_cpu"}


def test_scale_workload_reports_each_executor_count(tmp_path):
    res = qcgpj("bench", "--start-redis", "-w", "scale", "--executors", "1,3", "--executor-cores", "2",
                "--task-seconds", "0.2", "--duration", "1", "--json", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["workload"], r["extra"]["executors"], r["extra"]["cores"]) for r in rows] == [
        ("scale", 1, 2), ("scale", 3, 6)]
    for r in rows:
        assert set(r["extra"]) == FIELDS and r["unit"] == "% busy"
        assert 0 < r["value"] <= 100 and r["extra"]["tasks_per_s"] > 0   # tasks ran in the window
        # the most frequent commands: calls and server microseconds per task
        assert re.fullmatch(r"([a-z|]+:\d+\.\d\d/\d+\.\dus,?){1,8}", r["extra"]["commands"])


def test_scale_workload_needs_a_redis(tmp_path):
    res = qcgpj("bench", "-w", "scale", "--executors", "1", cwd=tmp_path)
    assert res.returncode != 0
    assert "the scale workload needs a Redis" in res.stderr
    res = qcgpj("bench", "--start-redis", "-w", "scale", "--executors", "0,2", cwd=tmp_path)
    assert res.returncode != 0 and "positive whole numbers" in res.stderr


def _slot(task: str, argv: list[str]) -> Slot:
    slot = Slot(Entry.parse(f"{task}|1|0|0"), Allocation((("n0", (0,)),)), "0")
    slot.launch = SimpleNamespace(ctx=SimpleNamespace(argv=argv))
    return slot


def test_timer_runner_ends_each_timer_once_when_due_and_a_killed_one_at_once():
    ended: list[tuple[str, int | None]] = []
    runner = TimerRunner(lambda slot, code: ended.append((slot.entry.task, code)), lambda kind, data: None, 1)
    try:
        slots = {name: _slot(name, argv) for name, argv in
                 (("long", ["sleep", "0.2"]), ("short", ["/bin/sleep", "0.1"]), ("now", ["true"]))}
        for slot in slots.values():
            runner.start(slot)
        slots["long"].running.kill()
        slots["long"].running.kill()   # twice: one end all the same
        runner.wait(0)
        assert sorted(ended) == [("long", -15), ("now", 0)]
        while runner.next_deadline() is not None:   # the killed timer's entry comes due too: skipped
            runner.wait(max(0.0, runner.next_deadline() - time.monotonic()))
        assert sorted(ended) == [("long", -15), ("now", 0), ("short", 0)]
    finally:
        runner.close()
