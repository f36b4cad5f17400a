"""SIGTERM stops a service whose main thread is busy taking and releasing a lock: the handler must not take it.

The main thread of a service often sits in ``Event.wait`` (a worker waiting to join a Redis that refuses it). A
handler calling ``Event.set`` there deadlocks whenever the signal lands while the main thread holds the event's
lock: in this loop, about two signals in three did on the test machine. Five in a row all stop, or the test fails.
"""
from __future__ import annotations

import signal
import subprocess
import sys

CHILD = """
import signal, sys, threading
from qcgpj.signals import stop_on_signals
ev = threading.Event()
stop_on_signals(ev.set, (signal.SIGTERM,))
print("ready", flush=True)
while not ev.wait(0.0):
    pass
print("stopped", flush=True)
"""


def test_sigterm_stops_a_main_thread_that_waits_on_an_event():
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline() == "ready\n"
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=60)   # a deadlock never ends: the timeout only turns it into a failure
            assert out == "stopped\n" and p.returncode == 0
        finally:
            p.kill()
            p.wait()



def test_abort_from_a_signal_handler_kills_the_private_store_without_waiting(tmp_path):
    """A second Ctrl-C while `qcgpj run` stopped its private redis-server hung: the handler's abort() waited on
    the lock that the interrupted wait held. abort() must return with that lock held (a thread, so that a
    regression fails here instead of hanging the suite)."""
    import logging
    import os
    import threading

    from qcgpj.local import LocalServices
    services = LocalServices(cores=1, store="redis-server", root_wd=str(tmp_path))
    server = services.server
    done = threading.Event()
    try:
        with server.proc._waitpid_lock:   # held, as by the stop() that the signal interrupted inside its wait
            threading.Thread(target=lambda: (services.abort(), done.set()), daemon=True).start()
            assert done.wait(60), "abort() blocked on the wait lock"
        assert server.proc.wait() == -signal.SIGKILL
        assert not os.path.exists(server.dir)
    finally:
        logging.disable(logging.NOTSET)   # abort() silences logging for a process about to exit
        services.stop()


def test_a_child_whose_parent_died_before_it_armed_the_death_signal_gets_it_at_once():
    """The parent-death signal is armed in the child after the fork: a parent killed in between would leave the
    child running for good (a killed bench's services). Armed against a parent it no longer has (here:
    one it never had), the child is signalled at once."""
    from qcgpj.signals import die_with_parent
    p = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent(signal.SIGTERM, parent=1))
    assert p.wait(timeout=30) == -signal.SIGTERM
