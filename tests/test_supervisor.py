"""The worker command supervises its executor process(es): when one dies abruptly, the tasks it left are killed
before the queue gives them to another executor, so a task never runs twice at once; and a signal sent to the
command reaches each executor once. Real redis-server, real processes; a task tells its pid through a FIFO."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from qcgpj import Jobs, Manager

from tests.cluster import Cluster, executor_pids, kill_executor, process_ended, qcgpj_cmd
from tests.test_behaviour import wait_state

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only (pidfds, the supervisor)")

FAST = ("--ttl", "2", "--heartbeat", "0.5")


def gated(name: str) -> str:
    """A task that tells its pid through ``<name>.fifo`` (once read), then runs until the file 'go' exists."""
    return f"echo $$ > {name}.fifo; while [ ! -e go ]; do sleep 0.05; done; echo $$ >> {name}.ended"


def read_pid(fifo: Path, timeout: float = 60) -> int:
    """The pid a task wrote into the FIFO, woken by its write; each run of the task writes once."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # open at once; the writer's open waits for a reader
    try:
        data, deadline = b"", time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and select.select([fd], [], [], left)[0], f"nothing written to {fifo.name}"
            data += os.read(fd, 64)
        return int(data)
    finally:
        os.close(fd)


def killed_lines(log: Path) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if re.search(r"executor \d+ was killed by signal", ln)]


def gated_jobs(tmp_path: Path, *names: str) -> Jobs:
    jobs = Jobs()
    for name in names:
        os.mkfifo(tmp_path / f"{name}.fifo")
        jobs.add(name=name, script=gated(name))
    return jobs


def test_a_killed_executor_s_task_is_killed_before_it_runs_again(redis_url, tmp_path):
    """SIGKILL to the executor process: its task, a session of its own, ran on as an orphan while the queue gave
    it to another executor, two copies at once. The command now kills it, says so in one line and exits."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        a = c.worker(1, *FAST, name="worker-a")
        m = c.manager()
        c.wait_executors(m)
        m.submit(gated_jobs(tmp_path, "t"))
        first = read_pid(tmp_path / "t.fifo")
        victim = kill_executor(m, a)
        assert process_ended(first), "the killed executor's task runs on"
        assert victim != a.pid   # the executor is a process of its own, the command supervises it
        assert a.wait(timeout=60) == 128 + signal.SIGKILL, c.logs()
        assert not os.path.exists(f"/proc/{first}"), "the task was not reaped"
        (line,) = killed_lines(tmp_path / "worker-a.log")
        assert f"executor {victim} was killed by signal 9 (SIGKILL): killed 1 task process(es)" in line, line
        c.worker(1, *FAST, name="worker-b")   # the task runs again there, once a's heartbeat expired
        second = read_pid(tmp_path / "t.fifo")
        assert second != first
        (tmp_path / "go").touch()
        assert m.wait4(["t"], timeout=60) == {"t": "SUCCEED"}, c.logs()
        assert (tmp_path / "t.ended").read_text().split() == [str(second)]   # the first copy never went on
        assert m.info("t")["attempts"] == 1
    finally:
        (tmp_path / "go").touch()
        c.stop()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_with_two_processes_one_executor_killed_the_other_serves_on(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        w = c.worker(2, "--processes", "2", "--id", "pw", *FAST)
        m = c.manager()
        c.wait_executors(m, 2)
        m.submit(gated_jobs(tmp_path, "x", "y"))
        pids = {name: read_pid(tmp_path / f"{name}.fifo") for name in ("x", "y")}
        wait_state(m, "x", "EXECUTING")
        wait_state(m, "y", "EXECUTING")
        execs = m.store.executors()
        victim = int(execs[m.info("x")["executor"]]["pid"])
        survivor = m.info("y")["executor"]
        assert sorted(executor_pids(m, w)) == sorted(int(e["pid"]) for e in execs.values())
        os.kill(victim, signal.SIGKILL)
        assert process_ended(pids["x"]), "the killed executor's task runs on"
        assert w.poll() is None and not process_ended(pids["y"], 0), "the other executor or its task went too"
        (tmp_path / "go").touch()
        again = read_pid(tmp_path / "x.fifo")   # x again, on the survivor, once y has ended there
        assert m.wait4(["x", "y"], timeout=60) == {"x": "SUCCEED", "y": "SUCCEED"}, c.logs()
        assert again != pids["x"] and m.info("x")["executor"] == survivor
        assert (tmp_path / "x.ended").read_text().split() == [str(again)]
        w.terminate()   # a drain for the survivor; the command's code is the worst of its executors'
        assert w.wait(timeout=60) == 128 + signal.SIGKILL, c.logs()
        (line,) = killed_lines(tmp_path / "worker.log")
        assert f"executor {victim} was killed by signal 9 (SIGKILL): killed 1 task process(es)" in line, line
        states = {e: v["state"] for e, v in m.store.executors(departed=True).items()}
        assert states[survivor] == "LEFT" and sorted(states.values()) == ["DEAD", "LEFT"], states
    finally:
        (tmp_path / "go").touch()
        c.stop()


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_to_the_command_s_group_reaches_each_executor_once(redis_url, tmp_path, processes):
    """A terminal's Ctrl-C goes to the whole foreground process group. Executors in the command's group got it
    from there and again from the command, which passes it on; a second Ctrl-C tells an executor to stop
    waiting for Redis, so a drain during an outage dropped its reports. Each executor logs each stop signal it
    gets: one line each. (Without the fix the second line comes within the first's drain, which waits for the
    running task, released only afterwards.)"""
    if processes > len(os.sched_getaffinity(0)):
        pytest.skip(f"needs {processes} CPUs")
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        w = c.worker(processes, "--processes", str(processes))
        m = c.manager()
        c.wait_executors(m, processes)
        names = [f"t{i}" for i in range(processes)]
        m.submit(gated_jobs(tmp_path, *names))
        for name in names:
            read_pid(tmp_path / f"{name}.fifo")
        os.killpg(w.pid, signal.SIGINT)   # the worker leads its group (Cluster: a session of its own)
        (tmp_path / "go").touch()         # the drain lets the tasks finish and reports them
        assert w.wait(timeout=60) == 0, c.logs()
        assert m.wait4(names, timeout=30) == {name: "SUCCEED" for name in names}
        stops = (tmp_path / "worker.log").read_text().count("signal 2: stopping")
        assert stops == processes, c.logs()
    finally:
        (tmp_path / "go").touch()
        c.stop()


def test_sighup_to_the_command_is_a_drain(redis_url, tmp_path):
    """A closed terminal's SIGHUP killed the worker outright; the command now passes it on as SIGTERM."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        w = c.worker(1)
        m = c.manager()
        c.wait_executors(m)
        m.submit(gated_jobs(tmp_path, "t"))
        read_pid(tmp_path / "t.fifo")
        w.send_signal(signal.SIGHUP)
        (tmp_path / "go").touch()
        assert w.wait(timeout=60) == 0, c.logs()
        assert m.wait4(["t"], timeout=30) == {"t": "SUCCEED"}
        assert (tmp_path / "worker.log").read_text().count("signal 15: stopping") == 1, c.logs()
    finally:
        (tmp_path / "go").touch()
        c.stop()


def test_a_worker_that_cannot_join_is_one_line_from_the_command(tmp_path):
    """Bad credentials are found by the command itself, before it forks its executor: one line, exit code 1."""
    import subprocess

    from tests.cluster import qcgpj_cmd
    from tests.redisproc import RedisServer
    with RedisServer(password="s3cret") as server:
        bad = server.url.replace("s3cret", "wrong")
        res = subprocess.run(qcgpj_cmd("worker", "--redis-url", bad, "--cores", "1", "--connect-wait", "0"),
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert "refused the credentials" in res.stderr.strip().splitlines()[-1]
        assert Manager(server.url).store.executors(departed=True) == {}


def test_a_signal_to_every_process_of_the_worker_still_hands_back(redis_url, tmp_path):
    """Slurm (scancel, the time limit) and systemd signal every process of the worker: the executor gets SIGTERM
    directly and again from the command, which passes it on. A second SIGTERM only ends a wait for a Redis that
    is away; it made the executor skip its hand-back with Redis there, so it left as if killed: ALIVE until its
    heartbeat expired, then DEAD, and the task it had claimed ahead (never started) charged an attempt."""
    from tests.test_outage import wait_for_log
    from tests.test_kill import until
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        w = c.worker(1, "--prefetch", "1", *FAST)
        m = c.manager()
        c.wait_executors(m)
        m.submit(gated_jobs(tmp_path, "t").add(name="u", exec="/bin/true"))
        read_pid(tmp_path / "t.fifo")
        (eid, _), = m.store.executors().items()
        until(lambda: m.store.executors()[eid]["running"] == "2", 30, "u claimed ahead")
        victim = kill_executor(m, w, signal.SIGTERM)   # directly, as Slurm signals every process of the step...
        wait_for_log(tmp_path / "worker.log", "signal 15: stopping")
        w.send_signal(signal.SIGTERM)                  # ... and the command, which passes it on
        until(lambda: (tmp_path / "worker.log").read_text().count("signal 15: stopping") == 2, 30, "second stop")
        (tmp_path / "go").touch()
        assert w.wait(timeout=60) == 0, c.logs()
        assert m.store.executors(departed=True)[eid]["state"] == "LEFT", c.logs()
        assert m.status(["t"]) == {"t": "SUCCEED"}, c.logs()
        assert m.info("u")["attempts"] == 0 and m.status(["u"])["u"] in ("READY", "QUEUED"), m.info("u")
        assert victim != w.pid
    finally:
        (tmp_path / "go").touch()
        c.stop()


def test_a_worker_started_under_nohup_ignores_sighup(redis_url, tmp_path):
    """nohup (SIGHUP ignored) keeps a worker running when its terminal closes, as it did before the command was a
    supervisor: its handler, which passes SIGHUP on as a drain, replaced the ignored disposition, so `nohup
    qcgpj-worker &` drained and left when the terminal closed. The SIGHUP goes to the command's process group,
    as a shell sends it to its jobs; the SIGINT after it shows which signals reached the executor."""
    from tests.test_kill import until
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        with open(tmp_path / "worker.log", "ab") as log:
            w = subprocess.Popen(["nohup", *qcgpj_cmd("worker", "--redis-url", redis_url, "--cores", "1", "--wd",
                                                      str(tmp_path))],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=c.env,
                                 start_new_session=True)
        c.procs.append(w)
        m = c.manager()
        c.wait_executors(m)
        m.submit(gated_jobs(tmp_path, "t"))
        read_pid(tmp_path / "t.fifo")
        os.killpg(w.pid, signal.SIGHUP)   # the terminal closed: nothing to do
        os.killpg(w.pid, signal.SIGINT)   # then a Ctrl-C: a drain
        until(lambda: "signal 2: stopping" in (tmp_path / "worker.log").read_text(), 30, "the drain")
        (tmp_path / "go").touch()
        assert w.wait(timeout=60) == 0, c.logs()
        assert m.status(["t"]) == {"t": "SUCCEED"}
        assert "signal 15: stopping" not in (tmp_path / "worker.log").read_text(), c.logs()
    finally:
        (tmp_path / "go").touch()
        c.stop()
