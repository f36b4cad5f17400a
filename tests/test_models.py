"""Execution models as plugins: MPI launchers, venv and modules, and a plugin another package adds."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qcgpj import Jobs, Manager
from qcgpj.errors import JobSpecError
from qcgpj.workers import available_models, get_worker


def executable(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def two_nodes(tmp_path):
    """Local mode pretending to own two nodes of two cores (the launchers only need their names)."""
    m = Manager(nodes="n1:2,n2:2", root_wd=str(tmp_path))
    yield m, tmp_path
    m.finish()


def test_openmpi_gets_hosts_and_ranks(two_nodes):
    m, wd = two_nodes
    fake = executable(wd / "mpirun", 'echo "$@" > mpirun.args\nshift 6\nexec "$@"\n')
    m.submit(Jobs().add(name="mpi", exec="/bin/echo", args=["rank"], model="openmpi", numNodes=2, numCores=2,
                        model_opts={"mpirun": str(fake), "mpirun_args": ["--bind-to", "core"]}, stdout="mpi.out"))
    assert m.wait4(["mpi"], timeout=60) == {"mpi": "SUCCEED"}
    assert (wd / "mpirun.args").read_text().split() == [
        "--bind-to", "core", "--host", "n1:2,n2:2", "-np", "4", "/bin/echo", "rank"]


def test_intelmpi_gets_a_machinefile(two_nodes):
    m, wd = two_nodes
    fake = executable(wd / "mpirun", 'echo "$@" > mpirun.args\ncat "$2" > machinefile.seen\n')
    m.submit(Jobs().add(name="impi", exec="./app", model="intelmpi", numNodes=2, numCores=1,
                        model_opts={"mpirun": str(fake)}))
    assert m.wait4(["impi"], timeout=60) == {"impi": "SUCCEED"}
    args = (wd / "mpirun.args").read_text().split()
    assert args[0] == "-machinefile" and args[2:] == ["-n", "2", "./app"]
    assert (wd / "machinefile.seen").read_text() == "n1:1\nn2:1\n"


def test_venv_and_modules_are_applied(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "module", 'echo "$@" >> modules.log\n')   # stands in for Lmod's module command
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{old_path}"
    try:
        with Manager(cores=1, root_wd=str(tmp_path)) as m:
            m.submit(Jobs().add(name="py", exec="python", args=["-c", "import sys; print(sys.prefix)"],
                                venv=str(venv), modules=["gcc/12", "openmpi"], stdout="py.out"))
            assert m.wait4(["py"], timeout=60) == {"py": "SUCCEED"}
    finally:
        os.environ["PATH"] = old_path
    assert (tmp_path / "py.out").read_text().strip() == str(venv)
    assert (tmp_path / "modules.log").read_text().splitlines() == ["load gcc/12", "load openmpi"]


def test_a_third_party_plugin_is_found_through_entry_points(tmp_path, monkeypatch):
    (tmp_path / "shoutplugin.py").write_text(textwrap.dedent('''
        from qcgpj.workers.base import ProcessWorker

        class ShoutWorker(ProcessWorker):
            """Runs the task's command through tr, upper-casing what it prints."""
            name = "shout"

            def command(self, ctx):
                import shlex
                return ["/bin/sh", "-c", " ".join(map(shlex.quote, ctx.argv)) + " | tr a-z A-Z"]
    '''))
    dist = tmp_path / "shoutplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shoutplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qcgpj.workers]\nshout = shoutplugin:ShoutWorker\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "shout" in available_models()
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="loud", exec="/bin/echo", args=["hello"], model="shout", stdout="loud.out"))
        assert m.wait4(["loud"], timeout=60) == {"loud": "SUCCEED"}
    assert (tmp_path / "loud.out").read_text() == "HELLO\n"
    assert type(get_worker("shout")).__name__ == "ShoutWorker"


def test_unknown_model_is_refused_in_local_mode_and_fails_the_task_on_a_queue(tmp_path, cluster):
    """Local mode's executor runs in the client's process, whose models are known: bad input at submit, nothing
    written. A queue's executors may have plugins the client lacks: there the task fails, saying why."""
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        with pytest.raises(JobSpecError, match="job 'odd', field 'execution.model': unknown execution model "
                                               "'nosuchmodel' \\(known: default, "):
            m.submit(Jobs().add(name="odd", exec="/bin/true", model="nosuchmodel"))
        assert m.list() == {}
    m = cluster.serving(1)
    m.submit(Jobs().add(name="odd", exec="/bin/true", model="nosuchmodel"))
    assert m.wait4(["odd"], timeout=60) == {"odd": "FAILED"}
    assert "unknown execution model 'nosuchmodel'" in m.info("odd")["message"]


def test_python_callable_model(tmp_path):
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="call", exec="os:makedirs", args=[str(tmp_path / "made")], model="python")
                 .add(name="boom", exec="os:makedirs", args=[str(tmp_path / "made")], model="python",
                      after=["call"]))
        assert m.wait4(["call", "boom"], timeout=60) == {"call": "SUCCEED", "boom": "FAILED"}
    assert (tmp_path / "made").is_dir()


def _no_tracebacks_logged(caplog) -> None:
    logged = [r for r in caplog.records if r.exc_info and r.levelno > 10]
    assert not logged, [r.getMessage() for r in logged]


def test_python_call_failures_are_the_tasks_own(tmp_path, caplog):
    """An exception is the task's message with the traceback in its stderr file, not in the worker's log;
    sys.exit ends the task by its code instead of leaving it EXECUTING."""
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="raises", exec="json:loads", args=["{bad"], model="python", stderr="raises.err")
                 .add(name="exit0", exec="sys:exit", model="python")
                 .add(name="exitmsg", exec="sys:exit", args=["no luck"], model="python"))
        states = m.wait4(["raises", "exit0", "exitmsg"], timeout=60)
        assert states == {"raises": "FAILED", "exit0": "SUCCEED", "exitmsg": "FAILED"}
        assert m.info("raises")["message"].startswith("python call failed: JSONDecodeError: Expecting")
        assert m.info("exitmsg")["message"] == "sys.exit('no luck')"
    err = (tmp_path / "raises.err").read_text()
    assert "Traceback (most recent call last)" in err and "JSONDecodeError" in err
    _no_tracebacks_logged(caplog)


def test_launch_failure_is_the_tasks_message_with_the_traceback_in_its_stderr(tmp_path, caplog):
    script = tmp_path / "noexec"
    script.write_bytes(b"\x7fnot a program\n")
    script.chmod(0o755)
    with Manager(cores=1, root_wd=str(tmp_path)) as m:
        m.submit(Jobs().add(name="bad", exec=str(script), stderr="bad.err"))
        assert m.wait4(["bad"], timeout=60) == {"bad": "FAILED"}
        assert m.info("bad")["message"].startswith("launch failed: OSError: [Errno 8] Exec format error")
    assert "Traceback (most recent call last)" in (tmp_path / "bad.err").read_text()
    _no_tracebacks_logged(caplog)
