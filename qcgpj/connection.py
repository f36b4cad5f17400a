"""Opening Redis: a clear error for a bad URL, an unreachable server or a wrong password, and the settings check."""
from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .errors import ConnectionError

log = logging.getLogger(__name__)

ENV_URL = "QCGPJ_REDIS_URL"
SCHEMES = ("redis", "rediss", "unix")


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def connect(url: str, check: bool = True) -> redis.Redis:
    """A client that reconnects with backoff: a Redis restart is a pause, not a crash."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConnectionError(f"bad Redis URL '{safe_url(url)}': it must start with redis://, rediss:// or unix://")
    try:
        if check:   # first contact without retries: a wrong URL or a server that is down is said at once
            probe = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                         retry=Retry(ExponentialBackoff(), retries=0))
            ping(probe, url)
            probe.close()
        return redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=20),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    except ValueError as exc:
        raise ConnectionError(f"bad Redis URL '{safe_url(url)}': {exc}") from None


def ping(client: redis.Redis, url: str) -> None:
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ConnectionError(f"Redis at {safe_url(url)} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ConnectionError(f"Redis at {safe_url(url)} refused the credentials: {exc}") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ConnectionError(f"cannot reach Redis at {safe_url(url)}: {exc}") from None


def url_from_env(url: str | None) -> str | None:
    return url or os.environ.get(ENV_URL) or None


def check_settings(client: redis.Redis) -> list[str]:
    """Warnings for settings that can lose jobs: no persistence, or eviction of our keys."""
    warnings = []
    try:
        cfg = client.config_get("appendonly")
        cfg.update(client.config_get("maxmemory-policy"))
        cfg.update(client.config_get("save"))
    except redis.ResponseError:   # CONFIG may be disabled (managed Redis): nothing to say
        return warnings
    if cfg.get("appendonly") != "yes" and not cfg.get("save"):
        warnings.append("Redis keeps nothing on disk (appendonly no, no save): a Redis restart loses the queue; "
                        "set 'appendonly yes'")
    policy = cfg.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is '{policy}': Redis may evict jobs; set 'noeviction'")
    for w in warnings:
        log.warning(w)
    return warnings
