"""Repeated bench runs: ranges over N runs, optionally interleaved with another checkout's code.

On a shared virtual host one run says little: its speed moves by tens of percent between runs minutes apart. So
a change is judged by runs of both versions interleaved in the same minutes, and a figure is given as the range
over the runs. Each run is a ``qcgpj bench --json`` process of its own (the other version's with its checkout
first on ``PYTHONPATH``), so both versions meet the same harness and neither inherits the other's state.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ArgumentError, QcgpjError
from .signals import die_with_parent

THIS = "this"
AGAINST = "against"


@dataclass
class Version:
    """A version of qcgpj to run: this one, or the checkout at ``path`` (its ``qcgpj`` package first on the
    module path)."""
    label: str
    path: Path | None = None


def checkout(path: str) -> Version:
    """The version in a checkout directory (the one holding the ``qcgpj`` package), refused with one line when
    it holds none."""
    p = Path(path).expanduser().resolve()
    if not (p / "qcgpj" / "__init__.py").is_file():
        raise ArgumentError(f"--against {path}: no qcgpj package there (give a checkout's top directory)")
    return Version(AGAINST, p)


def run_once(version: Version, args: Sequence[str]) -> list[dict[str, Any]]:
    """One ``qcgpj bench --json ARGS`` of ``version``: its rows. It runs in an empty directory of its own, with
    its version's package first on the path: ``python -m`` looks in the working directory first, so a run
    started from inside a checkout would otherwise take that checkout's code, whichever version it was."""
    home = version.path or Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(home), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with tempfile.TemporaryDirectory(prefix="qcgpj-bench-run-") as wd:
        res = subprocess.run([sys.executable, "-m", "qcgpj", "bench", "--json", *args], env=env, cwd=wd,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             preexec_fn=die_with_parent())   # a series killed leaves no run behind
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        raise QcgpjError(f"bench run of {version.label}{_where(version)} failed: {last}")
    return json.loads(res.stdout)


def _where(version: Version) -> str:
    return f" ({version.path})" if version.path is not None else ""


def series(versions: Sequence[Version], args: Sequence[str], runs: int,
           told: Callable[[str], None] = lambda _s: None) -> list[dict[str, Any]]:
    """``runs`` rounds, each running every version once in turn: [{version, run, rows}] in the order run."""
    out = []
    for i in range(1, runs + 1):
        for v in versions:
            told(f"run {i}/{runs}: {v.label}{_where(v)}")
            out.append({"version": v.label, "run": i, "rows": run_once(v, args)})
    return out


def ranges(runs: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per workload row of the runs (matched by position), its value and each detail as the range over
    the runs: a number as [min, max], anything else as the values seen."""
    out: list[dict[str, Any]] = []
    for rows in zip(*runs):
        first = rows[0]
        extra: dict[str, Any] = {}
        for key in first["extra"]:
            seen = [r["extra"].get(key) for r in rows]
            extra[key] = _span(seen)
        out.append({"workload": first["workload"], "what": first["what"], "unit": first["unit"],
                    "value": _span([r["value"] for r in rows]), "extra": extra})
    return out


def _span(seen: list[Any]) -> list[Any]:
    nums = [v for v in seen if _number(v)]
    if nums and len(nums) == len(seen):
        return [min(nums), max(nums)]
    distinct = {json.dumps(v, sort_keys=True): v for v in seen if v is not None}
    return [distinct[k] for k in sorted(distinct)]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt(span: list[Any]) -> str:
    """``min-max`` (or one number when all runs agree), or the values seen joined by ``/``."""
    if len(span) == 2 and all(map(_number, span)):
        lo, hi = span
        return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
    return "/".join(v if isinstance(v, str) else json.dumps(v) for v in span)


def by_version(done: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ranges of each version's runs, in the order the versions first ran."""
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    for d in done:
        runs.setdefault(d["version"], []).append(d["rows"])
    return {label: ranges(r) for label, r in runs.items()}


def _keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows by workload and rank among that workload's rows: versions may give different rows (one without
    a row the other has), so they are matched by that, not by position."""
    seen: dict[str, int] = {}
    out = {}
    for row in rows:
        k = seen[row["workload"]] = seen.get(row["workload"], -1) + 1
        out[(row["workload"], k)] = row
    return out


def table(done: list[dict[str, Any]], n: int) -> list[str]:
    """The lines the command prints: per workload row, one line per version that has it, with ranges over the
    runs."""
    per = {label: _keyed(rows) for label, rows in by_version(done).items()}
    labels = list(per)
    lines = [f"qcgpj bench, {n} run(s) of {' and '.join(labels)}"
             + (" interleaved" if len(labels) > 1 else "") + ", ranges min-max over the runs",
             f"{'workload':<11} {'what':<36} {'version':<8} {'value':>17}  {'unit':<9} details"]
    keys = list(dict.fromkeys(k for label in labels for k in per[label]))
    for key in keys:
        for label in labels:
            r = per[label].get(key)
            if r is None:
                continue
            extra = " ".join(f"{k}={fmt(v)}" for k, v in r["extra"].items() if v)
            lines.append(f"{r['workload']:<11} {r['what']:<36} {label:<8} {fmt(r['value']):>17}  "
                         f"{r['unit']:<9} {extra}")
    return lines
