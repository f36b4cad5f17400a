"""Redis beyond one server: a Sentinel-managed master (fail-over) and a Redis Cluster (namespaces over shards).

URL forms (the query takes redis-py's options as for a plain URL, and qcgpj's own, removed before redis-py sees
the rest)::

    redis+sentinel://[user:pass@]host1:26379,host2:26379/<master name>[/<db>][?sentinel_password=...]
    rediss+sentinel://...                    (TLS to the sentinels and to the master)
    redis+cluster://[user:pass@]host:port,host:port[/0]
    rediss+cluster://...

The credentials before ``@`` are the master's (its ``requirepass`` or ACL user); the sentinels' own, when they
have one (``requirepass`` in sentinel.conf), go in ``sentinel_username`` / ``sentinel_password``.

Any URL (plain ones too) may ask that writes that matter be acknowledged by replicas: ``wait=N`` replicas within
``wait_timeout=MS`` (default 1000), applied to submits and to executors' reports (see README, "Running with
Sentinel or Cluster").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection, SSLConnection
from redis.sentinel import Sentinel, SentinelManagedConnection

from .errors import ConnectionError

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
OWN_PARAMS = ("wait", "wait_timeout", "sentinel_username", "sentinel_password")
DEFAULT_WAIT_TIMEOUT_MS = 1000
SENTINEL_PORT = 26379
# The attribute a client carries its replica acknowledgement in (set by connect, read by the store).
_WAIT_ATTR = "_qcgpj_replica_wait"


@dataclass(frozen=True)
class ReplicaWait:
    """WAIT after a write that matters: ``replicas`` must acknowledge within ``timeout_ms``."""

    replicas: int
    timeout_ms: int


def split_own(url: str) -> tuple[str, dict[str, str]]:
    """The URL without qcgpj's own query parameters, and those parameters (values checked later)."""
    base, _, query = url.partition("?")   # not urlunsplit: it would write unix:///x as unix:/x
    pairs = parse_qsl(query, keep_blank_values=True)
    own = {k: v for k, v in pairs if k in OWN_PARAMS}
    if not own:
        return url, own
    rest = urlencode([(k, v) for k, v in pairs if k not in OWN_PARAMS])
    return base + (f"?{rest}" if rest else ""), own


def replica_wait_of(own: dict[str, str], safe: str) -> ReplicaWait | None:
    """The ``wait`` / ``wait_timeout`` parameters, or a one-line error naming the bad one."""
    if "wait" not in own:
        if "wait_timeout" in own:
            raise ConnectionError(f"bad Redis URL '{safe}': wait_timeout needs wait=<replicas>")
        return None
    try:
        n = int(own["wait"])
        timeout = int(own.get("wait_timeout", DEFAULT_WAIT_TIMEOUT_MS))
    except ValueError:
        raise ConnectionError(f"bad Redis URL '{safe}': wait and wait_timeout must be whole numbers") from None
    if n < 0 or timeout <= 0:
        raise ConnectionError(f"bad Redis URL '{safe}': wait must be >= 0 and wait_timeout > 0 (milliseconds)")
    return ReplicaWait(n, timeout) if n else None


def set_replica_wait(client: Any, wait: ReplicaWait | None) -> Any:
    setattr(client, _WAIT_ATTR, wait)
    return client


def replica_wait(client: Any) -> ReplicaWait | None:
    """The acknowledgement the client's URL asked for, if any."""
    return getattr(client, _WAIT_ATTR, None)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def node_client(client: Any, key: str) -> redis.Redis:
    """The plain client of the server that holds ``key``: the client itself, except on a cluster, where the
    node-wide commands (INFO, CONFIG GET, WAIT, SCAN) must go to the namespace's shard, not to every node."""
    if not is_cluster(client):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def _hosts(netloc: str, safe: str, default_port: int) -> tuple[str, list[tuple[str, int]]]:
    """The userinfo and the comma-separated host:port list of a multi-host URL."""
    userinfo, _, hostlist = netloc.rpartition("@")
    hosts = []
    for item in hostlist.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or host.endswith(":"):   # no port, or a bare IPv6 address
            host, port = item.strip(), ""
        host = host.strip("[]")
        try:
            hosts.append((host, int(port) if port else default_port))
        except ValueError:
            raise ConnectionError(f"bad Redis URL '{safe}': bad port in '{item}'") from None
        if not host:
            raise ConnectionError(f"bad Redis URL '{safe}': an empty host name")
    return userinfo, hosts


def _options(userinfo: str, query: str, tls: bool, safe: str) -> dict[str, Any]:
    """redis-py's connection options of a plain URL with these credentials and query (one parser for all forms)."""
    auth = f"{userinfo}@" if userinfo else ""
    try:
        kw = redis.connection.parse_url(f"{'rediss' if tls else 'redis'}://{auth}localhost/0"
                                        + (f"?{query}" if query else ""))
    except ValueError as exc:
        raise ConnectionError(f"bad Redis URL '{safe}': {exc}") from None
    for k in ("host", "port", "db", "connection_class"):
        kw.pop(k, None)
    if tls:
        kw["ssl"] = True
    return kw


class FollowingConnection(SentinelManagedConnection):
    """A connection that asks the sentinels for the master at every reconnect. redis-py 8 reconnects a dropped
    connection (its retries, a pipeline) through ``connect_check_health``, which skips the sentinel lookup of
    ``SentinelManagedConnection.connect``: after a fail-over it went on knocking at the dead master's address."""

    def connect_to(self, address: tuple[str, int]) -> None:
        self.host, self.port = address
        Connection.connect_check_health(self, check_health=self.connection_pool.check_connection,
                                        retry_socket_connect=False)

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        self.connect()


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    pass


def sentinel_client(url: str, own: dict[str, str], safe: str, **client_kw: Any) -> redis.Redis:
    """The master of a Sentinel-managed service: every new connection asks the sentinels where the master is, so
    the client follows a fail-over by itself (a demoted master's READONLY closes the connection)."""
    parts = urlsplit(url)
    userinfo, hosts = _hosts(parts.netloc, safe, SENTINEL_PORT)
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConnectionError(f"bad Redis URL '{safe}': the path must be /<master name>[/<db>], "
                              "e.g. redis+sentinel://host:26379/mymaster/0")
    kw = _options(userinfo, parts.query, parts.scheme.startswith("rediss"), safe)
    sentinel_kw = {k: v for k, v in kw.items() if k.startswith(("socket_", "ssl"))}
    if "sentinel_password" in own:
        sentinel_kw["password"] = unquote(own["sentinel_password"])
    if "sentinel_username" in own:
        sentinel_kw["username"] = unquote(own["sentinel_username"])
    sentinel_kw.setdefault("socket_connect_timeout", client_kw.get("socket_connect_timeout", 5))
    sentinel_kw.setdefault("socket_timeout", 5)
    kw["connection_class"] = FollowingSSLConnection if kw.pop("ssl", False) else FollowingConnection
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kw, **kw)
    return sentinel.master_for(path[0], db=int(path[1]) if len(path) == 2 else 0, **client_kw)


def cluster_client(url: str, safe: str, **client_kw: Any) -> RedisCluster:
    """A Redis Cluster client: each namespace's keys share a hash tag, so its scripts, pipelines and blocking moves
    go to the one shard that holds its slot."""
    parts = urlsplit(url)
    userinfo, hosts = _hosts(parts.netloc, safe, 6379)
    if parts.path.strip("/") not in ("", "0"):
        raise ConnectionError(f"bad Redis URL '{safe}': a Redis Cluster has only database 0")
    kw = _options(userinfo, parts.query, parts.scheme.startswith("rediss"), safe)
    retry = client_kw.pop("retry", None)
    client_kw.pop("retry_on_error", None)
    client_kw.pop("health_check_interval", None)
    try:
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts], retry=retry,
                            **kw, **client_kw)
    except redis.exceptions.RedisClusterException as exc:
        raise ConnectionError(f"cannot reach the Redis Cluster at {safe}: {' '.join(str(exc).split())}") from None
