"""The CLI's wait: counts of tasks (iterations, not jobs), a one-line progress display, and Ctrl-C.

The display is rich's ``Progress``: it keeps one line, redraws in place, measures rate and ETA, and stays out of
the way (hidden) when stderr is not a terminal.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .taskrecords import FINAL_STATES

REFRESH = 0.5          # seconds between re-counts (and redraws)
FRONT = 256            # open jobs re-counted at each refresh, from the oldest on (jobs end mostly in order)
FULL_SHARE = 20        # a full re-count comes at most once per this many times its own duration
HINT_AFTER = 10.0      # seconds without any executor before the hint (QCGPJ_HINT_AFTER in the environment)
FIELDS = ("state", "n", "done", "n_FAILED", "n_EXECUTING")
WIDE = 80              # columns from which the line has a bar; narrower, only the counts (truncated, not wrapped)


@dataclass
class Tally:
    tasks: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0


def _count(h: Sequence[str | None]) -> tuple[int, int, int, int]:
    """(tasks, done, failed, running) of one job from its hash fields. Running is the same for both kinds: tasks
    whose start the queue was told of and not their end (EXECUTING), not those placed or claimed ahead, which on
    a 2-core worker made an iterative job show '67 running'."""
    state, n, done, failed, executing = h
    if n is None:   # one task
        return 1, int(state in FINAL_STATES), int(state == "FAILED"), int(state == "EXECUTING")
    n_i = int(n)
    if state in FINAL_STATES:
        return n_i, n_i, int(failed or 0), 0
    return n_i, int(done or 0), int(failed or 0), max(int(executing or 0), 0)


class Tallier:
    """Counts for the jobs waited for, read cheaply: final jobs are never read again, and between full re-counts
    (at most ``1/FULL_SHARE`` of the time) only the oldest open ones are."""

    def __init__(self, store: Any, names: Sequence[str]) -> None:
        self.store = store
        self.names = [n for n in names if ":" not in n]
        self.extra = len(names) - len(self.names)   # name:it entries: counted as tasks, not read
        self.counts: dict[str, tuple[int, int, int, int]] = {}
        self.open = list(self.names)
        self.full_at = 0.0

    def _read(self, names: Sequence[str]) -> None:
        pipe = self.store.r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.store.keys.job(name), FIELDS)
        for name, h in zip(names, pipe.execute()):
            if h[0] is not None:   # gone: the wait itself reports lost jobs
                self.counts[name] = _count(h)

    def tally(self) -> Tally:
        t0 = time.monotonic()
        full = t0 >= self.full_at
        self._read(self.open if full else self.open[:FRONT])
        if full:
            self.full_at = t0 + max(2.0, FULL_SHARE * (time.monotonic() - t0))
        self.open = [n for n in self.open if n not in self.counts or self.counts[n][0] != self.counts[n][1]]
        out = Tally(tasks=self.extra)
        for name in self.names:
            tasks, done, failed, running = self.counts.get(name, (1, 0, 0, 0))
            out.tasks += tasks
            out.done += done
            out.failed += failed
            out.running += running
        return out


class Display:
    """One line on stderr: bar, done/total tasks, failed and running, rate, ETA. Columns truncate, never wrap.
    Hidden, it does nothing and rich is not even imported (a tenth of a second of every piped run)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.started = time.monotonic()
        if not show:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column
        self.console = Console(stderr=True, width=_columns())
        fixed = Column(no_wrap=True)
        wide = self.console.width >= WIDE
        counts = [MofNCompleteColumn(table_column=fixed),
                  TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                        ratio=None if wide else 1)),
                  TimeRemainingColumn(table_column=fixed)]
        bar = [TextColumn("tasks", table_column=fixed), BarColumn(bar_width=None, table_column=Column(ratio=1))]
        self.progress = Progress(*(bar + counts if wide else counts), console=self.console, auto_refresh=False,
                                 expand=True, transient=True)
        self.task = self.progress.add_task("tasks", total=None, info="")

    def __enter__(self) -> "Display":
        if self.show:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self.progress.stop()

    def update(self, t: Tally) -> None:
        self.console.width = _columns() or self.console.width   # follows a resized terminal
        elapsed = max(time.monotonic() - self.started, 1e-6)
        parts = []
        if t.failed:
            parts.append(f"[red]{t.failed} failed[/red]")
        parts.append(f"{t.running} running")
        parts.append(f"{t.done / elapsed:.0f}/s")
        self.progress.update(self.task, total=max(t.tasks, 1), completed=t.done, info=", ".join(parts))
        self.progress.refresh()

    def note(self, text: str) -> None:
        """A line above the progress line (the hint); hidden, a line on stderr (a batch script's log)."""
        if self.show:
            self.progress.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


def _columns() -> int | None:
    """The terminal's own width: a COLUMNS variable inherited from elsewhere (rich would believe it) can be
    wrong, and a line one column too wide wraps at every redraw."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or None
    except (OSError, ValueError):
        return None


class Interrupted(Exception):
    """The user asked to stop waiting (Ctrl-C), or the timeout came: the run ends its queued work."""


def _last_words(code: int) -> None:
    """What a run stopped at once by a second signal still says, even when the first was not handled yet: on a
    terminal the progress line ended and the cursor shown again (the live display hid it), then why it stopped.
    Raw writes to stderr: this runs in a signal handler, perhaps in the middle of another write."""
    what = "interrupted" if code == 128 + signal.SIGINT else "terminated"
    text = f"{what} again: what ran was killed; exiting at once, without a summary\n"
    try:
        if os.isatty(2):
            text = "\r\n\x1b[?25h" + text
        os.write(2, text.encode())
    except OSError:   # stderr closed (a terminal gone with SIGHUP): nothing to say it on
        pass


class Interrupts:
    """SIGINT (Ctrl-C), SIGTERM (a batch system's end of walltime) or SIGHUP (the terminal closed) while waiting.
    The first only sets a flag that the wait sees at its next wake-up (within about a second): a handler that did
    I/O could leave a Redis reply half read. The second calls ``hard`` (kill what runs) and exits at once.
    ``code``: 128 + the signal."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, hard: Callable[[], None]) -> None:
        self.count = 0
        self.code = 0
        self.hard = hard
        self._prev: list[Any] = []

    def __enter__(self) -> "Interrupts":
        self._prev = [signal.signal(sig, self._handler) for sig in self.SIGNALS]
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in zip(self.SIGNALS, self._prev):
            signal.signal(sig, prev)

    def _handler(self, signum: int, _frame: Any) -> None:
        self.count += 1
        self.code = self.code or 128 + signum
        if self.count >= 2:
            try:
                self.hard()
            finally:
                _last_words(self.code)
                os._exit(self.code)

    def check(self) -> None:
        if self.count:
            raise Interrupted("interrupted" if self.code == 128 + signal.SIGINT else "terminated")


class Watch:
    """The progress callback of ``Manager.wait4``: re-counts at most every REFRESH seconds, raises Interrupted
    after a Ctrl-C, and gives the hint when no executor serves the namespace."""

    def __init__(self, m: Any, names: Sequence[str], display: Display, interrupts: Interrupts | None,
                 hint: str | None) -> None:
        self.m, self.display, self.interrupts, self.hint = m, display, interrupts, hint
        self.tallier = Tallier(m.store, names)
        self.counted_at = 0.0
        self.hint_at = time.monotonic() + hint_after()
        self.last = Tally()

    def __call__(self, _done: int, _asked: int) -> None:
        if self.interrupts is not None:
            self.interrupts.check()
        now = time.monotonic()
        if self.hint and now >= self.hint_at:   # also when piped: a batch script's run must not wait unexplained
            self.hint_at = float("inf")
            if not self.m.store.executors():
                self.display.note(self.hint)
        if not self.display.show or now - self.counted_at < REFRESH:
            return
        self.counted_at = now
        self.last = self.tallier.tally()
        self.display.update(self.last)


def hint_after() -> float:
    """Seconds a run on a queue waits without any executor before it says so: HINT_AFTER, or QCGPJ_HINT_AFTER
    (a site whose workers take longer to start, a test); a value that is not a number is ignored."""
    try:
        return max(0.0, float(os.environ.get("QCGPJ_HINT_AFTER", HINT_AFTER)))
    except ValueError:
        return HINT_AFTER
