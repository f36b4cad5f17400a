"""Checks of single fields of a job description: each error names the job and the dotted field.

Written for speed (they run once per job of batches of 100,000) and shared by the request-file parser and the
Python builder (``qcgpj.jobspec``).
"""
from __future__ import annotations

import logging
import math
import operator
import re
import reprlib
import sys
from functools import lru_cache
from typing import Any

from .errors import JobSpecError

log = logging.getLogger(__name__)

# Names go into Redis keys and 'name:it' task ids: no ':', '|', spaces, braces; fullmatch, so no trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
WT_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d*)?)s)?")
SECONDS_RE = re.compile(r"\d+(?:\.\d*)?")
COUNT_FIELDS = frozenset({"exact", "min", "max", "scheduler"})
# Bounds that keep a value exact where it goes: Lua's numbers print integers exactly up to 14 digits, a walltime
# must fit a timer, and free-form data must not nest deeper than a reader's stack.
MAX_INT = 10 ** 12
MAX_WALLTIME = 366 * 86400.0
MAX_DEPTH = 32
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 64, 64
_repr = _REPR.repr
_warned: set[str] = set()


def _show(v: Any) -> str:
    """A value for an error message: its JSON type and a short repr."""
    kind = {dict: "object", list: "array", tuple: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(v), type(v).__name__)
    text = _repr(v) if not _unprintable(v) else f"of {v.bit_length():,} bits"   # bounded in depth and length
    return f"{kind} {text[:60] + '...' if len(text) > 63 else text}"


MAX_ITERATION_DIGITS = 13   # iterations stop at 10^12: a longer number names none (and int() of thousands raises)


def _unprintable(v: Any) -> bool:
    """An int of more digits than Python prints (str() and repr() raise ValueError)."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()   # 3.11+; 0: no limit
    return isinstance(v, int) and bool(limit) and v.bit_length() > math.log2(10) * limit


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise JobSpecError(name if isinstance(name, str) and name else None, "name",
                           "required; 1-200 letters, digits, '_', '.' or '-', not starting with '.' or '-' "
                           f"(no ':', '|', spaces or braces), got {_show(name)}")
    return name


def _str(job: str, v: Any, fld: str) -> str:
    if not isinstance(v, str) or not v:
        raise JobSpecError(job, fld, f"must be a non-empty string, got {_show(v)}")
    return v


def _dict(job: str, v: Any, fld: str) -> dict:
    if not isinstance(v, dict):
        raise JobSpecError(job, fld, f"must be an object, got {_show(v)}")
    return v


def _known(job: str | None, d: dict, allowed: frozenset, where: str) -> None:
    if allowed.issuperset(d):
        return
    for key in d:
        if key not in allowed:
            raise JobSpecError(job, f"{where}.{key}" if where else str(key),
                               f"unknown field (known: {', '.join(sorted(allowed))})")


_NUMBER = (int, float)


def _strlist(job: str, v: Any, fld: str, numbers: bool) -> tuple[str, ...]:
    """A list of strings (or one string for modules); numbers in args become strings, as QCG-PilotJob does."""
    if isinstance(v, str) and not numbers:
        v = [v]
    elif not isinstance(v, (list, tuple)):
        raise JobSpecError(job, fld, f"must be a list, got {_show(v)}")
    if numbers:
        out = [x if type(x) is str else str(x) if type(x) in _NUMBER and not _unprintable(x) else _arg(x) for x in v]
    else:
        out = [x if type(x) is str and x else None for x in v]
    if None in out:
        i = out.index(None)
        raise JobSpecError(job, f"{fld}[{i}]", f"must be a {'string or a number' if numbers else 'non-empty string'}, "
                                               f"got {_show(v[i])}")
    return tuple(out)


def _arg(v: Any) -> str | None:
    """The rare cases: str and number subclasses (numpy's) are welcome, booleans and the rest are not."""
    if isinstance(v, str):
        return v
    return str(v) if isinstance(v, _NUMBER) and not isinstance(v, bool) and not _unprintable(v) else None


def _env(job: str, v: Any) -> dict[str, str]:
    out = {}
    for k, x in _dict(job, v, "execution.env").items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise JobSpecError(job, "execution.env", f"{k!r} is not a variable name")
        out[k] = x if type(x) is str else _arg(x)
        if out[k] is None:
            raise JobSpecError(job, f"execution.env.{k}", f"must be a string or a number, got {_show(x)}")
    return out


def _positive(job: str, v: Any, fld: str, least: int = 1) -> int:
    if type(v) is int and least <= v <= MAX_INT:
        return v
    n = None
    if not isinstance(v, (bool, float)):
        try:
            n = operator.index(v)   # numpy integers are welcome too
        except TypeError:
            pass
    if n is None or n < least:
        raise JobSpecError(job, fld, f"must be a {'positive' if least else 'non-negative'} integer, got {_show(v)}")
    if n > MAX_INT:
        raise JobSpecError(job, fld, f"must be at most {MAX_INT:,}, got {_show(v)}")
    return n


def _count(job: str, v: Any, fld: str) -> tuple[int, int | None]:
    """An integer, ``{exact}`` or ``{min, max}`` -> (min, max); max None means no upper bound."""
    if type(v) is int and 1 <= v <= MAX_INT:
        return v, v
    if not isinstance(v, dict):
        n = _positive(job, v, fld)
        return n, n
    _known(job, v, COUNT_FIELDS, fld)
    exact, lo, hi = v.get("exact"), v.get("min"), v.get("max")
    if exact is not None:
        if lo is not None or hi is not None:
            raise JobSpecError(job, fld, "'exact' cannot be combined with 'min' or 'max'")
        n = _positive(job, exact, fld + ".exact")
        return n, n
    if lo is None and hi is None:
        raise JobSpecError(job, fld, "needs 'exact', 'min' or 'max'")
    lo = 1 if lo is None else _positive(job, lo, fld + ".min")
    hi = None if hi is None else _positive(job, hi, fld + ".max")
    if hi is not None and hi < lo:
        raise JobSpecError(job, fld + ".max", f"must not be less than min ({lo}), got {hi}")
    return lo, hi


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _plain(job: str, v: Any, fld: str, depth: int = 0) -> None:
    """Free-form values (attributes, model_opts) must survive JSON unchanged."""
    if v is None or isinstance(v, (str, bool)) or (isinstance(v, int) and not _unprintable(v)):
        return
    if depth >= MAX_DEPTH:
        raise JobSpecError(job, fld, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise JobSpecError(job, fld, f"must be a finite number, got {v!r}")
    elif isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise JobSpecError(job, fld, f"keys must be strings, got {_show(k)}")
            _plain(job, x, f"{fld}.{k}", depth + 1)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _plain(job, x, f"{fld}[{i}]", depth + 1)
    else:
        raise JobSpecError(job, fld, f"must be JSON data (string, number, boolean, null, list, object), got {_show(v)}")


def parse_walltime(s: Any) -> float:
    """Seconds from '1h2m3s', '10m', '30s', '2h', '1d', '90' or a number; ValueError (TypeError) if malformed."""
    if isinstance(s, str):
        return _walltime_text(s)
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        raise TypeError(f"expected a duration like '1h30m' or a number of seconds, got {_show(s)}")
    if not 0.001 <= s <= MAX_WALLTIME:
        shown = _show(s) if _unprintable(s) else repr(s)
        raise ValueError(f"must be a positive duration between 1ms and 366 days, got {shown}")
    return float(s)


@lru_cache(maxsize=1024)   # a batch repeats a few walltimes many times
def _walltime_text(s: str) -> float:
    text = s.replace(" ", "").lower()
    if SECONDS_RE.fullmatch(text):
        return parse_walltime(float(text))
    m = WT_RE.fullmatch(text)
    if m is None or not text:
        raise ValueError(f"expected a duration like '1h30m', '10m', '45s' or a number of seconds, got {s!r}")
    d, h, mi, sec = m.groups()
    return parse_walltime(int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0))


@lru_cache(maxsize=1024)
def format_walltime(seconds: float) -> str:
    """The 'XhYmZs' form QCG-PilotJob reads; fractions of a second (our extension) as seconds."""
    if seconds != int(seconds):
        return repr(float(seconds)) + "s"   # no exponent: parse_walltime allows no less than 1ms
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return "".join(f"{n}{unit}" for n, unit in ((h, "h"), (m, "m"), (s, "s")) if n)


def _os_strings(job: str, exec: str | None, script: str | None, args: tuple[str, ...], stdin: str | None,
                stdout: str | None, stderr: str | None, wd: str | None, venv: str | None, env: dict[str, str],
                modules: tuple[str, ...]) -> None:
    """What the OS gets (a command, its arguments, paths, the environment) can hold no NUL and no lone
    surrogate (text that is not UTF-8): such a task could only fail at launch, so it is refused now. One test
    over all of them together: it runs once per job."""
    fields = {"execution.exec": exec, "execution.script": script, "execution.stdin": stdin,
              "execution.stdout": stdout, "execution.stderr": stderr, "execution.wd": wd, "execution.venv": venv}
    text = "".join([v for v in fields.values() if v] + [*args, *modules, *env, *env.values()])
    if "\0" not in text and (text.isascii() or _utf8(text)):
        return
    fields.update({f"execution.args[{i}]": a for i, a in enumerate(args)})
    fields.update({f"execution.modules[{i}]": m for i, m in enumerate(modules)})
    fields.update({f"execution.env.{k}": f"{k}={v}" for k, v in env.items()})
    for fld, v in fields.items():
        if v and ("\0" in v or not _utf8(v)):
            raise JobSpecError(job, fld, f"must not contain {'a NUL character' if chr(0) in v else 'a lone surrogate'}"
                                         f" (the OS cannot take it), got {_show(v)}")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _plain_dict(job: str, v: Any, fld: str) -> dict:
    _plain(job, _dict(job, v, fld), fld)
    return dict(v)


