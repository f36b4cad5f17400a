"""A real terminal for tests: a command in a tmux session on a tmux server of its own.

Each terminal has its own server (``tmux -L``), so no test waits on, or races with, another test's server: with
one shared server, killing a test's last session makes the server exit, and the next test's ``new-session`` could
reach it while it went and fail (seen in CI as ``tmux new-session`` returning 1).
"""
from __future__ import annotations

import subprocess
import uuid
from typing import Mapping


class Terminal:
    """``with Terminal(cmd, width, height) as t:`` runs ``cmd`` (a shell line) in a detached tmux session."""

    def __init__(self, cmd: str, width: int = 120, height: int = 10, env: Mapping[str, str] | None = None) -> None:
        self.cmd, self.width, self.height, self.env = cmd, width, height, env
        self.socket = f"qcgpj-test-{uuid.uuid4().hex[:10]}"

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=check, capture_output=True, text=True,
                              env=None if self.env is None else dict(self.env))

    def __enter__(self) -> "Terminal":
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height),
                   self.cmd)
        return self

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t", check=False).stdout

    def lines(self) -> list[str]:
        """The screen's non-blank lines."""
        return [line for line in self.screen().splitlines() if line.strip()]

    def send(self, key: str) -> None:
        self._tmux("send-keys", "-t", "t", key)

    def close(self) -> None:
        """Close the terminal (its programs get SIGHUP) and end its server."""
        self._tmux("kill-server", check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()
