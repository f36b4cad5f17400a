"""qcgpj.Executor: Python calls as jobs, with real futures, in local mode and on a real redis-server."""
from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import futures_funcs as ff
from cluster import Cluster
from qcgpj import Executor, Jobs, QueueFullError
from qcgpj.funcjobs import DependencyFailed, FunctionError, SerializationError
from test_outage import wait_for_log
from test_reliability import wait_for

TESTS = str(Path(__file__).resolve().parent)
REPO = str(Path(TESTS).parent)
TIMEOUT = 120


@pytest.fixture(params=["local", "redis"])
def ex(request, tmp_path, monkeypatch):
    """An Executor in local mode, or on a private redis-server with an InputQueue and a worker process."""
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)
    cluster = None
    if request.param == "local":
        executor = Executor(cores=2)
    else:
        cluster, executor = serving(request.getfixturevalue("redis_url"), tmp_path)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)
    if cluster is not None:
        cluster.stop()


@pytest.fixture
def remote(redis_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster, executor = serving(redis_url, tmp_path)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)
    cluster.stop()


def serving(url: str, tmp_path: Path) -> tuple[Cluster, Executor]:
    """An InputQueue and a 2-core worker that can import this folder's functions, and an Executor on them."""
    cluster = Cluster(url, tmp_path)
    cluster.env["PYTHONPATH"] = TESTS + os.pathsep + cluster.env["PYTHONPATH"]
    cluster.serving(2)
    return cluster, Executor(url)


def test_return_values_submit_and_map(ex):
    f = ex.submit(ff.square, 12)
    assert f.result(TIMEOUT) == 144
    assert list(ex.map(ff.square, range(20), timeout=TIMEOUT)) == [x * x for x in range(20)]
    assert list(ex.map(ff.add, range(25), range(25), chunksize=4, timeout=TIMEOUT)) == [2 * x for x in range(25)]
    w = ex.submit(ff.where)
    here = w.result(TIMEOUT)
    assert here["cwd"] == os.getcwd() and here["task"] == w.job
    assert here["cores"] in ("0", "1")


def test_standard_waiting_works(ex):
    fs = [ex.submit(ff.square, i) for i in range(6)]
    seen = []
    fs[0].add_done_callback(lambda f: seen.append(f.result()))
    done, not_done = cf.wait(fs, timeout=TIMEOUT)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=TIMEOUT)) == [i * i for i in range(6)]
    assert seen == [0]


def test_exception_type_and_remote_traceback(ex):
    f = ex.submit(ff.fail, 3)
    exc = f.exception(TIMEOUT)
    assert type(exc) is ValueError and str(exc) == "bad value 3"
    assert "futures_funcs.py" in exc.remote_traceback and "in fail" in exc.remote_traceback
    assert ex.manager.status(f.job)[f.job] == "FAILED"
    with pytest.raises(ValueError):
        list(ex.map(ff.fail, [1, 2], chunksize=2, timeout=TIMEOUT))


@pytest.mark.parametrize("serializer", ["json", "cloudpickle"])
def test_exception_keeps_its_arguments(ex, serializer):
    """The function's own class, built from its own arguments: an exception whose constructor takes two was a
    FunctionError, and KeyError(1) came back as KeyError('1')."""
    ex.serializer = serializer
    exc = ex.submit(ff.out_of_range, 12).exception(TIMEOUT)
    assert type(exc) is ff.OutOfRange and exc.args == (12, 10) and (exc.value, exc.limit) == (12, 10)
    assert "in out_of_range" in exc.remote_traceback
    exc = ex.submit(ff.missing, 1).exception(TIMEOUT)
    assert type(exc) is KeyError and exc.args == (1,)
    exc = ex.submit(ff.leave, 4).exception(TIMEOUT)
    assert type(exc) is SystemExit and exc.code == 4


def test_an_exception_that_cannot_be_built_again_is_one_line(ex):
    """Its FunctionError held the whole remote traceback in its message (many lines), not its one line."""
    exc = ex.submit(ff.unbuildable).exception(TIMEOUT)
    assert isinstance(exc, FunctionError) and "\n" not in str(exc), str(exc)
    assert str(exc).endswith("(futures_funcs.Unbuildable: no good)") and "in unbuildable" in exc.remote_traceback


def test_an_exception_whose_str_fails_is_still_the_functions_own(tmp_path, monkeypatch):
    """Its warm process died sending it (str() raised there): the future had FunctionError('... the process running
    the call exited with code 1 before returning') instead of the function's exception."""
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)
    with Executor(cores=1) as ex:
        exc = ex.submit(ff.unprintable).exception(TIMEOUT)
        assert type(exc) is ff.Unprintable and "in unprintable" in exc.remote_traceback


def test_futures_as_arguments_are_dependencies(ex):
    a = ex.submit(ff.square, 3)
    b = ex.submit(ff.add, a, 1)                      # 10
    c = ex.options(after=[b]).submit(ff.add, b, a)   # 19
    chunk = list(ex.map(ff.square, [5, 6, 7], chunksize=3, timeout=TIMEOUT))
    assert chunk == [25, 36, 49]
    assert c.result(TIMEOUT) == 19
    info = ex.manager.info(c.job)
    assert [str(d) for d in ex.manager.info(b.job)["spec"]["dependencies"]["after"]] == [a.job]
    assert info["state"] == "SUCCEED"


def test_crash_fails_the_call_and_the_executor_lives(ex):
    seg = ex.submit(ff.segfault)
    ex_ = seg.exception(TIMEOUT)
    assert isinstance(ex_, FunctionError) and "SIGSEGV" in str(ex_)
    gone = ex.submit(ff.hard_exit, 0).exception(TIMEOUT)
    assert isinstance(gone, FunctionError) and "exited with code 0" in str(gone)
    left = ex.submit(ff.leave, 4).exception(TIMEOUT)
    assert isinstance(left, SystemExit)
    assert ex.submit(ff.square, 9).result(TIMEOUT) == 81


def test_json_serializer_names_the_bad_argument(ex):
    with pytest.raises(SerializationError, match="keyword argument 'b'.*set"):
        ex.submit(ff.add, 1, b={1, 2})
    with pytest.raises(SerializationError, match="argument 0"):
        ex.submit(ff.square, object())
    with pytest.raises(SerializationError, match="lambda"):
        ex.submit(lambda: 1)
    assert ex.manager.list() == {}


def test_json_refusal_says_why_the_function_has_no_name(redis_url):
    """Every function JSON cannot name was called 'a lambda, a closure or defined in __main__', a bound method
    of a builtin ("a,b".split) too: the reason now fits what was passed."""
    def inner(x):
        return x

    def in_main(x):
        return x
    in_main.__module__, in_main.__qualname__ = "__main__", "in_main"
    ex = Executor(redis_url)
    try:
        for fn, why in [("a,b".split, "it is a method bound to a str object"),
                        (ex.manager.list, "it is a method bound to a Manager object"),
                        (str.split, "it is a method of the builtin type str"),
                        (lambda x: x, "it is a lambda"),
                        (inner, "it is defined inside a function (a closure)"),
                        (in_main, "it is defined in __main__ (the script)"),
                        (functools.partial(ff.add, 1), "it is a partial object, not a function"),
                        (object(), "it is an object object, not callable")]:
            with pytest.raises(SerializationError) as exc:
                ex.submit(fn, ",")
            assert f"in another process ({why}): " in str(exc.value), (fn, str(exc.value))
        assert ex.manager.list() == {}
    finally:
        ex.shutdown()


def test_cancel_kills_the_running_call(remote, tmp_path):
    pidfile = tmp_path / "pid"
    f = remote.submit(ff.hang, str(pidfile))
    m = remote.manager
    wait_for(m, lambda: pidfile.exists() and pidfile.read_text(), timeout=TIMEOUT, what="the call to start")
    pid = int(pidfile.read_text())
    assert os.path.exists(f"/proc/{pid}")
    assert f.cancel()
    wait_for(m, lambda: not os.path.exists(f"/proc/{pid}"), timeout=TIMEOUT, what="the call's process to end")
    assert m.status(f.job)[f.job] == "CANCELED"
    assert remote.submit(ff.square, 5).result(TIMEOUT) == 25


def test_running_is_true_while_the_call_runs(ex, tmp_path):
    """running() stayed False all through a call (the resolver marks no future running): now it is the state the
    call's executor reported to the queue, and a call waiting for another is not running."""
    g = ex.submit(ff.when_told, str(tmp_path / "started"), str(tmp_path / "go"), 7)
    f = ex.options(after=[g]).submit(ff.square, 3)
    wait_for(ex.manager, g.running, timeout=30, what="running() of the call started")
    assert not g.done() and not f.running()
    (tmp_path / "go").touch()
    assert (g.result(TIMEOUT), f.result(TIMEOUT)) == (7, 9)
    assert not g.running() and not f.running()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_long_lived_executor_keeps_few_results(remote):
    """The warm pool keeps recent results for the calls that take them as arguments: 4,096 results of 64 kB
    held 256 MB in the executor for good, long after their jobs were removed. Now at most CACHED_BYTES."""
    m = remote.manager
    pid = next(int(e["pid"]) for e in m.store.executors().values() if e.get("state") == "ALIVE")
    size = 64_000
    assert list(remote.map(ff.blob, [size] * 40, chunksize=1)) == ["x" * size] * 40   # warm: processes, buffers
    before = _rss_kb(pid)
    assert all(len(r) == size for r in remote.map(ff.blob, [size] * 800, chunksize=1))
    grown = _rss_kb(pid) - before
    assert grown < 24 * 1024, f"the executor grew by {grown} kB over 800 results of 64 kB (51 MB)"


def test_a_worker_stopped_after_calls_leaves_nothing_to_kill(redis_url, tmp_path, monkeypatch):
    """A drained worker's warm processes end with it: its supervisor used to find them and kill them, with
    "executor N exited with code 0: killed 2 task process(es) it left running" at every restart."""
    monkeypatch.chdir(tmp_path)
    cluster, executor = serving(redis_url, tmp_path)
    try:
        assert list(executor.map(ff.square, range(4), chunksize=1)) == [0, 1, 4, 9]
        m = executor.manager
        pid = next(int(e["pid"]) for e in m.store.executors().values() if e.get("state") == "ALIVE")
        warm = [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
        assert warm, "no warm process"
    finally:
        executor.shutdown()
        cluster.stop()
    assert [p.returncode for p in cluster.procs] == [0, 0]
    log = (tmp_path / "worker.log").read_text()
    assert "left running" not in log, log
    assert not [p for p in warm if os.path.exists(f"/proc/{p}")]


def test_walltime_kills_the_call(remote, tmp_path):
    pidfile = tmp_path / "pid"
    f = remote.options(wt="2s").submit(ff.hang, str(pidfile))
    exc = f.exception(TIMEOUT)
    assert isinstance(exc, FunctionError) and "walltime" in str(exc)
    assert not os.path.exists(f"/proc/{int(pidfile.read_text())}")


def test_functions_and_executables_depend_on_each_other(remote, tmp_path):
    m = remote.manager
    m.submit(Jobs().add(name="prep", script=f"echo ready > {tmp_path}/flag"))
    f = remote.options(after=["prep"]).submit(ff.read_file, str(tmp_path / "flag"))
    m.submit(Jobs().add(name="post", script=f"echo done > {tmp_path}/post", after=[f.job]))
    assert f.result(TIMEOUT) == "ready"
    assert m.wait4(["post"], timeout=TIMEOUT) == {"post": "SUCCEED"}


def test_output_goes_to_the_task_files(ex, tmp_path):
    f = ex.options(stdout="talk.out", stderr="talk.err").submit(ff.talk, "hello")
    assert f.result(TIMEOUT) == 5
    assert (tmp_path / "talk.out").read_text() == "hello\n"
    assert (tmp_path / "talk.err").read_text() == "to stderr\n"


def test_results_readable_with_rq(remote, redis_url):
    from rq.job import Job
    from rq.serializers import JSONSerializer
    f = remote.submit(ff.square, 11)
    assert f.result(TIMEOUT) == 121
    job = Job.fetch(f.rq_id, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    assert job.get_status() == "finished" and job.return_value() == 121
    assert job.func_name == "futures_funcs.square" and job.args == [11]


def test_a_result_written_past_maxmemory_waits_for_memory(remote, redis_url, tmp_path):
    """Redis reached maxmemory while a call ran: its result could not be written. The call used to end anyway
    (a traceback in the worker's log, the task SUCCEEDED) and its future raised 'failed' with no result; now the
    pool waits for memory (one line) and the future gets the value."""
    f = remote.submit(ff.when_file, str(tmp_path / "go"), 7)
    m = remote.manager
    wait_for(m, lambda: m.status(f.job)[f.job] == "EXECUTING", timeout=TIMEOUT, what="the call running")
    r = redis.Redis.from_url(redis_url)
    try:
        r.config_set("maxmemory", "1")
        (tmp_path / "go").touch()
        wait_for_log(tmp_path / "worker.log", "function pool")
    finally:
        r.config_set("maxmemory", "0")
    assert f.result(TIMEOUT) == 7
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log and log.count("function pool: Redis unavailable") == 1, log


def test_a_call_submitted_past_maxmemory_is_refused_as_queue_full(remote, redis_url):
    """Past maxmemory a call's submit said 'the staged batch ... was incomplete (it expired, or Redis lost it)'
    (the staging list was refused, the commit found it empty): it is QueueFullError, as Manager.submit's, with
    nothing written; once memory is freed the same call goes through."""
    r = redis.Redis.from_url(redis_url)
    before = r.keys("*")
    try:
        r.config_set("maxmemory", "1")
        for submit in (lambda: remote.submit(ff.square, 3), lambda: remote.map(ff.square, range(10), chunksize=5)):
            with pytest.raises(QueueFullError, match="out of memory.*nothing was written"):
                submit()
        assert sorted(r.keys("*")) == sorted(before)
    finally:
        r.config_set("maxmemory", "0")
    assert remote.submit(ff.square, 3).result(TIMEOUT) == 9


def test_cloudpickle_runs_closures(ex):
    base = 5
    ex.serializer = "cloudpickle"
    f = ex.submit(lambda x: x + base, 2)
    assert f.result(TIMEOUT) == 7


def test_shutdown_cancel_futures(remote, tmp_path):
    pidfile = tmp_path / "pid"
    f = remote.submit(ff.hang, str(pidfile))
    remote.shutdown(wait=True, cancel_futures=True)
    assert f.cancelled()
    with pytest.raises(RuntimeError):
        remote.submit(ff.square, 1)


def test_a_call_canceled_in_the_queue_is_a_cancelled_future(tmp_path, monkeypatch):
    """A call canceled by name (``qcgpj cancel``, or a sibling in a map chunk) left its future not cancelled(), and
    exception() returned a CancelledError where the standard library's raises it."""
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)
    with Executor(cores=1) as ex:
        ex.manager.submit(Jobs().add(name="hold", script="while [ ! -e go ]; do sleep 0.05; done"))
        f = ex.options(after="hold").submit(ff.square, 2)
        ex.manager.cancel([f.job])
        assert cf.wait([f], timeout=TIMEOUT).done == {f}
        assert f.cancelled()
        with pytest.raises(cf.CancelledError):
            f.exception()
        (tmp_path / "go").touch()


def test_two_local_executors_at_once(tmp_path, monkeypatch):
    """Each local Executor has its own in-process Redis: a call's result goes to the one that holds it."""
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)
    with Executor(cores=1) as one, Executor(cores=1) as two:
        a, b = one.submit(ff.square, 3), two.submit(ff.square, 4)
        assert (a.result(TIMEOUT), b.result(TIMEOUT)) == (9, 16)
        assert one.submit(ff.add, a, 1).result(TIMEOUT) == 10


def test_cloudpickle_error_is_a_qcgpj_error(ex):
    import threading
    ex.serializer = "cloudpickle"
    with pytest.raises(SerializationError, match="cannot be serialized with cloudpickle"):
        ex.submit(ff.square, threading.Lock())
    assert ex.manager.list() == {}


def test_a_call_the_queue_refuses_leaves_no_staging_list(redis_url, tmp_path, monkeypatch):
    """A duplicate name or an unknown dependency, found by the submit script, left the call's staged rows for an
    hour (the staging list's TTL): the script now deletes them with its refusal."""
    from qcgpj.errors import DependencyError, DuplicateJobError
    monkeypatch.chdir(tmp_path)
    r = redis.Redis.from_url(redis_url)
    with Executor(redis_url) as ex:
        ex.options(name="x").submit(ff.square, 1)
        with pytest.raises(DuplicateJobError):
            ex.options(name="x").submit(ff.square, 2)
        with pytest.raises(DependencyError, match="unknown job 'nope'"):
            ex.options(after="nope").submit(ff.square, 3)
        assert list(r.scan_iter(match="*:stage:*")) == []
        assert list(ex.manager.list()) == ["x"]
        ex.shutdown(wait=False, cancel_futures=True)


def test_warm_processes_run_this_tree(tmp_path, monkeypatch):
    """qcgpj reached through sys.path only (as this suite's conftest does, or a script's sys.path.insert): the
    warm processes imported their code from another qcgpj installed (or from none)."""
    monkeypatch.setenv("PYTHONPATH", TESTS)
    monkeypatch.chdir(tmp_path)
    with Executor(cores=1) as ex:
        assert ex.submit(ff.fnproc_file).result(TIMEOUT) == os.path.join(REPO, "workers", "fnproc.py")


def test_options_mistakes_are_argument_errors(redis_url, tmp_path, monkeypatch):
    """options(cores=2) was a TypeError from inside ('Options.__init__() got an unexpected keyword argument'),
    options(after=5) "'int' object is not iterable"."""
    from qcgpj import ArgumentError
    monkeypatch.chdir(tmp_path)
    with Executor(redis_url) as ex:
        with pytest.raises(ArgumentError, match=r"Executor.options: unknown option 'cores' \(known: numCores, "):
            ex.options(cores=2)
        with pytest.raises(ArgumentError, match="Executor.options: 'after' must be .*, got integer 5"):
            ex.options(after=5)
        assert ex.options(after="x")._opts.after == ("x",) and ex.options(after=["x", "y"])._opts.after == ("x", "y")
        assert ex.manager.list() == {}
        ex.shutdown(wait=False)


EXIT_SCRIPT = """
import sys
import time
from qcgpj import Executor
import futures_funcs as ff
ex = Executor(cores=1)
fs = [ex.submit(ff.write_later, f"out{i}", str(i)) for i in range(3)]
if sys.argv[1] == "nowait":
    ex.shutdown(wait=False)
"""


@pytest.mark.parametrize("how", ["exit", "nowait"])
def test_a_local_script_that_ends_first_still_gets_its_calls_run(tmp_path, how):
    """As with the standard library's executors, calls submitted in local mode run to their end when the script
    ends without waiting (no shutdown, or shutdown(wait=False)): the services live in the script's process, and
    they used to die with it, the calls queued or running lost without a word."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    res = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, how], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [(tmp_path / f"out{i}").read_text() for i in range(3)] == ["0", "1", "2"]


def test_a_calls_rq_job_expires_with_its_result(redis_url, tmp_path, monkeypatch):
    """rq's job hash of a call that ran had no TTL (rq's worker gives it the result's, rq.job.Job.cleanup): in a
    campaign of Python calls every rq:job key (1.3 kB) stayed for ever after its results expired. Now the
    executor gives it ``result_ttl`` with the outcome, as rq does."""
    monkeypatch.chdir(tmp_path)
    cluster = Cluster(redis_url, tmp_path)
    cluster.env["PYTHONPATH"] = TESTS + os.pathsep + cluster.env["PYTHONPATH"]
    cluster.serving(2)
    r = redis.Redis.from_url(redis_url)
    try:
        with Executor(redis_url, result_ttl=600) as ex:
            ok, bad = ex.submit(ff.square, 3), ex.submit(ff.fail, 1)
            assert list(ex.map(ff.square, range(3))) == [0, 1, 4] and list(ex.map(ff.square, range(4), chunksize=2))
            assert ok.result(TIMEOUT) == 9 and isinstance(bad.exception(TIMEOUT), ValueError)
        keys = list(r.scan_iter(match="rq:*"))
        assert {k.split(b":")[1] for k in keys} == {b"job", b"results"}
        assert {k: r.ttl(k) for k in keys if not 0 < r.ttl(k) <= 600} == {}
    finally:
        cluster.stop()


def test_remove_takes_the_rq_keys_of_the_calls_it_removes(redis_url, tmp_path, monkeypatch):
    """`remove --finished` removed a call's qcgpj job but left its rq keys (rq:job 1.3 kB, rq:results 4.8 kB) for
    result_ttl (a day), and for ever those of calls that never ran (canceled, omitted): removal now takes them."""
    monkeypatch.chdir(tmp_path)
    cluster = Cluster(redis_url, tmp_path)
    cluster.env["PYTHONPATH"] = TESTS + os.pathsep + cluster.env["PYTHONPATH"]
    m = cluster.serving(2)
    r = redis.Redis.from_url(redis_url)
    try:
        with Executor(redis_url) as ex:
            m.submit(Jobs().add(name="hold", script="while [ ! -e go ]; do sleep 0.05; done"))
            waiting = ex.options(after="hold").submit(ff.square, 2)
            ok, bad = ex.submit(ff.square, 3), ex.submit(ff.fail, 1)
            omitted = ex.submit(ff.add, bad, 1)
            assert list(ex.map(ff.square, range(3))) == [0, 1, 4] and list(ex.map(ff.square, range(4), chunksize=2))
            assert waiting.cancel()
            (tmp_path / "go").touch()
            assert ok.result(TIMEOUT) == 9 and isinstance(omitted.exception(TIMEOUT), DependencyFailed)
        assert m.wait4all(timeout=TIMEOUT)["hold"] == "SUCCEED"
        assert len(list(r.scan_iter(match="rq:job:*"))) == 4 + 3 + 2   # calls, and a map's iterations
        m.remove(finished=True)
        assert m.list() == {} and list(r.scan_iter(match="rq:*")) == []
    finally:
        cluster.stop()


def test_a_call_that_ends_while_redis_is_away_gets_its_result(fresh_redis, tmp_path, monkeypatch):
    """A call that returned while Redis restarted lost its outcome (one ERROR in the worker's log) and its task was
    still reported SUCCEED: the future raised FunctionError('job ...: failed') and a call given it as an argument
    failed, though nothing had failed. The warm process's outcome now waits for Redis, as the executor's reports do."""
    monkeypatch.chdir(tmp_path)
    cluster = Cluster(fresh_redis.url, tmp_path)
    cluster.env["PYTHONPATH"] = TESTS + os.pathsep + cluster.env["PYTHONPATH"]
    m = cluster.serving(2)
    ex = Executor(fresh_redis.url)
    try:
        started, go, log = tmp_path / "started", tmp_path / "go", tmp_path / "worker.log"
        f = ex.submit(ff.when_told, str(started), str(go), 7)
        wait_for(m, started.exists, timeout=TIMEOUT, what="the call to start")
        fresh_redis.kill()
        go.touch()
        deadline = time.monotonic() + TIMEOUT   # Redis is away: no event to wait on, the worker's log says it tried
        while "function pool: " not in log.read_text():
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.02)
        fresh_redis.restart()
        assert f.result(TIMEOUT) == 7
        assert ex.submit(ff.add, f, 1).result(TIMEOUT) == 8
        assert m.status(f.job)[f.job] == "SUCCEED"
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        cluster.stop()
