"""Times as stored (Unix seconds with milliseconds, as strings) and for people: local ISO timestamps and short
durations (JSON output keeps raw epochs and seconds)."""
from __future__ import annotations

import time
from datetime import datetime


def now() -> str:
    """Timestamps are Unix seconds with milliseconds, as strings: readable with redis-cli, sortable."""
    return f"{time.time():.3f}"


def local_time(epoch: float | str | None) -> str:
    """Unix seconds as a local ISO timestamp to the millisecond, with its UTC offset; '-' for none."""
    if epoch in (None, ""):
        return "-"
    return datetime.fromtimestamp(float(epoch)).astimezone().isoformat(timespec="milliseconds")


def duration(seconds: float | None) -> str:
    """'850 ms', '12.3 s', '4 min 05 s', '2 h 07 min', '3 d 04 h'; '-' for none."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m:02d} min"
    d, h = divmod(h, 24)
    return f"{d} d {h:02d} h"
