"""The warm process of the ``function`` model: it receives calls over a pipe, runs them one at a time and sends
back their outcome, keeping the modules it imported (the user's) loaded between calls.

It never talks to Redis: the executor reads the call and writes its result, so the same process serves a real
Redis and local mode's in-process one. Messages are length-prefixed pickles between the executor and its own
child (the call's arguments inside them are still in the job's serializer, JSON or cloudpickle).

Started as ``python -c "from <package>.fnproc import main; main()" RFD WFD``; it ends when the executor closes
its pipe, and is killed (with its whole session) to cancel a call or end it at its walltime.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import resource
import struct
import sys
import traceback
from typing import Any

HEADER = struct.Struct("!I")
FUTURE_KEY = "__qcgpj_future__"   # a future passed as an argument: {FUTURE_KEY: "<rq job id>"}


def read_msg(fd: int) -> Any:
    """One message, or None at end of file."""
    head = _read_exactly(fd, HEADER.size)
    if head is None:
        return None
    body = _read_exactly(fd, HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def write_msg(fd: int, obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(HEADER.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def loads(serializer: str, data: bytes) -> Any:
    if serializer == "json":
        return json.loads(data)
    return pickle.loads(data)   # cloudpickle's output is read by plain pickle


def dumps(serializer: str, value: Any) -> bytes:
    if serializer == "json":
        try:
            return json.dumps(value).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the return value cannot be stored as JSON ({exc}); "
                            f"return JSON types or use serializer='cloudpickle'") from None
    import cloudpickle
    return cloudpickle.dumps(value)


_resolved: dict[str, Any] = {}


def resolve_cached(name: str) -> Any:
    """resolve(), once per name in this process: a warm process calls the same functions again and again."""
    fn = _resolved.get(name)
    if fn is None:
        fn = _resolved[name] = resolve(name)
    return fn


def resolve(name: str) -> Any:
    """``package.module.qualname`` -> the object: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import '{name}'")


def _substitute(value: Any, parents: dict[str, Any]) -> Any:
    """A future's marker -> its result."""
    if type(value) is dict and len(value) == 1 and FUTURE_KEY in value:
        return parents[value[FUTURE_KEY]]
    return value


class _Redirect:
    """The call's stdout/stderr go to the task's files (by descriptor, so C code and subprocesses follow); a
    call without files leaves them on /dev/null, where they stay between calls (no system call at all)."""

    def __init__(self, stdout: str | None, stderr: str | None) -> None:
        self.stdout, self.stderr = stdout, stderr

    def __enter__(self) -> None:
        if self.stdout:
            _point(1, self.stdout)
        if self.stderr and self.stderr == self.stdout:
            os.dup2(1, 2)
        elif self.stderr:
            _point(2, self.stderr)

    def __exit__(self, *exc: object) -> None:
        if not (self.stdout or self.stderr):
            return
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        _point(1, None)
        _point(2, None)


def _point(fd: int, path: str | None) -> None:
    new = os.open(path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC if path else os.O_WRONLY, 0o644)
    os.dup2(new, fd)
    os.close(new)


def _exc_args(ser: str, exc: BaseException) -> bytes | None:
    """What pickle builds an exception from (its constructor's arguments and its attributes: ``__reduce__``), in the
    job's serializer, for the client to raise the same exception; None when they cannot be stored that way."""
    try:
        red = exc.__reduce__()
        args = list(red[1]) if red[0] is type(exc) else list(exc.args)
        state = red[2] if len(red) > 2 and isinstance(red[2], dict) else None
    except Exception:
        return None
    for attempt in ([args, state], [args, None]) if state else ([args, None],):
        try:
            return dumps(ser, attempt)
        except Exception:   # attributes (or arguments) the serializer cannot store
            continue
    return None


def _message(exc: BaseException) -> str:
    """``str(exc)``, or what traceback prints when it fails: an exception whose ``__str__`` raised ended this
    process, and its call failed as a process that exited before returning."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def run_call(msg: dict[str, Any]) -> tuple:
    """``("ok", result bytes)`` or ``("error", "module.Type", message, traceback text, arguments)`` (arguments:
    ``_exc_args``)."""
    ser = msg["serializer"]
    saved_env = {k: os.environ.get(k) for k in msg["env"]}
    os.environ.update(msg["env"])
    os.chdir(msg["cwd"])   # every time: the last call may have moved
    if msg["cwd"] not in sys.path:
        sys.path.insert(0, msg["cwd"])
    try:
        with _Redirect(msg["stdout"], msg["stderr"]):
            try:
                func_name, _instance, args, kwargs = loads(ser, msg["data"])
                parents = {k: loads(ser, v) for k, v in msg["parents"].items()}
                args = [_substitute(a, parents) for a in args]
                kwargs = {k: _substitute(v, parents) for k, v in kwargs.items()}
                value = resolve_cached(func_name)(*args, **kwargs)
                return ("ok", dumps(ser, value))
            except BaseException as exc:   # SystemExit too: it ends the call, not this process
                if isinstance(exc, KeyboardInterrupt):
                    raise
                text = traceback.format_exc()
                sys.stderr.write(text)
                kind = type(exc)
                return ("error", f"{kind.__module__}.{kind.__qualname__}", _message(exc), text, _exc_args(ser, exc))
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
    _point(0, None)
    _point(1, None)
    _point(2, None)
    while True:
        msg = read_msg(rfd)
        if msg is None:
            return
        reply = run_call(msg)
        write_msg(wfd, (msg["id"], reply, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
