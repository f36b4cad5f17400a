"""Cancel, walltime and a task's end leave no process of the task behind: background children, setsid children
and (with a cgroup) setsid children re-parented to init. Real processes, found in the process table by a marker
in their argv (each test's own lingering program: a link to /bin/sleep with a unique name)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from qcgpj import Jobs, Manager
from qcgpj.workers import sweep


def processes(marker: str) -> list[int]:
    """Live processes whose program (argv[0]) has ``marker`` in it (a zombie's cmdline is empty)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read().split(b"\0")[0]:
                        found.append(int(name))
            except OSError:
                pass
    return found


def until(predicate, timeout: float = 60, what: str = "condition") -> None:
    """Wait for a condition outside the queue (a file, the process table), with a generous timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def lingerer(tmp_path):
    """The name of a program (a link to sleep) that only this test runs; whatever runs it is killed afterwards."""
    name = f"lingerer-{uuid.uuid4().hex[:12]}"
    (tmp_path / name).symlink_to("/bin/sleep")
    yield name
    sweep.signal_all(processes(name), signal.SIGKILL)


def cgroups_usable() -> bool:
    cg = sweep.CGROUPS.take()
    if cg is not None:
        sweep.CGROUPS.release(cg)
    return cg is not None


def gone(name: str) -> bool:
    return not processes(name)


# A script that ignores SIGTERM (and so do its children): only the SIGKILL that follows the grace ends them.
SPAWNER = "trap '' TERM; ./{L} 1000 & setsid ./{L} 1001 & touch started; wait"


@pytest.mark.parametrize("how", ["cancel", "walltime", "walltime-no-cgroup"])
def test_cancel_and_walltime_kill_background_and_setsid_children(tmp_path, lingerer, how):
    opts = {"cgroup": False} if how == "walltime-no-cgroup" else {}
    wt = None if how == "cancel" else "3s"
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="spawner", script=SPAWNER.format(L=lingerer), wt=wt, model_opts=opts))
        until(lambda: (tmp_path / "started").exists(), what="the task's start")
        until(lambda: len(processes(lingerer)) == 2, what="both children")
        if how == "cancel":
            m.cancel(["spawner"])
        state = m.wait4(["spawner"], timeout=120)["spawner"]
        assert state == ("CANCELED" if how == "cancel" else "FAILED")
        if how != "cancel":
            assert "walltime" in m.info("spawner")["message"]
    until(lambda: gone(lingerer), what="the task's children to be killed")


def test_a_task_that_exits_takes_its_background_children_along(tmp_path, lingerer):
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="quitter", script=f"./{lingerer} 1000 & touch started; exit 0"))
        assert m.wait4(["quitter"], timeout=120) == {"quitter": "SUCCEED"}
    assert (tmp_path / "started").exists()
    until(lambda: gone(lingerer), what="the lingering child to be killed")



def test_finishing_a_local_manager_ends_what_runs(tmp_path, lingerer):
    """finish() (also the end of a ``with Manager()`` block) waited up to 30 s for a running task, then returned
    and left its processes running after the program had ended; like QCG-PilotJob's finish, it now cancels what
    is not final, so running tasks are killed (here through SIGKILL: they ignore SIGTERM) before it returns."""
    m = Manager(cores=1, root_wd=str(tmp_path))
    m.submit(Jobs().add(name="runs", script=f"trap '' TERM; ./{lingerer} 1000 & wait")
             .add(name="waits", exec="/bin/true", after=["runs"]))
    until(lambda: len(processes(lingerer)) == 1, what="the task's start")
    m.finish()
    assert gone(lingerer)

ENDS_FIRST = """
import sys, time
from pathlib import Path
from qcgpj import Jobs, Manager
m = Manager(cores=1)
m.submit(Jobs().add(name="runs", script="trap '' TERM; ./{L} 1000 & touch started; wait")
         .add(name="queued", script="touch queued.ran"))
while not Path("started").exists():
    time.sleep(0.05)
"""


def test_a_local_script_that_ends_without_finish_leaves_no_task_behind(tmp_path, lingerer):
    """A local-mode script that ended without finish() (nor a with block) and without waiting left its running
    tasks running after it had exited, and dropped its queued jobs without a word. Its end now finishes the
    Manager (what runs is killed, what waits canceled), with a RuntimeWarning saying so."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    res = subprocess.run([sys.executable, "-c", ENDS_FIRST.format(L=lingerer)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert gone(lingerer), "a task outlived its script"
    lines = [ln for ln in res.stderr.splitlines() if "RuntimeWarning" in ln]   # a warning, logging set up or not
    assert len(lines) == 1 and "before Manager.finish(): 2 job(s) not final" in lines[0], res.stderr
    assert not (tmp_path / "queued.ran").exists()



# A local-mode script that is sent a signal while its task runs; the task writes "started" once set up.
SIGNALED = """
import sys, time
from pathlib import Path
from qcgpj import Jobs, Manager
m = Manager(cores=1)
m.submit(Jobs().add(name="runs", script=sys.argv[1]))
while not Path("started").exists():
    time.sleep(0.05)
print("running", flush=True)
m.wait4all()
"""
# A task that ends on SIGTERM, saying so (its child, in its process group, gets the signal too).
POLITE = "trap 'touch got-term; exit 3' TERM; echo $$ > task.pid; ./{L} 1000 & touch started; wait"


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, its parent gone and init not reaping yet, has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig, task", [("SIGTERM", POLITE), ("SIGHUP", POLITE), ("SIGTERM", SPAWNER)],
                         ids=["sigterm", "sighup", "sigterm-ignored"])
def test_a_local_script_ended_by_a_signal_ends_its_tasks_first(tmp_path, lingerer, sig, task):
    """A local-mode script killed by SIGTERM (a batch system, ``kill``) or SIGHUP (its terminal closed) ended at
    once by the default action, leaving its running tasks (each in a session of its own) running with no one to
    stop them. As ``qcgpj run`` does, its tasks now get SIGTERM, and SIGKILL with all they started once they end
    or after the grace (here they ignore SIGTERM); then the default action ends the script with its usual
    status."""
    signum = getattr(signal, sig)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    p = subprocess.Popen([sys.executable, "-c", SIGNALED, task.format(L=lingerer)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "running\n", p.communicate(timeout=60)[1]
        until(lambda: len(processes(lingerer)) == (1 if task == POLITE else 2), what="the task's children")
        p.send_signal(signum)
        _out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signum, err
    until(lambda: gone(lingerer), what="the task's children to end")
    if task == POLITE:
        assert (tmp_path / "got-term").exists()            # asked first: SIGTERM
        until(lambda: not alive(int((tmp_path / "task.pid").read_text())), what="the task to end")


def test_a_local_manager_keeps_the_users_handler_and_gives_the_default_back(tmp_path):
    """The handler of a local Manager is set only over the default action, and the default is back once the
    last local Manager finished."""
    mine = lambda *_: None   # noqa: E731
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with Manager(cores=1, root_wd=str(tmp_path)):
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    first, second = Manager(cores=1, root_wd=str(tmp_path)), Manager(cores=1, root_wd=str(tmp_path))
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    first.finish()
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)   # the second still lives
    second.finish()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_setsid_orphan_is_held_by_the_tasks_cgroup(tmp_path, lingerer):
    if not cgroups_usable():
        pytest.skip("no writable cgroup v2 here")
    # The subshell exits at once, so the setsid child is re-parented to init: out of reach of the scan.
    script = (f"(setsid ./{lingerer} 1000 &); "
              f"for i in $(seq 3000); do pgrep -f '^./{lingerer} ' >/dev/null && break; sleep 0.01; done")
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="daemonizer", script=script, model_opts={"cgroup": True}))
        assert m.wait4(["daemonizer"], timeout=120) == {"daemonizer": "SUCCEED"}
    until(lambda: gone(lingerer), what="the re-parented child to be killed")


def test_the_scan_finds_a_session_and_its_descendants(tmp_path, lingerer):
    """session_and_descendants by itself: a setsid grandchild is found through its parent, this process never."""
    proc = subprocess.Popen(["/bin/bash", "-c", f"./{lingerer} 1000 & setsid ./{lingerer} 1001 & wait"],
                            cwd=tmp_path, start_new_session=True)
    try:
        until(lambda: len(processes(lingerer)) == 2, what="both children")
        found = sweep.session_and_descendants(proc.pid)
        assert set(processes(lingerer)) | {proc.pid} <= found
        assert os.getpid() not in found and 1 not in found
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_task_cgroups_are_reused_and_removed(tmp_path):
    if not cgroups_usable():
        pytest.skip("no writable cgroup v2 here")
    root = Path(sweep._cgroup_root() or "/nonexistent")
    gone_proc = subprocess.Popen(["true"])
    gone_proc.wait()
    stale = root / f"qcgpj-{gone_proc.pid}"          # left by an executor that was killed
    (stale / "1").mkdir(parents=True)
    sweep.CGROUPS.tidy()                             # so that the next task sets the pool up again
    made = sweep.CGROUPS._made
    with Manager(cores=2, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="t", exec="/bin/true", iteration=40, model_opts={"cgroup": True}))
        assert m.wait4(["t"], timeout=120) == {"t": "SUCCEED"}
    assert sweep.CGROUPS._made - made <= 4           # reused: about one per core, not one per task
    assert not stale.exists()
    assert not (root / f"qcgpj-{os.getpid()}").exists()   # the executor removed its own when it stopped


def test_a_task_with_a_cgroup_that_cannot_start_says_why(tmp_path):
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="missing", exec="./nosuchprogram", model_opts={"cgroup": True}))
        assert m.wait4(["missing"], timeout=120) == {"missing": "FAILED"}
        assert "cannot run './nosuchprogram': No such file or directory" in m.info("missing")["message"]
