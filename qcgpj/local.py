"""Local mode: no shared Redis. The queue lives in a private store that dies with the run, and one InputQueue and
one Executor serve it from threads of this process.

The store is a private ``redis-server`` on a unix socket in a temporary directory (no TCP port, nothing kept on
disk) when that binary is on PATH: the engine then runs at its full speed, 1.6-1.7 times that of fakeredis, whose
Lua scripts run in this process's interpreter. fakeredis is the fallback that works after a bare ``pip install``.

The services are threads, not processes: with the private redis-server, an InputQueue and a worker started as
processes ran 2,000 /bin/true jobs in 2.0-2.5 s against 2.0 s for threads, and threads let the run kill its
tasks itself (a second Ctrl-C). fakeredis cannot be shared with another process at all.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import redis

from .connection import connect
from .errors import ArgumentError, QcgpjError, StoreError
from .executor import Executor
from .inputqueue import InputQueue
from .resources import discover
from .signals import die_with_parent

log = logging.getLogger(__name__)
STORES = ("fakeredis", "redis-server")
START_DEADLINE = 10.0   # seconds for the private redis-server to answer
SOCKET_MAX = 100        # bytes: a unix socket path longer than about 107 cannot be bound
IQ_PASS = 0.25         # seconds between deep placement passes: placement runs inline in the scripts anyway, and
                       # in fakeredis every pass wakes every blocked client of the process


class PrivateRedis:
    """A redis-server only this run can reach: a unix socket in a private directory (mode 0700), no TCP port, no
    persistence, removed at :meth:`stop`. It is in its own session, so a Ctrl-C at the terminal reaches only us,
    and it ends when we do even if we are killed (parent-death signal)."""

    def __init__(self, exe: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="qcgpj-")
        if len(self.dir) > SOCKET_MAX - 12:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = tempfile.mkdtemp(prefix="qcgpj-", dir="/tmp")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.url = f"unix://{self.socket}"
        self.proc = subprocess.Popen(
            [exe, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent())
        try:
            self.client = self._connect()
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> redis.Redis:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if os.path.exists(self.socket):
                try:
                    return connect(self.url)
                except QcgpjError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise StoreError(f"the private redis-server did not start: {self._log_tail()}")
            time.sleep(0.005)   # a starting child process: nothing to wait on but its socket file

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            return lines[-1] if lines else "no log"
        except OSError:
            return "no log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()   # nothing in it is worth keeping
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        """stop() for a signal handler: SIGKILL without waiting. The code the signal interrupted may be inside
        stop()'s own wait, holding the lock a second wait would block on for ever (a second Ctrl-C while a run
        finished hung so); the process is about to exit, and the server with it."""
        if self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:   # already gone (reaped by the interrupted wait)
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _fakeredis() -> Any:
    """fakeredis, imported only when used. It imports numpy if installed, only for vector sets, which qcgpj never
    uses: a fifth of a second of every fakeredis run here. numpy is hidden for that import alone (a numpy that is
    already imported stays; one imported later is the real one)."""
    if "fakeredis" in sys.modules or "numpy" in sys.modules:
        import fakeredis
        return fakeredis
    sys.modules["numpy"] = None   # type: ignore[assignment]  # import numpy -> ImportError: fakeredis skips it
    try:
        import fakeredis
    finally:
        del sys.modules["numpy"]
    return fakeredis


def choose_store(store: str | None) -> str:
    """``None`` or "auto": redis-server when on PATH, else fakeredis. A forced one that is missing is an error."""
    if store in (None, "auto"):
        return "redis-server" if shutil.which("redis-server") else "fakeredis"
    if store not in STORES:
        raise StoreError(f"unknown store '{store}': choose fakeredis or redis-server")
    if store == "redis-server" and not shutil.which("redis-server"):
        raise StoreError("store redis-server asked for, but no redis-server is on PATH "
                         "(install Redis, or use --store fakeredis)")
    return store


class LocalServices:
    """The InputQueue and an Executor over a private store."""

    def __init__(self, namespace: str = "default", cores: int | None = None, nodes: str | None = None,
                 root_wd: str | None = None, max_attempts: int = 3, store: str | None = None,
                 gpus: int | None = None, mem: int | None = None) -> None:
        try:
            # Not the Slurm variables (local mode owns this machine, not an allocation): GPUs from
            # CUDA_VISIBLE_DEVICES or nvidia-smi only
            visible = {k: v for k, v in os.environ.items() if k == "CUDA_VISIBLE_DEVICES"}
            node_list = discover(cores=cores, nodes=nodes, environ=visible, gpus=gpus, mem=mem)
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
        if root_wd is not None:   # made now, before a store is started, as the worker's --wd is
            try:
                os.makedirs(root_wd, exist_ok=True)
            except OSError as exc:
                raise ArgumentError(f"cannot make the working directory {root_wd}: {exc.strerror}") from None
        self.total_cores = sum(len(n.cores) for n in node_list)
        self.total_nodes = len(node_list)
        self.max_per_node = max(len(n.cores) for n in node_list)
        self.server: PrivateRedis | None = None
        self.store_kind = choose_store(store)
        if self.store_kind == "redis-server":
            try:
                self.server = PrivateRedis(shutil.which("redis-server") or "redis-server")
            except StoreError as exc:
                if store == "redis-server":
                    raise
                log.warning("%s; using fakeredis", exc)
                self.store_kind = "fakeredis"
        if self.server is None:
            self._fake = _fakeredis().FakeServer()
        self.client: redis.Redis = self._client()
        self.inputqueue = InputQueue(self._client(), namespace, max_attempts=max_attempts, lease_ttl=30.0,
                                     min_pass=IQ_PASS)
        self.executor = Executor(self._client(), node_list, namespace, root_wd=root_wd, ttl=3600)
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def _client(self) -> redis.Redis:
        if self.server is not None:
            return connect(self.server.url, check=False)
        return _fakeredis().FakeRedis(server=self._fake, decode_responses=True)

    def start(self) -> None:
        self.executor.start()
        for name, target in (("qcgpj-inputqueue", self.inputqueue.run), ("qcgpj-executor", self.executor.serve)):
            t = threading.Thread(target=self._guard(target), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, target):
        def run() -> None:
            try:
                target()
            except BaseException as exc:   # surfaced to the waiting client by check_alive()
                log.exception("local %s died", threading.current_thread().name)
                self._errors.append(exc)
        return run

    def check_alive(self) -> None:
        if self._errors:
            raise QcgpjError(f"local services failed: {self._errors[0]!r}")

    def stop(self) -> None:
        self.executor.stop()
        self.inputqueue.stop()
        for t in self._threads:
            t.join(timeout=30)
        if self.server is not None:
            self.server.stop()

    def abort(self) -> None:
        """At once, from a signal handler: SIGKILL to every running task's process group, and the store gone
        (the threads, about to end with the process, are not to log that it went)."""
        logging.disable(logging.CRITICAL)
        self.executor.kill_all()
        if self.server is not None:
            self.server.kill()
