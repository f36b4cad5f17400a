"""Tasks start through Popen's own C call (workers.spawn, CPython 3.11-3.13), or os.posix_spawn when started alone
where that is not available, and get exactly what Popen gives them; what cannot start goes to Popen."""
from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from qcgpj.resources import Allocation
from qcgpj.workers import spawn
from qcgpj.workers.base import LaunchError, ProcessWorker, TaskContext
from qcgpj.workers.spawn import Spawned

# What the child sees: its session, ignored and blocked signals, an env variable, its directory, its fds.
PROBE = ('[ "$(ps -o sid= -p $$ | tr -d " ")" = $$ ] && echo own-session; grep -E "^Sig(Ign|Blk)" /proc/$$/status; '
         'echo "$PROBE"; pwd; ls /proc/$$/fd')
# glibc's two internal signals (32, 33: not signals a program can use): posix_spawn may leave them ignored, and
# a test process may have them ignored already (seen in pytest-xdist's workers on Python 3.13), which the child
# inherits whatever starts it. Only the signals a program can use are compared.
INTERNAL = 0x180000000


def _probed(path) -> str:
    """The probe's output without the shell's SigBlk (its own mask while it waits for grep: a shell may block
    every signal then; seen on CI) and with glibc's internal signals left out of SigIgn."""
    text = re.sub("SigBlk:\t[0-9a-f]+\n", "", path.read_text())
    return re.sub("SigIgn:\t([0-9a-f]+)", lambda m: f"SigIgn:\t{int(m.group(1), 16) & ~INTERNAL:016x}", text)


def _ctx(tmp_path, argv: list[str], alone: bool, cwd: str | None = None, name: str = "t") -> TaskContext:
    return TaskContext(task_id=name, job=name, iteration=None, argv=argv,
                       env={**os.environ, "PROBE": "yes"}, cwd=cwd or os.getcwd(), stdin=None,
                       stdout=str(tmp_path / f"{name}.out"), stderr=str(tmp_path / f"{name}.err"),
                       allocation=Allocation((("n0", (0,)),)), alone=alone)


def _run(ctx: TaskContext) -> tuple[object, int | None]:
    running = ProcessWorker().start(ctx)
    return running.proc, running.wait(None)


@pytest.fixture
def posix_spawn_path(monkeypatch):
    """As on a Python where Popen's C call is not used: a task alone goes through posix_spawn."""
    monkeypatch.setattr(spawn, "FORK_EXEC", False)


def test_a_task_started_alone_gets_what_popen_gives(tmp_path, posix_spawn_path):
    outs = {}
    keep = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(keep, True)   # made inheritable on purpose: the task does not get it all the same
    for alone in (False, True):
        proc, code = _run(_ctx(tmp_path, ["/bin/sh", "-c", PROBE], alone, name=f"a{alone}"))
        assert code == 0
        assert isinstance(proc, Spawned) is alone, proc   # alone: posix_spawn; else Popen
        outs[alone] = _probed(tmp_path / f"a{alone}.out")
    os.close(keep)
    # The next test reads the task's own blocked mask.
    assert outs[True] == outs[False] == f"own-session\nSigIgn:\t0000000000000000\nyes\n{os.getcwd()}\n0\n1\n2\n"


def test_a_task_started_alone_has_no_signal_blocked(tmp_path, posix_spawn_path):
    """Whatever the launching thread blocks: posix_spawn alone would hand its mask on."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    try:
        proc, code = _run(_ctx(tmp_path, ["grep", "SigBlk", "/proc/self/status"], alone=True, name="mask"))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert isinstance(proc, Spawned) and code == 0, proc
    assert (tmp_path / "mask.out").read_text() == "SigBlk:\t0000000000000000\n"


@pytest.mark.skipif(not spawn.FORK_EXEC, reason="Popen's C call is used on CPython 3.11-3.13 only")
def test_every_task_starts_through_popens_own_call_with_what_popen_gives(tmp_path, monkeypatch):
    keep = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(keep, True)
    outs = {}
    for name, cwd in (("here", None), ("there", str(tmp_path))):
        proc, code = _run(_ctx(tmp_path, ["/bin/sh", "-c", PROBE], alone=False, cwd=cwd, name=name))
        assert isinstance(proc, Spawned) and code == 0, proc
        outs[name] = _probed(tmp_path / f"{name}.out")
    monkeypatch.setattr(spawn, "FORK_EXEC", False)
    proc, code = _run(_ctx(tmp_path, ["/bin/sh", "-c", PROBE], alone=False, name="popen"))
    assert isinstance(proc, subprocess.Popen) and code == 0
    os.close(keep)
    popen = _probed(tmp_path / "popen.out")
    assert outs["here"] == popen == f"own-session\nSigIgn:\t0000000000000000\nyes\n{os.getcwd()}\n0\n1\n2\n"
    assert outs["there"] == popen.replace(os.getcwd(), str(tmp_path))


def test_the_environment_is_encoded_as_popen_does_or_left_to_it():
    assert spawn.encode_env({"A": "1", "B": "x=y", "C": "", "D": "\u00e9\udcff"}) == \
        [b"A=1", b"B=x=y", b"C=", b"D=\xc3\xa9\xff"]
    assert spawn.encode_env({}) == []
    for refused in ({"A=B": "1"}, {"A": "1\0"}, {"A\0": "1"}):   # Popen raises on these: it is left to say so
        assert spawn.encode_env(refused) is None


@pytest.mark.parametrize("fork_exec", [True, False])
def test_what_popen_refuses_it_still_refuses(tmp_path, monkeypatch, fork_exec):
    monkeypatch.setattr(spawn, "FORK_EXEC", spawn.FORK_EXEC and fork_exec)
    ctx = _ctx(tmp_path, ["/bin/true"], alone=True)
    ctx.env["BAD=NAME"] = "1"
    with pytest.raises(ValueError, match="illegal environment variable name"):
        _run(ctx)


@pytest.mark.parametrize("fork_exec", [True, False])
def test_exit_codes_and_errors_are_popens(tmp_path, monkeypatch, fork_exec):
    monkeypatch.setattr(spawn, "FORK_EXEC", spawn.FORK_EXEC and fork_exec)
    proc, code = _run(_ctx(tmp_path, ["sh", "-c", "exit 3"], alone=True))   # found along PATH
    assert isinstance(proc, Spawned) and code == 3
    for alone in (False, True):
        with pytest.raises(LaunchError, match="cannot run 'no-such-program': No such file or directory"):
            _run(_ctx(tmp_path, ["no-such-program"], alone))
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(LaunchError, match="Permission denied"):
        _run(_ctx(tmp_path, [str(script)], alone=True))
    with pytest.raises(LaunchError):   # a directory gone: Popen's error, as before
        _run(_ctx(tmp_path, ["pwd"], alone=False, cwd=str(tmp_path / "gone")))


def test_a_task_in_another_directory_goes_through_popen(tmp_path, posix_spawn_path):
    proc, code = _run(_ctx(tmp_path, ["pwd"], alone=True, cwd=str(tmp_path)))
    assert isinstance(proc, subprocess.Popen) and code == 0
    assert (tmp_path / "t.out").read_text().strip() == str(tmp_path)
