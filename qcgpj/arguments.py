"""The Python API's argument checks, in one place.

``@api(name=check, ...)`` on a public method checks (and normalises) the named arguments before the method runs,
so a wrong type or value from a caller is an :class:`ArgumentError` naming the method and argument, not a
TypeError from deep inside; and a refusal from Redis during the call (ACL, memory, a lost connection) becomes
one of qcgpj's errors, one line naming the cause. Each check takes the value and returns what the method gets.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import re
from collections.abc import Iterable
from typing import Any, Callable

import redis

from .connection import redis_error
from .errors import ArgumentError, FinishedError, UnknownJobError, clip
from .fieldcheck import MAX_ITERATION_DIGITS, NAME_RE, _show
from .keys import Keys

Check = Callable[[Any], Any]
TASK_RE = re.compile(NAME_RE.pattern + r"(?::(\d+))?")


def api(**checks: Check) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Check the arguments named in ``checks``; map Redis's errors to ours."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        where = fn.__qualname__.replace(".__init__", "")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise ArgumentError(f"{where}: {exc}") from None
            given = bound.arguments
            for name, check in checks.items():
                if name in given:
                    try:
                        given[name] = check(given[name])
                    except ArgumentError as exc:
                        raise ArgumentError(f"{where}: '{name}' {exc}") from None
            if getattr(given.get("self"), "_finished", False) and fn.__name__ != "submit":
                # a finished local Manager's store is gone: say so now, not after the client's connect retries
                raise FinishedError(f"{where}: this Manager is finished (its local store is gone with its services); "
                                    "ask before finish() or use a new Manager")
            try:
                return fn(*bound.args, **bound.kwargs)
            except redis.RedisError as exc:
                raise redis_error(exc) from exc
        return wrapper
    return decorate


# ---------------------------------------------------------------------- checks
def names(v: Any) -> list[str]:
    """A name, or an iterable of names (not a dict, whose keys would pass silently)."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, (bytes, dict)) or not isinstance(v, Iterable):
        raise ArgumentError(f"must be a job name or a list of names, got {_show(v)}")
    out = list(v)
    for x in out:
        if not isinstance(x, str):
            raise ArgumentError(f"must hold job names (strings), got {_show(x)}")
    return out


def some_names(v: Any) -> list[str]:
    out = names(v)
    if not out:
        raise ArgumentError("must name at least one job")
    return out


def optional_names(v: Any) -> list[str] | None:
    return None if v is None else names(v)


def task(v: Any) -> str:
    """``name`` or ``name:it``; a malformed one names no job of the queue."""
    if not isinstance(v, str):
        raise ArgumentError(f"must be a job name or 'name:iteration', got {_show(v)}")
    match = TASK_RE.fullmatch(v)
    if match is None:
        raise UnknownJobError(f"unknown job '{clip(v)}': expected a job name or 'name:iteration' (a whole number)")
    if match.group(1) is not None and len(match.group(1)) > MAX_ITERATION_DIGITS:
        raise UnknownJobError(f"unknown iteration '{clip(v)}'")
    return v


def job(v: Any) -> str:
    if not isinstance(v, str):
        raise ArgumentError(f"must be a job name, got {_show(v)}")
    return v


def timeout(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (isinstance(v, float) and math.isnan(v)):
        raise ArgumentError(f"must be a number of seconds >= 0 or None, got {_show(v)}")
    return min(v, float("inf")) if isinstance(v, float) else min(v, 10**12)   # an int past a float: no limit


def callback(v: Any) -> Callable | None:
    if v is not None and not callable(v):
        raise ArgumentError(f"must be a function or None, got {_show(v)}")
    return v


def flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ArgumentError(f"must be True or False, got {_show(v)}")
    return v


def positive(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ArgumentError(f"must be a whole number >= 1, got {_show(v)}")
    return v


def optional_positive(v: Any) -> int | None:
    return None if v is None else positive(v)


def optional_gpus(v: Any) -> int | None:
    """GPUs to declare: None (detect them) or a non-negative integer."""
    if v is None:
        return None
    if type(v) is not int or v < 0:
        raise ArgumentError(f"must be a non-negative integer or None, got {_show(v)}")
    return v


def optional_mem(v: Any) -> int | None:
    """Memory per node: None (detect it), MiB, or a string with a unit ('4G')."""
    from .gpus import parse_mem
    if v is None:
        return None
    try:
        return parse_mem(v)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None


def optional_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise ArgumentError(f"must be a string or None, got {_show(v)}")
    return v


def optional_path(v: Any) -> str | None:
    if v is not None and not isinstance(v, (str, os.PathLike)):
        raise ArgumentError(f"must be a path or None, got {_show(v)}")
    return None if v is None else os.fspath(v)


def namespace(v: Any) -> str:
    return Keys(v).namespace   # raises ArgumentError for a name that could reach other keys


def nodes(v: Any) -> str | None:
    from .resources import parse_nodes_option
    if v is None:
        return None
    if not isinstance(v, str):
        raise ArgumentError(f"must be a string like 'n1:4,n2:4' (or 'n1:4:2' with 2 GPUs), got {_show(v)}")
    try:
        names = [n.name for n in parse_nodes_option(v)]
    except ValueError as exc:
        raise ArgumentError(str(exc).removeprefix("--nodes: ")) from None
    if len(set(names)) < len(names):
        raise ArgumentError(f"names a node twice: {v!r}")
    return v


def client(v: Any) -> redis.Redis | None:
    if v is not None and not isinstance(v, redis.Redis):
        raise ArgumentError(f"must be a redis.Redis client or None, got {_show(v)}")
    return v


def jobs(v: Any) -> Any:
    """A Jobs, or an iterable of JobSpecs and job descriptions (each is checked by the job model)."""
    if isinstance(v, (str, bytes, dict)) or not isinstance(v, Iterable):
        raise ArgumentError(f"must be a Jobs or a list of job descriptions, got {_show(v)}")
    return v
