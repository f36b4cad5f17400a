"""Stopping a service on SIGTERM or Ctrl-C without deadlocking it.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread holds a lock:
inside ``Event.wait``, for instance, right after its condition's lock was taken back. A handler that called
``Event.set`` (what ``stop()`` does) then waits for that lock for ever: a worker that was waiting to join a
refusing Redis hung on SIGTERM this way. So the handler does nothing itself: the signal's number reaches a pipe
through ``signal.set_wakeup_fd`` (written from C, no lock), and a thread of its own calls ``stop``.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterable

log = logging.getLogger("qcgpj")

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 2, 36


def stop_on_signals(stop: Callable[[], None],
                    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Call ``stop`` (from a thread of its own) each time one of ``signals`` arrives. Main thread only."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    for sig in signals:
        signal.signal(sig, lambda *_: None)   # not the default action; the wake-up fd carries the news
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            data = os.read(r, 64)
            if not data:
                return
            for signum in data:
                log.info("signal %d: stopping", signum)
                stop()

    threading.Thread(target=watch, name="qcgpj-signals", daemon=True).start()


def die_with_parent(sig: signal.Signals = signal.SIGTERM, parent: int | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` by which a child gets ``sig`` when the thread that started it dies, even by SIGKILL: a
    killed run leaves no server or service behind. Resolved here, in the parent: the child of a threaded process
    must not import anything. None where there is no prctl (not Linux): ordinary exits still stop the child.
    ``parent``: the pid the child's parent has (default: this process); a child whose parent died before it
    could arm the signal gets it at once."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid() if parent is None else parent

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:   # the parent died between the fork and the prctl: no signal will come
            os.kill(os.getpid(), sig)
    return arm


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, or None where there is none (not Linux)."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def can_supervise() -> bool:
    """Whether this system has what a worker's supervisor needs (Linux: prctl, /proc)."""
    return sys.platform.startswith("linux") and _prctl() is not None


def become_subreaper() -> bool:
    """Make this process the one that adopts its descendants' orphans (Linux >= 3.4), instead of init: the tasks
    of a killed executor become its children, so it can find and end them. False where that cannot be had."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def parent_death_signal() -> int:
    """The signal this process gets when its parent dies (set by whoever started it), 0 for none."""
    prctl = _prctl()
    if prctl is None:
        return 0
    import ctypes
    sig = ctypes.c_int(0)
    return sig.value if prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0) == 0 else 0
