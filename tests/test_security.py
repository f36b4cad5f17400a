"""TLS and passwords, isolation of names, and a queue that redis-cli can read: no pickles anywhere."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qcgpj import Jobs, JobSpecError, Manager

from tests.cluster import Cluster
from tests.redisproc import free_port


@pytest.fixture
def tls_redis(tmp_path):
    """A private redis-server that speaks only TLS, with a self-signed certificate."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not found: cannot make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
                             str(cert), "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    import redis
    import time
    deadline = time.monotonic() + 10
    while True:   # waiting for an external server to come up: no event to wait on
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "TLS redis-server did not start"
            time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait()


def test_rediss_tls_end_to_end(tls_redis, tmp_path):
    c = Cluster(tls_redis, tmp_path)
    try:
        c.inputqueue()
        c.worker(1)
        m = c.manager()
        m.submit(Jobs().add(name="secure", exec="/bin/true"))
        assert m.wait4(["secure"], timeout=60) == {"secure": "SUCCEED"}
    finally:
        c.stop()


@pytest.mark.parametrize("name", ["a}b", "a:b", "x y", "{ns}", "a|b", "", "../x"])
def test_job_names_cannot_reach_other_keys(name):
    with pytest.raises(JobSpecError, match="name"):
        Jobs().add(name=name, exec="/bin/true")


def test_everything_in_redis_is_plain_text(redis_url, tmp_path):
    """What redis-cli shows is all there is: strings and JSON, never a pickle."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        c.worker(2)
        m = c.manager()
        m.submit(Jobs().add(name="a", exec="/bin/echo", args=["x"], iteration=3)
                 .add(name="b", exec="/bin/false", after=["a"]).add(name="c", exec="/bin/true", after=["b"]))
        m.wait4(["a", "b", "c"], timeout=60)
    finally:
        c.stop()
    r = m.client
    keys = list(r.scan_iter("qcgpj:{default}:*"))
    assert keys and all(k.startswith("qcgpj:{default}:") for k in r.scan_iter("*"))
    values = []
    for k in keys:
        kind = r.type(k)
        if kind == "hash":
            values += r.hvals(k)
        elif kind == "list":
            values += r.lrange(k, 0, -1)
        elif kind == "set":
            values += list(r.smembers(k))
        elif kind == "string":
            values.append(r.get(k))
        elif kind == "stream":
            values += [v for _id, fields in r.xrange(k) for v in fields.values()]
    assert all(v.isprintable() for v in values)
    spec = json.loads(r.hget("qcgpj:{default}:job:a", "spec"))
    assert spec["execution"] == {"exec": "/bin/echo", "args": ["x"]}
    assert r.hget("qcgpj:{default}:its:a", "1").startswith("SUCCEED|0|")


def test_manager_with_tls_url_needs_a_reachable_server():
    from qcgpj import ConnectionError as QConnectionError
    with pytest.raises(QConnectionError, match="cannot reach Redis"):
        Manager(f"rediss://127.0.0.1:{free_port()}/0")


SECRET = "pw-Secret-9"


def _shown_by_ps(pid: int) -> str:
    """A process's command line as `ps` shows it to every user of the machine (/proc/PID/cmdline is world-readable,
    where /proc/PID/environ is its owner's only)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_processes_qcgpj_starts_do_not_show_the_password(tmp_path):
    """An allocation's worker (the batch script `qcgpj alloc serve` submits), the bench's services and the scale
    workload's processes had the Redis URL on their command lines: a password in it showed in `ps` to every user
    of the (shared) node. They get it by the environment now, and still serve the queue."""
    from qcgpj.alloc import AllocQueue
    from qcgpj.bench import BenchConfig, Services, stop_processes
    from qcgpj.scalebench import ScaleConfig, start_processes
    from qcgpj.slurm import batch_script
    from tests.cluster import REPO
    from tests.redisproc import RedisServer

    env = {k: v for k, v in os.environ.items() if k != "QCGPJ_REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    with RedisServer(password=SECRET) as server:
        q = AllocQueue(name="cpu", max_allocations=1, nodes=1, time="1h", wd=str(tmp_path), idle_grace=600,
                       worker_cmd=shlex.join([sys.executable, "-m", "qcgpj", "worker", "--cores", "1"]))
        script = tmp_path / "alloc.sh"
        script.write_text(batch_script(q, "alloc", server.url))
        assert SECRET not in _shown_by_ps(os.getpid()) and SECRET in server.url
        procs = [subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.DEVNULL,   # as Slurm runs it
                                  stderr=subprocess.DEVNULL, start_new_session=True)]
        bench = Services(BenchConfig(url=server.url, cores=1), "bench", str(tmp_path))
        try:
            bench.start()
            procs += start_processes(ScaleConfig(server.url, cores=1), "scale", 1, str(tmp_path))
            for ns in ("alloc", "bench", "scale"):     # each got the URL: its executor joined the queue
                Cluster(server.url, tmp_path, namespace=ns).wait_executors(Manager(server.url, namespace=ns))
            for p in procs + bench.procs:
                assert p.poll() is None
                assert SECRET not in _shown_by_ps(p.pid), _shown_by_ps(p.pid)
        finally:
            bench.stop()
            stop_processes(procs)


@pytest.mark.parametrize("query", ["?password={pw}", "?password={pw}&foo=1", "?socket_timeout=5&password={pw}"])
def test_a_password_given_as_a_url_option_is_not_shown(tmp_path, query):
    """redis-py takes the password from `?password=` too; errors and logs showed such a URL whole, password and
    all (the refused credentials, an unknown option), where they hide one given as `user:PASSWORD@`."""
    from tests.cluster import REPO
    from tests.redisproc import RedisServer
    env = {k: v for k, v in os.environ.items() if k != "QCGPJ_REDIS_URL"}
    env["PYTHONPATH"] = str(REPO)
    with RedisServer(password=SECRET) as server:
        for pw in ("wrong-" + SECRET, SECRET):
            url = f"redis://127.0.0.1:{server.port}/0" + query.format(pw=pw)
            res = subprocess.run([sys.executable, "-m", "qcgpj", "status", "--redis-url", url], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=60)
            assert SECRET not in res.stdout + res.stderr, res.stderr
            if pw != SECRET or "foo" in query:
                assert res.returncode == 1 and "password=***" in res.stderr, res.stderr
            else:
                assert res.returncode == 0, res.stderr


def test_a_tls_keys_passphrase_in_the_url_is_not_shown():
    from qcgpj import ConnectionError as QConnectionError
    with pytest.raises(QConnectionError) as err:   # redis-py passes ?ssl_password= to its TLS connection
        Manager(f"rediss://127.0.0.1:{free_port()}/0?ssl_password={SECRET}")
    assert SECRET not in str(err.value) and "ssl_password=***" in str(err.value)


def test_tasks_do_not_get_the_queues_password(tmp_path):
    """A worker given its URL in QCGPJ_REDIS_URL (as the README advises, and as an allocation's worker gets it)
    passed that variable on to every task, so a task's `env > run.log`, or any tool that reports its environment,
    gave away the queue's password. Tasks, processes and Python calls alike, now start without it."""
    import qcgpj
    from tests.redisproc import RedisServer
    with RedisServer(password=SECRET) as server:
        c = Cluster(server.url, tmp_path)
        c.env["QCGPJ_REDIS_URL"] = server.url
        try:
            m = c.serving(1)
            m.submit(Jobs().add(name="env", script="env > env.out").add(name="own", script="env > own.out",
                                                                       env={"QCGPJ_REDIS_URL": "mine"}))
            assert m.wait4(["env", "own"], timeout=60) == {"env": "SUCCEED", "own": "SUCCEED"}
            with qcgpj.Executor(server.url) as ex:
                seen = ex.submit(os.getenv, "QCGPJ_REDIS_URL").result(timeout=60)
        finally:
            c.stop()
    env = (tmp_path / "env.out").read_text()
    assert "QCGPJ_JOB=env" in env and SECRET not in env, env
    assert seen is None, seen   # a Python call's process (the function model)
    assert "QCGPJ_REDIS_URL=mine" in (tmp_path / "own.out").read_text()   # a job's own env is its own
