"""Local mode: no Redis server at all. fakeredis stands in for it inside this process, and one InputQueue and
one Executor run in threads, so a new user can try qcgpj with nothing but ``pip install``."""
from __future__ import annotations

import logging
import threading

import fakeredis
import redis

from .errors import QcgpjError
from .executor import Executor
from .inputqueue import InputQueue
from .resources import discover

log = logging.getLogger(__name__)


class LocalServices:
    """The InputQueue and an Executor over an in-process fake Redis."""

    def __init__(self, namespace: str = "default", cores: int | None = None, nodes: str | None = None,
                 root_wd: str | None = None, max_attempts: int = 3) -> None:
        self.server = fakeredis.FakeServer()
        self.client: redis.Redis = self._client()
        node_list = discover(cores=cores, nodes=nodes, environ={})
        self.total_cores = sum(len(n.cores) for n in node_list)
        self.total_nodes = len(node_list)
        self.max_per_node = max(len(n.cores) for n in node_list)
        self.inputqueue = InputQueue(self._client(), namespace, max_attempts=max_attempts, lease_ttl=30.0)
        self.executor = Executor(self._client(), node_list, namespace, root_wd=root_wd, ttl=3600)
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def _client(self) -> redis.Redis:
        return fakeredis.FakeRedis(server=self.server, decode_responses=True)

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
