"""Redis topologies for tests, on loopback, in temporary directories: a Sentinel-managed master with a replica and
three sentinels, and a three-master Redis Cluster. Also the full-size runs the tests shorten::

    python -m tests.topology sentinel --tasks 2000 [--no-wait]
    python -m tests.topology cluster --tasks 300
    python -m tests.topology waitcost --reports 20000     # reports/s with and without WAIT
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis.cluster import key_slot

from qcgpj.keys import Keys
from tests.redisproc import REDIS_SERVER, RedisServer, RedisServerError, free_port

SERVICE = "mymaster"
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 2000


def wait_replica(master: RedisServer, n: int, timeout: float = 30) -> None:
    """Until ``master`` has ``n`` replicas online (in sync)."""
    deadline = time.monotonic() + timeout
    while True:
        info = master.client().info("replication")
        if sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
               and v.get("state") == "online") >= n:
            return
        if time.monotonic() > deadline:
            raise RedisServerError(f"no online replica of {master} after {timeout} s: {info}")
        time.sleep(0.05)


class SentinelServer(RedisServer):
    """One ``redis-server --sentinel`` watching ``master_port``, with a short down-after for quick fail-overs."""

    def __init__(self, master_port: int, quorum: int = 2) -> None:
        self.master_port, self.quorum = master_port, quorum
        super().__init__()

    def _args(self, port: int) -> list[str]:
        conf = self.dir / "sentinel.conf"   # sentinel rewrites its config file: one of its own
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} {self.quorum}\n"
                        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                        f"sentinel parallel-syncs {SERVICE} 1\n")
        return [REDIS_SERVER, str(conf), "--sentinel"]


class SentinelSetup:
    """A master, one replica and three sentinels; ``url`` is the qcgpj sentinel URL (``params`` appended)."""

    def __init__(self) -> None:
        self.servers: list[RedisServer] = []
        try:
            self.master = self._add(RedisServer())
            self.replica = self._add(RedisServer(config={"replicaof": f"127.0.0.1 {self.master.port}"}))
            wait_replica(self.master, 1)
            self.sentinels = [self._add(SentinelServer(self.master.port)) for _ in range(3)]
            self._wait_sentinels()
        except BaseException:
            self.close()
            raise

    def _add(self, server: RedisServer) -> RedisServer:
        self.servers.append(server)
        return server

    def url(self, params: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0" + (f"?{params}" if params else "")

    def master_port(self) -> int:
        """The master's port as the sentinels see it now."""
        return int(self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)[1])

    def _wait_sentinels(self, timeout: float = 30) -> None:
        """Until every sentinel knows the replica and the other sentinels (a fail-over needs both)."""
        deadline = time.monotonic() + timeout
        while True:
            ok = all(int(m["num-slaves"]) >= 1 and int(m["num-other-sentinels"]) >= 2
                     for m in (s.client().sentinel_master(SERVICE) for s in self.sentinels))
            if ok:
                return
            if time.monotonic() > deadline:
                raise RedisServerError("the sentinels did not find each other and the replica")
            time.sleep(0.1)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; returns it (its port stays reserved for a restart as a replica)."""
        port = self.master_port()
        victim = next(s for s in self.servers if s.port == port)
        victim.kill()
        return victim

    def wait_failover(self, old_port: int, timeout: float = 60) -> int:
        """Until the sentinels name a new master; its port."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                port = self.master_port()
                if port != old_port:
                    return port
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RedisServerError(f"no fail-over within {timeout} s")
            time.sleep(0.1)

    def rejoin(self, old: RedisServer) -> None:
        """Start the killed master again, as a replica of the new one (the sentinels would reconfigure it too)."""
        old.config["replicaof"] = f"127.0.0.1 {self.master_port()}"
        old.restart()
        deadline = time.monotonic() + 30
        while True:   # the master asked again each time: the sentinels may still move it (CI saw it move back)
            try:
                new = next(s for s in self.servers if s.port == self.master_port())
                wait_replica(new, 1, timeout=1)
                return
            except (RedisServerError, redis.RedisError):
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        for s in reversed(self.servers):
            s.close()


class ClusterSetup:
    """Three cluster-enabled redis-servers joined into one cluster (no replicas); ``url`` its qcgpj URL."""

    def __init__(self, masters: int = 3) -> None:
        self.servers: list[RedisServer] = []
        try:
            for _ in range(masters):
                self.servers.append(RedisServer(config={"cluster-enabled": "yes",
                                                        "cluster-config-file": "nodes.conf",
                                                        "cluster-node-timeout": "2000",
                                                        # the bus port is the port + 10000 unless given
                                                        "cluster-port": str(free_port())}))
            addrs = [f"127.0.0.1:{s.port}" for s in self.servers]
            subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0",
                            "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self._wait_ok()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers) + "/"

    def _wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in s.client().execute_command("CLUSTER", "INFO") for s in self.servers):
            if time.monotonic() > deadline:
                raise RedisServerError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def owner(self, namespace: str) -> int:
        """The port of the master that holds the namespace's slot."""
        slot = key_slot(Keys(namespace).jobs.encode())
        for lo, hi, master, *_ in self.servers[0].client().execute_command("CLUSTER", "SLOTS"):
            if lo <= slot <= hi:
                return int(master[1])
        raise RedisServerError(f"slot {slot} is not covered")

    def namespaces_on_each_shard(self, stem: str = "camp") -> list[str]:
        """One namespace per master (found by trying stem0, stem1, ...)."""
        found: dict[int, str] = {}
        i = 0
        while len(found) < len(self.servers):
            found.setdefault(self.owner(f"{stem}{i}"), f"{stem}{i}")
            i += 1
        return list(found.values())

    def close(self) -> None:
        for s in self.servers:
            s.close()


def main() -> None:
    from tests import topology_runs
    ap = argparse.ArgumentParser(prog="python -m tests.topology")
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sentinel", help="a run through a fail-over")
    s.add_argument("--tasks", type=int, default=2000)
    s.add_argument("--no-wait", action="store_true", help="without replica acknowledgement")
    c = sub.add_parser("cluster", help="three namespaces on three shards")
    c.add_argument("--tasks", type=int, default=300)
    w = sub.add_parser("waitcost", help="executor reports per second with and without WAIT 1")
    w.add_argument("--reports", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qcgpj-topology-") as tmp:
        if args.what == "sentinel":
            print(topology_runs.sentinel_run(Path(tmp), args.tasks, wait=not args.no_wait))
        elif args.what == "cluster":
            print(topology_runs.cluster_run(Path(tmp), args.tasks))
        else:
            print(topology_runs.wait_cost(args.reports))


if __name__ == "__main__":
    sys.exit(main())
