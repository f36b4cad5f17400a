"""Canceling part or all of an iterative job leaves consistent bookkeeping: no iteration stays EXECUTING, every
canceled iteration counts as finished, and the job ends as QCG-PilotJob's does (FAILED when some iterations were
canceled, CANCELED when it was canceled whole), its dependants OMITTED. On a real Redis and in local mode."""
from __future__ import annotations

import time

from qcgpj import Jobs
from tests.test_behaviour import env, wait, wait_state   # noqa: F401  (env is a fixture)

GATE = "echo $$ > pid_${it}; touch ran_${it}; while [ ! -e go ]; do sleep 0.05; done"


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _gone(pid: int, timeout: float = 30) -> bool:
    """The process ended (polled: no event tells a test that another process group was killed). A zombie has
    ended too: an orphan's is reaped by PID 1, which on some machines does so only every few seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if _state(pid) in (None, "Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_cancel_whole_iterative_job(env):   # noqa: F811
    m, wd = env
    m.submit(Jobs().add(name="w", script=GATE, iteration=6).add(name="after_w", exec="/bin/true", after=["w"])
             .add(name="after_w1", exec="/bin/true", after=["w:1"]))
    wait_state(m, "w:0", "EXECUTING")
    assert m.cancel("w") == {"w": "canceled"}
    assert wait(m, ["w", "after_w", "after_w1"]) == {"w": "CANCELED", "after_w": "OMITTED", "after_w1": "OMITTED"}
    states = {it: r["state"] for it, r in m.iterations("w").items()}
    assert set(states.values()) == {"CANCELED"}, states
    info = m.info("w")
    assert info["iterations"] == {"total": 6, "start": 0, "finished": 6, "SUCCEED": 0, "FAILED": 0,
                                  "CANCELED": 6, "OMITTED": 0}
    for it in range(6):
        if (wd / f"pid_{it}").exists():
            assert m.info(f"w:{it}")["state"] == "CANCELED"
            pid = int((wd / f"pid_{it}").read_text() or 0)
            assert not pid or _gone(pid), f"w:{it} still runs after its job was canceled"


def test_cancel_some_iterations(env):   # noqa: F811
    m, wd = env
    m.submit(Jobs().add(name="s", script=GATE, iteration=7).add(name="after_s", exec="/bin/true", after=["s"]))
    wait_state(m, "s:0", "EXECUTING")
    # s:0-3 run on the 4 cores; s:4-6 wait, s:5 maybe already claimed by the executor (its look-ahead)
    assert m.cancel(["s:1", "s:5"]) == {"s:1": "canceled", "s:5": "canceled"}
    (wd / "go").touch()
    assert wait(m, ["s", "after_s"]) == {"s": "FAILED", "after_s": "OMITTED"}
    assert [m.info(f"s:{i}")["state"] for i in range(7)] == ["SUCCEED", "CANCELED"] + ["SUCCEED"] * 3 + \
        ["CANCELED", "SUCCEED"]
    info = m.info("s")
    assert info["iterations"]["finished"] == 7 and info["iterations"]["CANCELED"] == 2
    assert info["message"] == "2 canceled of 7 iterations"
    assert not (wd / "ran_5").exists(), "a canceled iteration the executor had claimed ran anyway"
    assert m.cancel(["s:1"]) == {"s:1": "final"}
