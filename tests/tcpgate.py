"""A TCP relay in front of a real redis-server that a test can cut, counting the connections refused meanwhile.

A stopped redis-server says nothing about how often a client tried it; through the gate a test can tell how many
connections a service opened during an outage, and hold one open unanswered so that the service is known to be
at its Nth attempt (blocked) while the test looks at what it logged before it:

    with Gate(("127.0.0.1", port)) as gate:          # relays to the server until cut
        held = gate.cut(hold=17)                      # close relayed connections; close new ones at once,
        held.wait(60)                                 # ... except the 17th, kept open without an answer
"""
from __future__ import annotations

import socket
import threading


class Gate:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._relayed: list[socket.socket] = []
        self._cut = False
        self.count = 0                                  # connections refused since the last cut()
        self._hold_at: int | None = None
        self._held: socket.socket | None = None
        self._event = threading.Event()
        threading.Thread(target=self._accept, name="tcpgate", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self, hold: int | None = None, notify: threading.Event | None = None) -> threading.Event:
        """From now on refuse: close every relayed connection (and one held before), then close each new one as
        soon as it is accepted, counting from zero, except the ``hold``-th, kept open and never answered. Returns
        the event set when that one arrives (``notify``, if given, so that a test can wait on this or another
        thing)."""
        with self._lock:
            self._cut, self.count, self._hold_at = True, 0, hold
            self._event = notify or threading.Event()
            doomed, self._relayed = self._relayed, []
            if self._held is not None:
                doomed.append(self._held)
                self._held = None
        for s in doomed:
            _close(s)
        return self._event

    def close(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)   # wakes the accept thread
        except OSError:
            pass
        self._server.close()
        self.cut()

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if not self._cut:
                    try:
                        up = socket.create_connection(self.upstream, timeout=5)
                    except OSError:
                        _close(conn)
                        continue
                    up.settimeout(None)
                    self._relayed += [conn, up]
                    for a, b in ((conn, up), (up, conn)):
                        threading.Thread(target=_pump, args=(a, b), daemon=True).start()
                    continue
                self.count += 1
                if self.count == self._hold_at:
                    self._held = conn
                    self._event.set()
                    continue
            _close(conn)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
