"""Real qcgpj services as separate processes, for end-to-end tests against a real redis-server."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from qcgpj import Manager
from qcgpj.bench import stop_processes
from qcgpj.store import FINAL_STATES

REPO = Path(__file__).resolve().parent.parent


def qcgpj_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "qcgpj", *args]


def credit(m: Manager, timeout: float = 30) -> dict[str, tuple[int, int]]:
    """Each live executor's placement credit and what it should be when it holds no work (its cores plus its
    look-ahead), once every job is final and the executors have reported everything; {} while jobs are open.
    A core of credit lost is a core that never gets work again."""
    if not all(s in FINAL_STATES for s in m.list().values()):
        return {}
    deadline = time.monotonic() + timeout
    last = m.store.last_event_id()
    while any(e["running"] != "0" or m.client.llen(m.store.keys.ready(eid)) for eid, e in m.store.executors().items()):
        assert time.monotonic() < deadline, "executors never reported their last tasks"
        last = m.store.wait_event(last, 0.2)
    return {eid: (int(e["free"]), int(e["total"]) + int(e["prefetch"])) for eid, e in m.store.executors().items()}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        return None


def executor_pids(m: Manager, worker: subprocess.Popen) -> list[int]:
    """The executor processes of a worker command, by the pids they registered: its children (the command
    supervises them), or the command itself where it runs its executor in-process (not on Linux)."""
    pids = [int(e["pid"]) for e in m.store.executors().values() if e.get("state") == "ALIVE"]
    return [pid for pid in pids if pid == worker.pid or _ppid(pid) == worker.pid]


def kill_executor(m: Manager, worker: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    """Signal a worker's only executor process (SIGKILL: an executor's abrupt death; the command, its supervisor,
    then ends the tasks it left); returns its pid."""
    pids = executor_pids(m, worker)
    assert len(pids) == 1, f"worker {worker.pid}: executor processes {pids}"
    os.kill(pids[0], sig)
    return pids[0]


def _kill_children(proc: subprocess.Popen) -> None:
    """SIGKILL a command's children and wait a little for the command to exit on its own."""
    try:
        children = [int(c) for t in os.listdir(f"/proc/{proc.pid}/task")
                    for c in open(f"/proc/{proc.pid}/task/{t}/children").read().split()]
    except OSError:
        return
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass


class Cluster:
    """An InputQueue and executors, each its own process, on one Redis URL and namespace."""

    def __init__(self, url: str, workdir: Path, namespace: str = "default") -> None:
        self.url, self.workdir, self.namespace = url, workdir, namespace
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        p = subprocess.Popen(qcgpj_cmd(*args), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                             env=self.env, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def inputqueue(self, *extra: str) -> subprocess.Popen:
        return self._spawn("inputqueue", ["inputqueue", "--redis-url", self.url, "-n", self.namespace, *extra])

    def allocator(self, *extra: str, name: str = "alloc") -> subprocess.Popen:
        return self._spawn(name, ["alloc", "serve", "--redis-url", self.url, "-n", self.namespace, *extra])

    def worker(self, cores: int = 2, *extra: str, name: str = "worker") -> subprocess.Popen:
        return self._spawn(name, ["worker", "--redis-url", self.url, "-n", self.namespace,
                                  "--cores", str(cores), "--wd", str(self.workdir), *extra])

    def manager(self) -> Manager:
        return Manager(self.url, namespace=self.namespace)

    def serving(self, cores: int = 2, *worker_args: str) -> Manager:
        """An InputQueue and one worker, registered: the usual queue, and a manager on it."""
        self.inputqueue()
        self.worker(cores, *worker_args)
        m = self.manager()
        self.wait_executors(m)
        return m

    def wait_executors(self, m: Manager, n: int = 1, timeout: float = 30) -> None:
        """Wait, on the queue's events, until n executors are ALIVE."""
        deadline = time.monotonic() + timeout
        last = "0-0"
        while sum(e.get("state") == "ALIVE" for e in m.store.executors().values()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} executor(s) did not register\n{self.logs()}")
            last = m.store.wait_event(last, 0.5)

    def stop(self) -> None:
        """SIGTERM to each service (a drain). A worker still there after the grace (its tasks never end) has its
        executors killed first, so that the command, their supervisor, ends their tasks and exits; then SIGKILL
        to what is left. Nothing the test started is left running."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_children(p)
                stop_processes([p], grace=0)

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(self.workdir.glob("*.log")))


def process_ended(pid: int, timeout: float = 60) -> bool:
    """Whether a process (not our child) ended within the timeout, woken by its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
