"""What becomes of a local-mode run when its script ends: in local mode the services are threads of the script's
own process, so a script that ends without ``Manager.finish()`` would leave its tasks running with no one to
report them, and its queued jobs dropped unseen. At the interpreter's exit an unfinished local Manager is
finished (what is not final canceled, running tasks killed, with a warning); on SIGTERM or SIGHUP, whose default
action skips every exit hook, its tasks are ended first, as ``qcgpj run`` does."""
from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import redis

from .errors import QcgpjError
from .taskrecords import FINAL_STATES

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger(__name__)


# Local-mode Managers not finished: finished when the interpreter exits (see _finish_at_exit). Run where the
# standard library's executors run theirs, before those refuse new work, as qcgpj.Executor's calls are.
_UNFINISHED: set[Manager] = set()
# Run at the interpreter's exit, before the standard library's executors refuse new work (the local services start
# their waiter threads through one): the hook those executors use themselves, where there is one.
at_exit = getattr(threading, "_register_atexit", atexit.register)
_hooked = threading.Lock()


def _finish_at_exit() -> None:
    """A local-mode script that ends without finish() (or a ``with`` block): its services, in this process, die
    with it, and its tasks would be left running with no one to report them, its queued jobs dropped unseen. As
    finish() does, what is not final is canceled and what runs killed (a Ctrl-C meanwhile: at once), with one line
    on stderr when that was not nothing."""
    for m in list(_UNFINISHED):
        try:
            left = sum(st not in FINAL_STATES for st in m.list().values())
        except (QcgpjError, redis.RedisError):
            left = -1
        if left:
            what = f"{left} job(s) not final" if left > 0 else "the jobs not final"
            # a warning to the script's author, shown whether or not the script set up logging
            warnings.warn(f"qcgpj: the script ended before Manager.finish(): {what} canceled, running tasks "
                          "killed (wait4all() first to let them end)", RuntimeWarning, stacklevel=1)
        try:
            m.finish()
        except KeyboardInterrupt:
            m.abort()


# Signals whose default action ends the process at once, with no exit hook: a local script's tasks, in sessions of
# their own, would run on with no one to stop them (a batch system's SIGTERM, a closed terminal's SIGHUP).
END_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_LIVE: set[Manager] = set()        # local-mode Managers not finished, whoever finishes them at exit
_handler_pid: int | None = None   # the process that set _on_signal (a forked child inherits it, not our tasks)
_ending = False                    # a signal is being handled: a second one kills at once
_grace = 3.0                       # workers.base.KILL_GRACE, read when the handler is set (not imported in it)


def _catch_end_signals() -> None:
    """While a local Manager lives, SIGTERM and SIGHUP end its tasks before the process ends: only where the
    action is still the default (never over a handler of the user's, nor SIG_IGN: nohup), and only from the main
    thread, where Python allows it."""
    global _handler_pid, _grace
    if threading.current_thread() is not threading.main_thread():
        return
    from .workers.base import KILL_GRACE
    _grace = KILL_GRACE
    for sig in END_SIGNALS:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _on_signal)
                _handler_pid = os.getpid()
        except (ValueError, OSError):   # an interpreter that does not let Python handle signals
            pass


def _release_end_signals() -> None:
    """The last local Manager finished: the default action again, unless someone replaced ours meanwhile."""
    if _LIVE or threading.current_thread() is not threading.main_thread():
        return   # (left from another thread, ours stays: with no Manager it acts as the default)
    for sig in END_SIGNALS:
        try:
            if signal.getsignal(sig) is _on_signal:
                signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass


def _on_signal(signum: int, _frame: Any) -> None:
    """SIGTERM or SIGHUP with local Managers alive: as ``qcgpj run`` does, their running tasks get SIGTERM, and
    SIGKILL with all they started once they have ended or after KILL_GRACE seconds (a second signal: at once);
    then the default action ends the process, with the usual status (143, 129). No wait on the executors' threads
    nor Redis: the interrupted code may hold any lock (see LocalServices.abort)."""
    global _ending
    managers = [m for m in list(_LIVE) if m.local is not None] if os.getpid() == _handler_pid else []
    if managers and not _ending:
        _ending = True
        running = sum(m.local.executor.halt() for m in managers)
        if running:
            log.warning("%s: ending the %d running task(s) of local mode before exiting",
                        signal.Signals(signum).name, running)
        deadline = time.monotonic() + _grace
        while any(m.local is not None and m.local.executor.running_left() for m in managers) \
                and time.monotonic() < deadline:
            time.sleep(0.01)   # processes that end have no event this thread may wait on here
    for m in managers:
        m.abort()
    signal.signal(signum, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)   # not ended by it: the init of a container ignores its default action


def leave_exit_to(m: Manager) -> None:
    """The owner of ``m`` (qcgpj.Executor, whose calls run to their end at exit) finishes it itself."""
    _UNFINISHED.discard(m)


def watch(m: Manager) -> None:
    """A local-mode Manager was made: finish it at exit, and end its tasks on SIGTERM or SIGHUP, until it is."""
    if _hooked.acquire(blocking=False):   # once per process (never released)
        at_exit(_finish_at_exit)
    _UNFINISHED.add(m)
    _LIVE.add(m)
    _catch_end_signals()


def forget(m: Manager) -> None:
    """``m`` was finished (or aborted): nothing more to do for it at the script's end."""
    _UNFINISHED.discard(m)
    _LIVE.discard(m)
    _release_end_signals()
