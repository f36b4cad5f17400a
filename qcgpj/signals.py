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
import threading
from typing import Callable, Iterable

log = logging.getLogger("qcgpj")


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
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid() if parent is None else parent

    def arm() -> None:
        prctl(1, sig)   # PR_SET_PDEATHSIG
        if os.getppid() != parent:   # the parent died between the fork and the prctl: no signal will come
            os.kill(os.getpid(), sig)
    return arm
