"""Python calls as rq jobs: how a call is described (``rq.job.Job``), checked, and how its outcome is written and
read back through rq's own result API (``rq.results.Result``), so that rq's tools can read both.

Keys are rq's, outside the qcgpj namespace: ``rq:job:<id>`` (hash: ``data`` = the serializer's
``(function, None, args, kwargs)`` compressed by rq with zlib, ``status``, ``result_ttl``, ``meta``...) and
``rq:results:<id>`` (stream of rq ``Result`` entries). qcgpj's ids are ``qcgpj-<16 hex>-<n>`` (a map's chunks
``qcgpj-<16 hex>-<n>-<chunk>``), so ``redis-cli --scan --pattern 'rq:job:qcgpj-*'`` finds them.

rq needs a client that returns bytes; qcgpj's return str: :func:`bytes_client` opens a second client on the
same connection settings (and the same fakeredis server in local mode). The executor's own client is registered
by namespace (:func:`attach_client`), so the ``function`` worker writes results the way the executor reaches Redis.
"""
from __future__ import annotations

import base64
import builtins
import importlib
import json
import pickle
import threading
import types
import weakref
from typing import Any, Iterable

import redis
from redis.sentinel import SentinelConnectionPool

from .workers.fnproc import FUTURE_KEY, resolve  # noqa: F401 - FUTURE_KEY is re-exported

from .errors import QcgpjError
from .topology import is_cluster
from .keys import rq_job, rq_results

SERIALIZERS = ("json", "cloudpickle")
_clients: dict[str, list[tuple[weakref.ref, redis.Redis]]] = {}
_lock = threading.Lock()


class FunctionError(QcgpjError):
    """A function job failed without an exception of its own that could be rebuilt here (its process died, it
    was killed at its walltime, or its exception type cannot be imported); ``remote_traceback`` has the text."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class SerializationError(QcgpjError):
    """A function or an argument cannot be stored with the chosen serializer."""


class DependencyFailed(QcgpjError):
    """The call was not run because a job it depends on did not succeed (OMITTED)."""


# ---------------------------------------------------------------------- serializers and connections
class CloudpickleSerializer:
    """Opt-in: closures and arbitrary objects. Unpickling runs code: only for a Redis whose writers you trust."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        try:
            import cloudpickle
        except ImportError:
            raise SerializationError("serializer='cloudpickle' needs cloudpickle: pip install 'qcgpj[pickle]'") \
                from None
        return cloudpickle.dumps(obj)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


def serializer_for(name: str) -> Any:
    if name == "json":
        from rq.serializers import JSONSerializer
        return JSONSerializer
    if name == "cloudpickle":
        return CloudpickleSerializer
    raise SerializationError(f"unknown serializer '{name}' (known: {', '.join(SERIALIZERS)})")


class RawSerializer:
    """Writes bytes already in the job's serializer as they are (the warm process serialized the value)."""

    @staticmethod
    def dumps(obj: bytes) -> bytes:
        return obj

    @staticmethod
    def loads(data: bytes) -> bytes:
        return data


def bytes_client(client: redis.Redis) -> redis.Redis:
    """A client on ``client``'s connection settings that returns bytes, as rq needs."""
    if is_cluster(client):   # rq's keys are outside the namespace's hash tag, on any shard
        raise QcgpjError("Python function jobs (qcgpj.Executor) are not supported on a Redis Cluster: use a plain "
                         "or Sentinel Redis URL for them")
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    if isinstance(pool, SentinelConnectionPool):   # the same master, found through the same sentinels
        kwargs.pop("connection_pool", None)
        return redis.Redis(connection_pool=SentinelConnectionPool(
            pool.service_name, pool.sentinel_manager, is_master=True, connection_class=pool.connection_class,
            **kwargs))
    return redis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


def attach_client(namespace: str, client: redis.Redis) -> None:
    """Called by each executor: function tasks of ``namespace`` write their results through this connection.
    Held weakly: an executor that is gone (local mode, one after another in a process) drops out. None on a
    cluster, where no function task can be submitted."""
    if is_cluster(client):
        return
    with _lock:
        live = [(ref, b) for ref, b in _clients.get(namespace, []) if ref() not in (None, client)]
        _clients[namespace] = [*live, (weakref.ref(client), bytes_client(client))]


def detach_client(namespace: str, client: redis.Redis) -> None:
    """Called by an executor that stops: its Redis may go with it (local mode's private server)."""
    with _lock:
        _clients[namespace] = [(ref, b) for ref, b in _clients.get(namespace, []) if ref() not in (None, client)]


def client_for(namespace: str, rqid: str) -> redis.Redis:
    """The connection of the executor whose Redis holds this call: the only one of its namespace in this
    process, or (two local-mode executors of one namespace at once) the one where the rq job exists."""
    with _lock:
        live = _clients[namespace] = [(ref, b) for ref, b in _clients.get(namespace, []) if ref() is not None]
    if not live:
        raise QcgpjError(f"no executor of namespace '{namespace}' runs in this process")
    if len(live) == 1:
        return live[0][1]
    return next((b for _ref, b in live if b.exists(rq_job(rqid))), live[-1][1])


# ---------------------------------------------------------------------- describing a call
def function_name(fn: Any, serializer: str) -> str | None:
    """The importable name of ``fn`` (JSON must name it), or None when cloudpickle sends it by value."""
    why = _unnamed_because(fn)
    if why is None:
        return f"{fn.__module__}.{fn.__qualname__}"
    if serializer == "json":
        qual = getattr(fn, "__qualname__", None)
        raise SerializationError(f"function {qual or fn!r} cannot be found by name in another process ({why}): "
                                 "pass a function defined at the top level of a module, or use "
                                 "serializer='cloudpickle'")
    return None


def _unnamed_because(fn: Any) -> str | None:
    """Why ``module.qualname`` does not lead another process to ``fn``, in the user's terms; None when it does."""
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    owner = getattr(fn, "__self__", None)
    if not callable(fn):
        return f"it is {_a(type(fn).__name__)} object, not callable"
    if owner is not None and not isinstance(owner, types.ModuleType):   # a builtin function's __self__: its module
        return f"it is a method bound to {_a(type(owner).__name__)} object"
    if qual is None:
        return f"it is {_a(type(fn).__name__)} object, not a function"
    if "<lambda>" in qual:
        return "it is a lambda"
    if "<locals>" in qual:
        return "it is defined inside a function (a closure)"
    if module == "__main__":
        return "it is defined in __main__ (the script)"
    objclass = getattr(fn, "__objclass__", None)
    if module is None and objclass is not None:
        return f"it is a method of the builtin type {objclass.__name__}"
    if module is None:
        return "it does not say which module it is in"
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        return f"its module '{module}' cannot be imported: {exc}"
    try:
        for attr in qual.split("."):
            obj = getattr(obj, attr)
    except AttributeError:
        return f"'{module}.{qual}' does not exist"
    return None if obj is fn else f"'{module}.{qual}' is another object"


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def check_json(name: str, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    """A clear error naming the first argument JSON cannot carry (rq's own error would only say 'not JSON')."""
    for i, a in enumerate(args):
        _check_one(name, f"argument {i}", a)
    for k, v in kwargs.items():
        _check_one(name, f"keyword argument '{k}'", v)


def _check_one(name: str, where: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"call {name}: {where} ({type(value).__name__}) cannot be stored as JSON: {exc}; "
                                 "pass JSON types (str, int, float, bool, None, list, dict) or use "
                                 "serializer='cloudpickle'") from None


def starmap(fn: Any, arglists: list[list[Any]]) -> list[Any]:
    """The function of a map chunk: ``fn`` (a name under JSON, the function under cloudpickle) over many calls."""
    if isinstance(fn, str):
        fn = resolve(fn)
    return [fn(*a) for a in arglists]


def apply(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The function of a cloudpickle job whose function travels by value."""
    return fn(*args, **kwargs)


# ---------------------------------------------------------------------- outcomes, through rq's API
def _job(conn: redis.Redis, rqid: str, serializer: str) -> Any:
    from rq.job import Job
    return Job(rqid, connection=conn, serializer=serializer_for(serializer))


def write_success(pipe: Any, conn: redis.Redis, rqid: str, serializer: str, raw: bytes, ttl: int) -> None:
    from rq.job import JobStatus
    from rq.results import Result
    job = _job(conn, rqid, serializer)
    job.set_status(JobStatus.FINISHED, pipeline=pipe)
    Result(rqid, Result.Type.SUCCESSFUL, conn, return_value=raw, serializer=RawSerializer).save(ttl, pipeline=pipe)
    _expire(pipe, job.key, ttl)


def write_failure(pipe: Any, conn: redis.Redis, rqid: str, serializer: str, text: str, ttl: int,
                  exc_type: str = "", message: str = "", canceled: bool = False, args: bytes | None = None) -> None:
    """``args``: the exception's ``[arguments, attributes]`` in the job's serializer (see fnproc._exc_args); kept
    in ``meta`` as ``exc_args`` (JSON: as JSON values; cloudpickle: the pickle, never loaded here)."""
    from rq.job import JobStatus
    from rq.results import Result
    job = _job(conn, rqid, serializer)
    job.set_status(JobStatus.CANCELED if canceled else JobStatus.FAILED, pipeline=pipe)
    if exc_type:   # rq keeps only the text; the type and arguments let the client raise the same exception
        meta: dict[str, Any] = {"exc_type": exc_type, "exc_message": message}
        if args is not None:
            meta["exc_args"] = json.loads(args) if serializer == "json" else args
        pipe.hset(job.key, "meta", job.serializer.dumps(meta))
    Result.create_failure(job, ttl, exc_string=text, pipeline=pipe)
    _expire(pipe, job.key, ttl)


def _expire(pipe: Any, key: str, ttl: int) -> None:
    """The job hash lives as long as its result, as rq's worker makes it (``Job.cleanup``): Job.save gives it no
    TTL, so without this every call's ``rq:job`` key stayed for ever. A negative TTL keeps it (rq's meaning)."""
    if ttl > 0:
        pipe.expire(key, ttl)


def read_outcomes(conn: redis.Redis, ids: list[str], serializers: list[str]) -> list[tuple[str, Any]]:
    """``("ok", value)`` / ``("error", exception)`` / ``("none", None)`` (no result written) per id."""
    from rq.results import Result
    pipe = conn.pipeline(transaction=False)
    for rqid in ids:
        pipe.xrevrange(rq_results(rqid), count=1)
        pipe.hget(rq_job(rqid), "meta")
    raw = pipe.execute()
    out = []
    for i, (rqid, ser) in enumerate(zip(ids, serializers)):
        entries, meta = raw[2 * i], raw[2 * i + 1]
        if not entries:
            out.append(("none", None))
            continue
        res = Result.restore(rqid, entries[0][0].decode(), entries[0][1], connection=conn,
                             serializer=serializer_for(ser))
        if res.type == Result.Type.SUCCESSFUL:
            out.append(("ok", res.return_value))
        else:
            info = serializer_for(ser).loads(meta) if meta else {}
            out.append(("error", rebuild(info.get("exc_type", ""), info.get("exc_message", ""),
                                         res.exc_string or "", _exc_args(info.get("exc_args"), ser))))
    return out


def _exc_args(stored: Any, serializer: str) -> tuple[list, dict | None] | None:
    """``[arguments, attributes]`` of a failed call's exception as ``write_failure`` kept them, or None."""
    try:
        if isinstance(stored, bytes):   # cloudpickle: unpickled here, where the exception is raised
            stored = serializer_for(serializer).loads(stored)
        args, state = stored
        return list(args), state if isinstance(state, dict) else None
    except Exception:   # none kept (an older worker), or its classes are not importable here
        return None


def rebuild(exc_type: str, message: str, text: str, args: tuple[list, dict | None] | None = None) -> BaseException:
    """The function's own exception, built as pickle would from its arguments and attributes (else from its
    message), where its class can be imported here, else FunctionError; the remote traceback is attached as
    ``remote_traceback`` and as a note."""
    exc: BaseException | None = None
    module, _, qual = exc_type.rpartition(".")
    try:
        obj: Any = builtins if module == "builtins" else importlib.import_module(module)
        for attr in qual.split("."):
            obj = getattr(obj, attr)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            exc = _construct(obj, message, args)
    except Exception:   # not importable here, or its constructor wants other arguments
        exc = None
    if exc is None:
        exc = FunctionError(f"{exc_type or 'the call failed'}: {message}" if message or exc_type
                            else text.strip().splitlines()[-1] if text.strip() else "the call failed", text)
    exc.remote_traceback = text   # type: ignore[attr-defined]
    if text and hasattr(exc, "add_note"):
        exc.add_note("remote traceback:\n" + text.rstrip())
    return exc


def _construct(cls: type[BaseException], message: str, args: tuple[list, dict | None] | None) -> BaseException:
    if args is not None:
        try:
            exc = cls(*args[0])
            if args[1]:
                exc.__dict__.update(args[1])
            return exc
        except Exception:   # its constructor does not take back its own arguments: from the message, as before
            pass
    return cls(message)


def b64_result(entries: list) -> bytes | None:
    """The raw (serialized) return value of the newest rq result entry, for a dependent call's argument."""
    if not entries:
        return None
    value = entries[0][1].get(b"return_value")
    return base64.b64decode(value) if value is not None else None
