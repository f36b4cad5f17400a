"""Opening Redis: a clear error for a bad URL, an unreachable server or a wrong password, the settings check, and
Redis's refusals (ACL, memory, replica, loading) as qcgpj's own errors, one line each."""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from . import topology
from .errors import ConnectionError, QcgpjError, RedisError, RedisMemoryError, RedisPermissionError

log = logging.getLogger(__name__)

ENV_URL = "QCGPJ_REDIS_URL"
SCHEMES = ("redis", "rediss", "unix")
DB_PATH = re.compile(r"/?\d*")   # redis-py ignores a path that is not a number: say so instead
# redis-py reads ?password= as it reads user:PASSWORD@ (and ssl_password=, a TLS key's passphrase)
SECRET_PARAM = re.compile(r"([?&](?:sentinel_|ssl_)?password=)[^&#]*")
USERINFO = re.compile(r"^([^:/]*://[^:@/]*:)[^@/]*@")
UNKNOWN_OPTION = re.compile(r"unexpected keyword argument '([^']*)'")
ACL_HINT = "see 'Minimal ACL' in the README"
_settings_checked: set[tuple] = set()


def child_env(url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a service process qcgpj starts (a worker, an InputQueue), with the URL in
    ``QCGPJ_REDIS_URL``: on its command line any password in it would show in ``ps`` to every user of the node,
    where a process's environment is readable by its owner only."""
    return {**(os.environ if base is None else base), ENV_URL: url}


def task_environ() -> dict[str, str]:
    """The environment tasks start from: this process's without ``QCGPJ_REDIS_URL``. A worker given its queue
    there would pass the queue's password on to every task, and tasks log, dump and pass on their environment;
    a job that needs the URL names it in its own ``env``."""
    return {k: v for k, v in os.environ.items() if k != ENV_URL}


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:   # unparsable ('redis://[::1/0'): mask whatever stands before an '@'
        return SECRET_PARAM.sub(r"\1***", USERINFO.sub(r"\1***@", url))
    if parts.password:
        url = url.replace(f":{parts.password}@", ":***@", 1)
    return SECRET_PARAM.sub(r"\1***", url)


# redis-py's own retries of a call whose connection was lost: a client's (about 15 s of them) ride out a restart
# or a fail-over unseen. A service's loops wait out an outage themselves, log it when it starts and when it ends,
# and must go on meanwhile (an executor reaping its tasks): they get a few (about 0.35 s), for a stale connection.
RETRIES, SERVICE_RETRIES = 20, 3


def connect(url: str, check: bool = True, wait: float = 0.0, retries: int = RETRIES) -> redis.Redis:
    """A client that reconnects with backoff: a Redis restart (or a Sentinel fail-over) is a pause, not a crash.

    ``wait``: seconds a service (worker, InputQueue) keeps trying a Redis that does not answer yet before it
    gives up with the one-line error: one started while Redis restarts, or by a batch job before Redis is up,
    must not be lost for that. A bad URL or refused credentials fail at once. Sentinel and Cluster URLs and the
    ``wait``/``wait_timeout`` parameters: see qcgpj.topology. ``retries``: see RETRIES."""
    if not isinstance(url, str):
        raise ConnectionError(f"a Redis URL must be a string, got {type(url).__name__} {url!r}")
    safe = safe_url(url)
    plain, own = topology.split_own(url)
    acks = topology.replica_wait_of(own, safe)
    try:
        parts = urlsplit(plain)
    except ValueError as exc:   # an unclosed '[' of an IPv6 address
        raise ConnectionError(f"bad Redis URL '{safe}': {exc}") from None
    if parts.scheme not in SCHEMES + topology.SENTINEL_SCHEMES + topology.CLUSTER_SCHEMES:
        raise ConnectionError(f"bad Redis URL '{safe}': it must start with redis://, rediss://, unix://, "
                              "redis+sentinel:// or redis+cluster:// (rediss+ for TLS)")
    if parts.scheme in SCHEMES and parts.scheme != "unix" and not DB_PATH.fullmatch(parts.path):
        raise ConnectionError(f"bad Redis URL '{safe}': the path must be a database number (/0)")
    if parts.scheme not in topology.SENTINEL_SCHEMES and {"sentinel_password", "sentinel_username"} & own.keys():
        raise ConnectionError(f"bad Redis URL '{safe}': sentinel_password is for redis+sentinel:// URLs")
    try:
        if check:   # first contact without retries: a wrong URL or a server that is down is said at once
            probe = _client(plain, own, safe, socket_connect_timeout=5, retry=Retry(ExponentialBackoff(), retries=0))
            _first_ping(probe, url, wait)
            probe.close()
        client = _client(plain, own, safe, socket_connect_timeout=5, health_check_interval=15,
                         retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries),
                         retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    except ValueError as exc:
        raise ConnectionError(f"bad Redis URL '{safe}': {exc}") from None
    except TypeError as exc:   # redis-py passes a query option it does not parse to the connection as a keyword
        unknown = UNKNOWN_OPTION.search(str(exc))
        if unknown is None:
            raise
        raise ConnectionError(f"bad Redis URL '{safe}': unknown option '{unknown.group(1)}'") from None
    return topology.set_replica_wait(client, acks)


def _client(url: str, own: dict[str, str], safe: str, **kw: Any) -> Any:
    """The client of a URL's form: a plain server, a Sentinel-managed master, or a cluster."""
    scheme = urlsplit(url).scheme
    if scheme in topology.SENTINEL_SCHEMES:
        return topology.sentinel_client(url, own, safe, decode_responses=True, **kw)
    if scheme in topology.CLUSTER_SCHEMES:
        return topology.cluster_client(url, safe, decode_responses=True, **kw)
    return redis.Redis.from_url(url, decode_responses=True, **kw)


def _first_ping(client: redis.Redis, url: str, wait: float) -> None:
    """Ping until Redis answers, for up to ``wait`` seconds (one log line, not one per try). Only a Redis that is
    not there yet (refused, timed out, loading its data) is waited for, decided on redis-py's exception types;
    refused credentials or a bad database fail at once."""
    deadline = time.monotonic() + wait
    delay, told = 0.1, False
    while True:
        try:
            client.ping()
            return
        except redis.AuthenticationError as exc:   # a ConnectionError to redis-py, but no wait mends it
            raise redis_error(exc, url) from None
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError) as exc:
            err = redis_error(exc, url) if isinstance(exc, redis.RedisError) else \
                ConnectionError(f"cannot reach Redis at {safe_url(url)}: {exc}")
            if time.monotonic() + delay > deadline:
                raise err from None
            if not told:
                log.warning("%s; waiting up to %.0f s for it", err, wait)
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        except redis.RedisError as exc:
            raise redis_error(exc, url) from None


def ping(client: redis.Redis, url: str) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        raise redis_error(exc, url) from None
    except OSError as exc:
        raise ConnectionError(f"cannot reach Redis at {safe_url(url)}: {exc}") from None


def redis_error(exc: redis.RedisError, url: str | None = None) -> QcgpjError:
    """Our error for one of Redis's, naming the cause in one line: these come from the user's set-up (ACL,
    maxmemory, a replica's URL, a wrong database), not from qcgpj, so they are said, not shown as tracebacks."""
    where = f"Redis at {safe_url(url)}" if url else "Redis"
    text = " ".join(str(exc).split())   # scripts' errors span lines
    if isinstance(exc, MasterNotFoundError):   # redis-py adds the repr of every sentinel's client (kilobytes)
        text = text.split(" : ", 1)[0]
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return ConnectionError(f"{where} refused the credentials: {text}")
    if isinstance(exc, redis.BusyLoadingError) or text.startswith("LOADING"):
        return RedisError(f"{where} is still loading its data; try again in a moment")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return ConnectionError(f"cannot reach {where}: {text}" if url else f"lost the connection to Redis: {text}")
    if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in text or "no permissions" in text \
            or "can't run this command" in text:
        return RedisPermissionError(f"{where} denied a command to this user (ACL): {text}; {ACL_HINT}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in text:
        return RedisMemoryError(f"{where} is out of memory (maxmemory reached) and refuses writes: free memory "
                                "or raise maxmemory")
    if isinstance(exc, redis.ReadOnlyError) or "READONLY" in text:
        return RedisError(f"{where} is a read-only replica: give the URL of its master")
    if "DB index is out of range" in text:
        return ConnectionError(f"{where}: no such database (DB index is out of range)")
    return RedisError(f"{where} refused a command: {text}")


def url_from_env(url: str | None) -> str | None:
    return url or os.environ.get(ENV_URL) or None


def check_settings(client: redis.Redis) -> list[str]:
    """Warnings for settings that can lose jobs: no persistence, or eviction of our keys; once per server and
    process. Where CONFIG GET is not allowed (an ACL, a managed Redis) a note says the check was skipped."""
    nodes = ([client.get_redis_connection(n) for n in client.get_primaries()] if topology.is_cluster(client)
             else [client])   # on a cluster every shard may hold a namespace: each master is checked
    warnings: list[str] = []
    for node in nodes:
        warnings += [w for w in _node_settings(node) if w not in warnings]
    for w in warnings:
        log.warning(w)
    return warnings


def _node_settings(client: redis.Redis) -> list[str]:
    pool = client.connection_pool
    kw = pool.connection_kwargs
    server = (getattr(pool, "service_name", kw.get("host")), kw.get("port"), kw.get("path"), kw.get("db"))
    if server in _settings_checked:
        return []
    _settings_checked.add(server)
    warnings = []
    try:
        cfg = client.config_get("appendonly")
        cfg.update(client.config_get("maxmemory-policy"))
        cfg.update(client.config_get("save"))
    except (redis.ResponseError, redis.ConnectionError, redis.TimeoutError) as exc:   # denied, or Redis went away
        warnings.append(f"could not check Redis's persistence and eviction settings ({' '.join(str(exc).split())}); "
                        "make sure of 'appendonly yes' and 'maxmemory-policy noeviction'")   # (a service then waits)
        return warnings
    if cfg.get("appendonly") != "yes" and not cfg.get("save"):
        warnings.append("Redis keeps nothing on disk (appendonly no, no save): a Redis restart loses the queue; "
                        "set 'appendonly yes'")
    policy = cfg.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is '{policy}': Redis may evict jobs; set 'noeviction'")
    return warnings
