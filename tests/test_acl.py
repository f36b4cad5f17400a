"""A Redis user restricted to the minimal ACL of the README runs a whole queue; one without it gets one clear line;
the settings check speaks from every command that starts a service and from submit.

The ACL below is the README's, for namespace 'acl': keys of that namespace only, and the commands qcgpj uses
(found by running every command under MONITOR and the ACL LOG); CONFIG GET is not among them, so the settings
check says in one line that it was skipped.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from qcgpj import Jobs, Manager, RedisPermissionError
from tests.cluster import REPO, Cluster, qcgpj_cmd
from tests.test_reliability import wait_for
from tests.redisproc import RedisServer

NS = "acl"
MINIMAL_ACL = ["~qcgpj:{acl}:*", "resetchannels", "-@all", "+ping", "+hello", "+evalsha", "+script|load",
               "+script|exists", "+get", "+set", "+del", "+incrby", "+exists", "+expire", "+@hash", "+@list",
               "+@set", "+@sortedset", "+@stream"]


@pytest.fixture(scope="module")
def server():
    with RedisServer(aof=True) as s:
        c = s.client()
        c.execute_command("ACL", "SETUSER", "qcg", "reset", "on", ">pw", *MINIMAL_ACL)
        # the same but for another namespace's keys, and one without the stream commands
        c.execute_command("ACL", "SETUSER", "elsewhere", "reset", "on", ">pw",
                          *["~qcgpj:{other}:*" if a.startswith("~") else a for a in MINIMAL_ACL])
        c.execute_command("ACL", "SETUSER", "nostream", "reset", "on", ">pw",
                          *[a for a in MINIMAL_ACL if a != "+@stream"])
        yield s


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:pw@127.0.0.1:{server.port}/0"


def qcgpj(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("QCGPJ_REDIS_URL", None)
    return subprocess.run(qcgpj_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_minimal_acl_runs_a_whole_queue(server, tmp_path):
    c = Cluster(url(server, "qcg"), tmp_path, namespace=NS)
    try:
        m = c.serving(2)
        m.submit(Jobs().add(name="a", exec="/bin/echo", args=["${it}"], iteration=4)
                 .add(name="b", exec="/bin/false", after=["a:${it}"], iteration=4)
                 .add(name="c", exec="/bin/true", after=["b"])
                 .add(name="long", exec="/bin/sleep", args=["60"]))
        assert m.wait4(["a", "b", "c"], timeout=60) == {"a": "SUCCEED", "b": "FAILED", "c": "OMITTED"}
        assert m.cancel(["long"]) == {"long": "canceled"}
        assert m.info("a:2")["state"] == "SUCCEED" and m.resources()["total_cores"] == 2
        (tmp_path / "more.json").write_text('[{"name": "d", "execution": {"exec": "/bin/true"}}]')
        sub = qcgpj("submit", "more.json", "--redis-url", c.url, "-n", NS, cwd=tmp_path)
        assert sub.returncode == 0 and "submitted 1" in sub.stdout, sub.stderr
        note = sub.stderr.strip().splitlines()
        assert len(note) == 1 and "could not check Redis's persistence and eviction settings" in note[0], note
        done = qcgpj("wait", "d", "--redis-url", c.url, "-n", NS, "--timeout", "60", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        c.stop()
    logs = c.logs()
    assert "Traceback" not in logs and "NOPERM" not in logs, logs
    assert "could not check Redis's persistence" in (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("user, args", [
    ("elsewhere", ["submit", "jobs.json"]), ("nostream", ["submit", "jobs.json"]), ("elsewhere", ["status"]),
    ("nostream", ["worker", "--cores", "1"]), ("elsewhere", ["inputqueue"]),
])
def test_without_the_acl_one_clear_line(server, tmp_path, user, args):
    (tmp_path / "jobs.json").write_text('[{"name": "x", "execution": {"exec": "/bin/true"}}]')
    res = qcgpj(*args, "--redis-url", url(server, user), "-n", NS, cwd=tmp_path)
    lines = [ln for ln in res.stderr.strip().splitlines()   # services log their start at INFO
             if "could not check Redis's persistence" not in ln and " INFO " not in ln]
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "denied a command to this user (ACL)" in lines[0] and "Minimal ACL" in lines[0], lines[0]
    # a refused worker left no registration behind: it stayed ALIVE, and jobs placed on it waited its TTL
    live = [e for e, h in Manager(url(server, "qcg"), namespace=NS).store.executors().items()
            if h.get("state") == "ALIVE"]
    assert live == [], live
    assert "x" not in Manager(url(server, "qcg"), namespace=NS).list()   # a refused submit wrote nothing


def test_api_raises_a_permission_error(server):
    from qcgpj import Manager
    m = Manager(url(server, "elsewhere"), namespace=NS)
    with pytest.raises(RedisPermissionError, match="ACL"):
        m.submit(Jobs().add(name="x", exec="/bin/true"))


def test_settings_warnings_come_from_submit_and_the_worker(redis_url, tmp_path):
    """A Redis that keeps nothing on disk (the session's test server) is warned of by every command that starts
    a service and by submit, not only by the InputQueue."""
    (tmp_path / "jobs.json").write_text('[{"name": "x", "execution": {"exec": "/bin/true"}}]')
    sub = qcgpj("submit", "jobs.json", "--redis-url", redis_url, cwd=tmp_path)
    assert sub.returncode == 0 and "keeps nothing on disk" in sub.stderr, sub.stderr
    worker = qcgpj("worker", "--redis-url", redis_url, "-n", "idle", "--exit-when-idle", "--cores", "1",
                   cwd=tmp_path)
    assert worker.returncode == 0 and "keeps nothing on disk" in worker.stderr, worker.stderr


def test_housekeeping_runs_under_the_minimal_acl(server, tmp_path):
    """`qcgpj remove`, and the InputQueue's forgetting of departed executors (--executor-retention, a day by
    default) and of final jobs (--keep-finished), used UNLINK, which the minimal ACL does not grant: remove said
    'denied', and the InputQueue exited with that error once its first departed executor was due."""
    c = Cluster(url(server, "qcg"), tmp_path, namespace=NS)
    try:
        m = c.manager()
        m.submit(Jobs().add(name="gone", exec="/bin/true"))
        m.cancel(["gone"])                  # no executor yet: canceled at once, final
        res = qcgpj("remove", "gone", "--redis-url", c.url, "-n", NS, cwd=tmp_path)
        assert res.returncode == 0 and "gone" not in m.list(), res.stderr
        iq = c.inputqueue("--executor-retention", "1s", "--keep-finished", "0")
        worker = c.worker(1, "--id", "leaving")
        c.wait_executors(m)
        m.submit(Jobs().add(name="kept-not", exec="/bin/true"))
        wait_for(m, lambda: "kept-not" not in m.list(), what="the final job removed by the InputQueue")
        worker.terminate()
        worker.wait(30)
        wait_for(m, lambda: "leaving" not in m.resources(departed=True)["executors"], what="the executor forgotten")
        assert iq.poll() is None
    finally:
        c.stop()
    assert "NOPERM" not in c.logs() and "denied" not in c.logs(), c.logs()


def test_top_runs_under_the_minimal_acl(server, tmp_path):
    """`qcgpj top` asked Redis for TIME, which the minimal ACL does not grant: 'denied' instead of a frame."""
    m = Cluster(url(server, "qcg"), tmp_path, namespace=NS).manager()
    m.submit(Jobs().add(name="seen-by-top", exec="/bin/true", iteration=3))
    for args in (["--once"], ["--json"]):
        res = qcgpj("top", *args, "--redis-url", url(server, "qcg"), "-n", NS, cwd=tmp_path)
        assert res.returncode == 0 and "denied" not in res.stderr, res.stderr
    assert json.loads(res.stdout)["time"] > 0


def test_big_cancels_and_waits_run_under_the_minimal_acl(server, tmp_path):
    """A cancel of more than one batch (names on stdin), `cancel --all` and wait4all's read of the job list
    (remove.lua's 'listed') need nothing beyond the minimal ACL."""
    from qcgpj import Manager
    m = Manager(url(server, "qcg"), namespace=NS)
    names = [f"big{i}" for i in range(2500)]
    jobs = Jobs()
    for n in names:
        jobs.add(name=n, exec="/bin/true")
    m.submit(jobs)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("QCGPJ_REDIS_URL", None)
    common = ["--redis-url", url(server, "qcg"), "-n", NS]
    some = subprocess.run(qcgpj_cmd("cancel", "-", *common), input="\n".join(names[:1200]), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert some.returncode == 0, some.stderr
    rest = qcgpj("cancel", "--all", *common, cwd=tmp_path)   # (and what earlier tests left open)
    assert rest.returncode == 0 and rest.stdout.startswith("canceled "), rest.stdout + rest.stderr
    states = m.wait4all(timeout=60)
    assert {states[n] for n in names} == {"CANCELED"}
    gone = qcgpj("remove", "--finished", *common, cwd=tmp_path)   # the next tests share the namespace
    assert gone.returncode == 0, gone.stderr
