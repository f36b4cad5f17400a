"""A private redis-server for tests: its own process, a free loopback port, a temporary directory.

Never uses or touches port 6379 (a system Redis may listen there).

    with RedisServer(aof=True) as server:
        r = server.client()
        r.set("k", "v")
        server.kill()            # SIGKILL
        server.restart()         # same port, same dir: the AOF brings "k" back
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER = os.environ.get("QCGPJ_REDIS_SERVER", "redis-server")
SYSTEM_PORT = 6379
START_DEADLINE = 10.0          # seconds for one start to answer PING
PORT_ATTEMPTS = 20             # fresh ports tried when another process takes the chosen one
RESTART_DEADLINE = 15.0        # seconds restart() keeps retrying while its port is briefly busy

_live: "weakref.WeakSet[RedisServer]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        try:
            server.kill()
        except Exception:
            pass


class RedisServerError(RuntimeError):
    """The redis-server did not come up."""


class _PortBusy(RedisServerError):
    """The port was taken by someone else between choosing it and binding it."""


def free_port() -> int:
    """A loopback port that was free a moment ago (bind to port 0, read it, close). Never 6379."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != SYSTEM_PORT:
            return port


class RedisServer:
    """One private redis-server process (started on construction unless start=False)."""

    def __init__(self, aof: bool = False, password: str | None = None, start: bool = True,
                 directory: str | os.PathLike | None = None, config: dict[str, str] | None = None) -> None:
        self.aof = aof
        self.password = password
        self.config = dict(config or {})   # more settings, e.g. {"maxmemory": "20mb"}
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._own_dir = directory is None
        self.dir = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="qcgpj-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "redis.log"
        _live.add(self)
        if start:
            self.start()

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        if self.port is None:
            raise RedisServerError("redis-server was never started")
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        """A redis.Redis on this server (decode_responses=True unless overridden)."""
        if self.port is None:
            raise RedisServerError("redis-server was never started")
        kwargs.setdefault("decode_responses", True)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "RedisServer":
        """Start on a fresh free port (retrying on a port race)."""
        if self.alive():
            return self
        last: Exception | None = None
        for _ in range(PORT_ATTEMPTS):
            try:
                self._launch(free_port())
                return self
            except _PortBusy as e:
                last = e
        raise RedisServerError(f"no free port after {PORT_ATTEMPTS} tries: {last}")

    def restart(self) -> "RedisServer":
        """Start again on the same port and dir (AOF data comes back). Stops a running one first."""
        if self.port is None:
            return self.start()
        if self.alive():
            self.stop()
        deadline = time.monotonic() + RESTART_DEADLINE
        while True:
            try:
                self._launch(self.port)
                return self
            except _PortBusy:
                if time.monotonic() > deadline:
                    raise RedisServerError(f"port {self.port} still busy after {RESTART_DEADLINE:.0f} s; "
                                           f"log tail:\n{self.log_tail()}") from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server and reap it (what a crash looks like)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """A clean stop: SHUTDOWN NOSAVE (the AOF, if on, is flushed), else SIGTERM, else SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.proc.wait()
            return
        try:
            c = self.client(socket_timeout=timeout, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
            try:
                c.execute_command("SHUTDOWN", "NOSAVE")   # the server closes the connection: an error here
            finally:
                c.close()
        except Exception:
            pass
        try:
            self.proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        """Stop the server and remove its directory (if this object made it)."""
        try:
            self.stop()
        finally:
            _live.discard(self)
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        if not self.alive():
            self.start() if self.port is None else self.restart()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<RedisServer 127.0.0.1:{self.port} {state} dir={self.dir}>"

    # ------------------------------------------------------------------ internals
    def _args(self, port: int) -> list[str]:
        args = [REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "yes" if self.aof else "no",
                "--appendfsync", "everysec",
                "--daemonize", "no",
                "--logfile", "",
                "--loglevel", "notice",
                # A replica's first sync starts at once (Redis 7 waits 5 s for more replicas to share it).
                "--repl-diskless-sync-delay", "0"]
        if self.password:
            args += ["--requirepass", self.password]
        for name, value in self.config.items():
            args += [f"--{name}", value]
        return args

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _launch(self, port: int) -> None:
        if port == SYSTEM_PORT:
            raise RedisServerError("refusing to use port 6379 (reserved for a system Redis)")
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting on port {port}\n".encode())
            log.flush()
            log_start = log.tell()
            try:
                self.proc = subprocess.Popen(self._args(port), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True)
            except FileNotFoundError:
                raise RedisServerError(f"{REDIS_SERVER!r} not found: install redis-server "
                                       "(apt-get install redis-server)") from None
        self.port = port
        deadline = time.monotonic() + START_DEADLINE
        # No retries inside redis-py: this loop is the retry, and it must see the process exit.
        c = redis.Redis(host="127.0.0.1", port=port, password=self.password, decode_responses=True,
                        socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            while True:
                try:
                    if c.ping():
                        # Make sure it is OUR process that answers, not another one on a raced port.
                        if int(c.info("server")["process_id"]) != self.proc.pid:
                            self.kill()
                            raise _PortBusy(f"port {port} answered by another redis-server")
                        return
                except redis.BusyLoadingError:
                    pass                     # loading the AOF: keep waiting
                except redis.AuthenticationError:
                    self.kill()
                    raise _PortBusy(f"port {port} answered by another redis-server (wrong password)")
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if self.proc.poll() is not None:
                    text = self.log_path.read_bytes()[log_start:].decode(errors="replace")
                    if "Address already in use" in text:
                        raise _PortBusy(f"port {port} is in use")
                    raise RedisServerError(f"redis-server exited with code {self.proc.returncode} "
                                           f"before answering PING; log tail:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisServerError(f"redis-server on port {port} did not answer PING within "
                                           f"{START_DEADLINE:.0f} s; log tail:\n{self.log_tail()}")
                time.sleep(0.05)
        finally:
            c.close()
