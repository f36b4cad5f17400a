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


def test_the_private_store_is_killed_from_a_signal_handler_without_waiting():
    """A second Ctrl-C while `qcgpj run` stopped its private redis-server hung: the handler's stop() waited on the
    lock the interrupted wait held. The handler's kill() does not wait."""
    import os
    import shutil

    from qcgpj.local import PrivateRedis
    server = PrivateRedis(shutil.which("redis-server") or "redis-server")
    with server.proc._waitpid_lock:   # held, as by the stop() that the signal interrupted inside its wait
        server.kill()
    assert server.proc.wait() == -signal.SIGKILL
    assert not os.path.exists(server.dir)
