"""Figures of ``qcgpj report``: a Gantt chart and core utilisation over time, drawn with matplotlib.

matplotlib is an optional extra (``pip install 'qcgpj[plot]'``). The Gantt chart draws every task of the figure
as one polygon of a single PolyCollection, not one artist per task: 10,000 tasks render in about a second.
"""
from __future__ import annotations

from typing import Any, Sequence

from .errors import QcgpjError

STATE_COLOURS = {"SUCCEED": "#4c9f50", "FAILED": "#d1495b", "CANCELED": "#edae49", "OMITTED": "#bbbbbb",
                 "EXECUTING": "#00798c", "SCHEDULED": "#8ecae6"}
LANE_HEIGHT = 0.8
MAX_LABELLED_LANES = 64   # more lanes than this: the y axis names the executors only
EDGED_TASKS = 2000        # up to this many tasks, a thin white edge tells consecutive tasks of one job apart


class PlotError(QcgpjError):
    """matplotlib is missing, or the figure cannot be written."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError("figures need matplotlib: pip install 'qcgpj[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def gantt(rows: Sequence[dict[str, Any]], output: str, colour_by: str = "state", title: str = "") -> int:
    """Draw the lanes of :func:`qcgpj.report.lanes` to ``output`` (.png, .svg, .pdf); returns the lanes drawn.
    Lanes are grouped by executor, the executors' blocks separated by a line; gaps are idle cores."""
    plt = _pyplot()
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch
    if not rows:
        raise PlotError("nothing to draw: no task has run in this namespace")
    t0 = min(r["start"] for r in rows)
    order = sorted({(r["executor"], r["lane"]) for r in rows})
    y_of = {key: i for i, key in enumerate(order)}
    colours, legend = _colours(rows, colour_by)
    verts, faces = [], []
    for r in rows:
        y = y_of[(r["executor"], r["lane"])] - LANE_HEIGHT / 2
        x0, x1 = r["start"] - t0, max(r["end"] - t0, r["start"] - t0)
        verts.append(((x0, y), (x0, y + LANE_HEIGHT), (x1, y + LANE_HEIGHT), (x1, y)))
        faces.append(colours[r[colour_by]])
    height = min(max(3.0, 0.12 * len(order) + 1.5), 30.0)
    fig, ax = plt.subplots(figsize=(12, height))
    edges = dict(edgecolors="white", linewidths=0.5) if len(rows) <= EDGED_TASKS else dict(edgecolors="none")
    ax.add_collection(PolyCollection(verts, facecolors=faces, **edges))
    ax.set_xlim(0, max(r["end"] for r in rows) - t0)
    ax.set_ylim(len(order) - 0.5, -0.5)
    execs = sorted({e for e, _lane in order})
    for e in execs[1:]:
        ax.axhline(y_of[(e, min(lane for x, lane in order if x == e))] - 0.5, color="black", lw=0.6)
    if len(order) <= MAX_LABELLED_LANES:
        ax.set_yticks(range(len(order)), [f"{e} · {lane}" for e, lane in order], fontsize=7)
    else:
        firsts = [min(i for (x, _lane), i in y_of.items() if x == e) for e in execs]
        ax.set_yticks(firsts, execs, fontsize=7)
    ax.set_xlabel("seconds since the first task started")
    ax.set_ylabel("executor · core slot")
    ax.set_title(title or f"{len(rows):,} task slots on {len(order)} cores of {len(execs)} executor(s)")
    if legend:
        ax.legend(handles=[Patch(color=c, label=k) for k, c in legend.items()], loc="upper right", fontsize=7,
                  ncols=min(len(legend), 6))
    fig.tight_layout()
    _save(fig, output)
    return len(order)


def _colours(rows: Sequence[dict[str, Any]], colour_by: str) -> tuple[dict[str, str], dict[str, str]]:
    """Colour per state (fixed), or per job (a cycle of 20; no legend past 12 jobs)."""
    if colour_by == "state":
        used = {r["state"] for r in rows}
        colours = {s: STATE_COLOURS.get(s, "#666666") for s in used}
        return colours, {s: colours[s] for s in STATE_COLOURS if s in used}
    import matplotlib
    cycle = matplotlib.colormaps["tab20"].colors
    jobs = sorted({r["job"] for r in rows})
    colours = {j: matplotlib.colors.to_hex(cycle[i % len(cycle)]) for i, j in enumerate(jobs)}
    return colours, (colours if len(jobs) <= 12 else {})


def utilisation(points: Sequence[dict[str, float]], output: str, title: str = "") -> None:
    """Busy cores against available cores over time (the step functions of :func:`qcgpj.report.utilisation`)."""
    plt = _pyplot()
    if not points:
        raise PlotError("nothing to draw: no executor has joined this namespace")
    t0 = points[0]["time"]
    xs = [p["time"] - t0 for p in points]
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.step(xs, [p["available"] for p in points], where="post", color="#333333", lw=1, label="available cores")
    ax.fill_between(xs, [p["busy"] for p in points], step="post", color="#00798c", alpha=0.7, label="busy cores")
    ax.set_xlabel("seconds since the first executor joined")
    ax.set_ylabel("cores")
    ax.set_ylim(0, max(p["available"] for p in points) * 1.1 + 0.5)
    ax.set_xlim(0, xs[-1] if xs[-1] > 0 else 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "core utilisation")
    fig.tight_layout()
    _save(fig, output)


def _save(fig: Any, output: str) -> None:
    import matplotlib.pyplot as plt
    try:
        fig.savefig(output, dpi=110)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write {output}: {exc}") from None
    finally:
        plt.close(fig)
