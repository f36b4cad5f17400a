"""qcgpj.compat: QCG-PilotJob's Manager/LocalManager/Jobs and executor API, with its return shapes. The
expectations follow what QCG-PilotJob's own API, local-manager and executor tests check, said in our words.
Local mode, and a real redis-server with an executor."""
from __future__ import annotations

import datetime
import json
import os

import pytest

from qcgpj.compat import Jobs, LocalManager, Manager, QCGPJExecutor
from qcgpj.compat.errors import TimeoutElapsed
from qcgpj.compat.templates import BasicTemplate
from qcgpj.errors import ArgumentError, JobSpecError, QcgpjError
from tests.cluster import Cluster


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    m = LocalManager(["--log", "debug", "--nodes", "n0:2", "--wd", str(tmp_path)], {"log_level": "debug"})
    yield m
    m.finish()


def test_resources_and_system_status(local):
    assert local.resources() == {"total_nodes": 1, "total_cores": 2, "used_cores": 0, "free_cores": 2}
    st = local.system_status()
    assert st["Resources"]["TotalCores"] == 2 and st["JobStats"]["TotalJobs"] == 0


def test_submit_wait_and_the_answer_shapes(local, tmp_path):
    jobs = Jobs().add(name="a", exec="/bin/echo", args=["hi"], stdout="a.out") \
        .add({"name": "it", "script": "echo ${it} > it_${it}"}, iteration=3) \
        .add_std({"name": "b", "execution": {"exec": "/bin/date"}, "dependencies": {"after": ["a"]}})
    assert [d["name"] for d in jobs.jobs()] == ["a", "it", "b"] == jobs.ordered_job_names()
    assert local.submit(jobs) == ["a", "it", "b"]
    assert local.wait4(["a", "it", "b"]) == {"a": "SUCCEED", "it": "SUCCEED", "b": "SUCCEED"}
    assert local.list() == {n: {"status": "SUCCEED"} for n in ("a", "it", "b")}   # none waits: no inQueue
    assert local.status("a") == {"jobs": {"a": {"status": 0, "data": {"jobName": "a", "status": "SUCCEED"}}}}
    data = local.info("it", withChilds=True)["jobs"]["it"]["data"]
    assert data["iterations"] == {"start": 0, "stop": 3, "total": 3, "finished": 3, "failed": 0}
    assert [(c["iteration"], c["state"], c["runtime"]["exit_code"]) for c in data["childs"]] == \
        [(0, "SUCCEED", 0), (1, "SUCCEED", 0), (2, "SUCCEED", 0)]
    parsed = local.info_parsed(["a", "it"], withChilds=True)
    assert parsed["a"].status == "SUCCEED" and parsed["a"].exit_code == 0 and len(parsed["it"].childs) == 3
    assert (tmp_path / "a.out").read_text() == "hi\n" and (tmp_path / "it_2").read_text() == "2\n"
    assert local.is_status_finished("FAILED") and not local.is_status_finished("EXECUTING")
    local.remove("b")
    assert list(local.list()) == ["a", "it"]
    local.cleanup()


def test_cancel_and_wait_for_any(local):
    local.submit(Jobs().add(name="long", script="sleep 300").add(name="short", script="exit 2"))
    assert local.wait4_any_job_finish(60) == ("short", "FAILED")
    local.cancel("long")
    assert local.wait4("long", timeout=60) == {"long": "CANCELED"}
    assert local.wait4_any_job_finish(0.2) == ("long", "CANCELED")   # its end was queued meanwhile
    with pytest.raises(TimeoutElapsed):   # nothing left to tell: QCG-PilotJob raises too
        local.wait4_any_job_finish(0.2)
    local.wait4all(timeout_secs=60)


def test_errors_are_qcgpj_errors(local, tmp_path):
    with pytest.raises(QcgpjError, match="'nope'"):
        local.status("nope")
    with pytest.raises(JobSpecError, match="unknownAttribute"):
        Jobs().add(name="x", exec="true", unknownAttribute=1)
    with pytest.raises(QcgpjError, match="cannot write"):
        Jobs().add(name="x", exec="true").save_to_file(str(tmp_path / "no" / "such" / "dir.json"))
    with pytest.raises(ArgumentError, match="--nodes"):
        LocalManager(["--nodes"])


def test_qcg_pilotjob_error_names_catch_what_compat_raises(local, tmp_path):
    """Scripts import QCG-PilotJob's errors from qcg.pilotjob.api.errors; here there was no such module."""
    from qcgpj.compat import errors
    from qcgpj.compat.errors import (ConnectionError, FileError, InternalError, InvalidJobDescriptionError,
                                     JobNotDefinedError, QCGPJMAError, ServiceError, TimeoutElapsed,
                                     WrongArgumentsError)
    assert set(errors.__all__) == {"QCGPJMAError", "InternalError", "InvalidJobDescriptionError",
                                   "JobNotDefinedError", "ConnectionError", "WrongArgumentsError", "FileError",
                                   "ServiceError", "TimeoutElapsed"}
    assert all(issubclass(getattr(errors, n), QCGPJMAError) for n in errors.__all__)
    assert QCGPJMAError is QcgpjError and not any(issubclass(c, InternalError) for c in (ConnectionError, ServiceError))
    local.submit(Jobs().add(name="slow", script="sleep 300"))
    with pytest.raises(TimeoutElapsed):
        local.wait4("slow", timeout=0.1)
    with pytest.raises(TimeoutElapsed):
        local.wait4all(timeout_secs=0.1)
    with pytest.raises(InvalidJobDescriptionError, match="unknownAttribute"):
        Jobs().add(name="x", exec="true", unknownAttribute=1)
    with pytest.raises(InvalidJobDescriptionError, match="already"):
        Jobs().add(name="x", exec="true").add(name="x", exec="true")
    with pytest.raises(JobNotDefinedError, match="'y'"):
        Jobs().add(name="x", exec="true").remove("y")
    with pytest.raises(JobNotDefinedError, match="'nope'"):
        local.status("nope")
    with pytest.raises(WrongArgumentsError):
        local.status(5)
    with pytest.raises(FileError, match="cannot read"):
        Jobs().load_from_file(str(tmp_path / "missing.json"))
    with pytest.raises(FileError, match="cannot write"):
        Jobs().add(name="x", exec="true").save_to_file(str(tmp_path / "no" / "dir.json"))
    with pytest.raises(ConnectionError):
        Manager("redis://127.0.0.1:1/0").list()
    local.cancel("slow")

def test_jobs_files_round_trip(tmp_path):
    path = str(tmp_path / "jobs.json")
    Jobs().add(name="a", exec="echo", args=["1"], numCores={"exact": 2}).add(name="b", script="true", after="a") \
        .save_to_file(path)
    again = Jobs().load_from_file(path)
    assert again.jobs() == json.loads((tmp_path / "jobs.json").read_text())



def test_a_saved_iteration_scheduler_is_loaded_back(local, tmp_path):
    """save_to_file kept numCores' min and dropped its scheduler: loaded back, each iteration took every free core
    instead of its share."""
    path = str(tmp_path / "jobs.json")
    split = {"name": "split-into", "params": {"parts": 2}}
    Jobs().add(name="s", exec="true", iteration=2, numCores={"min": 1, "scheduler": split}) \
        .add(name="m", exec="true", iteration=2, numCores={"min": 1, "scheduler": "maximum-iters"}).save_to_file(path)
    saved = json.loads((tmp_path / "jobs.json").read_text())
    assert [d["resources"]["numCores"] for d in saved] == \
        [{"min": 1, "scheduler": split}, {"min": 1, "scheduler": {"name": "maximum-iters"}}]
    local.submit(Jobs().load_from_file(path))
    assert local.wait4(["s", "m"]) == {"s": "SUCCEED", "m": "SUCCEED"}
    infos = local.info_parsed(["s", "m"], withChilds=True)
    assert [c.total_cores for n in ("s", "m") for c in infos[n].childs] == [1, 1, 1, 1]


def test_add_std_takes_the_description_as_keywords_too():
    """QCG-PilotJob's add_std(job_attrs=None, **kw_attrs) merges both; here keywords were a TypeError."""
    jobs = Jobs().add_std(name="k", execution={"exec": "date"}, resources={"numCores": {"exact": 2}}) \
        .add_std({"name": "d", "iteration": {"stop": 3}}, execution={"exec": "cat"}, dependencies={"after": ["k"]})
    assert jobs.jobs() == [
        {"name": "k", "execution": {"exec": "date"}, "resources": {"numCores": {"exact": 2}}},
        {"name": "d", "execution": {"exec": "cat"}, "dependencies": {"after": ["k"]}, "iteration": {"stop": 3}}]
    for bad in ({}, {"name": "x"}, {"name": "x", "execution": {"stdout": "out"}}):
        with pytest.raises(JobSpecError, match="execution"):
            Jobs().add_std(**bad)
    with pytest.raises(JobSpecError, match="must be an object"):
        Jobs().add_std("x", name="y")


def test_run_times_are_given_as_qcg_pilotjob_gives_them(local):
    """QCG-PilotJob's info gives runtime.rtime as a timedelta's text ('0:00:02.027212', which its own scripts read
    with strptime) and JobInfo.time as a timedelta; here they were a float of seconds."""
    local.submit(Jobs().add(name="t", exec="/bin/true").add(name="its", exec="/bin/true", iteration=2))
    local.wait4all()
    data = local.info(["t", "its"], withChilds=True)["jobs"]
    rtimes = [data["t"]["data"]["runtime"]["rtime"]] + [c["runtime"]["rtime"] for c in data["its"]["data"]["childs"]]
    for rtime in rtimes:
        datetime.datetime.strptime(rtime, "%H:%M:%S.%f")
    parsed = local.info_parsed(["t", "its"], withChilds=True)
    times = [parsed["t"].time] + [c.time for c in parsed["its"].childs]
    assert all(isinstance(t, datetime.timedelta) and datetime.timedelta(0) <= t < datetime.timedelta(minutes=5)
               for t in times), times

def test_api_submits_get_the_submit_time_variables(local, tmp_path):
    """QCG-PilotJob's service substitutes ${rcnt} (its submit count, from 1), ${uniq}, ${sname}... and $$ in what
    its API submits too; here $$HOME reached the shell as its PID and ${uniq} as an empty variable."""
    shell = "echo $$HOME ${uniq} ${rcnt} ${sname}"
    local.submit(Jobs().add(name="a", exec="/bin/sh", args=["-c", shell], stdout="a.out"))
    local.submit([{"name": "b_${rcnt}", "execution": {"exec": "/bin/sh", "args": ["-c", shell], "stdout": "b.out"}}])
    assert local.wait4(["a", "b_2"]) == {"a": "SUCCEED", "b_2": "SUCCEED"}
    for out, rcnt in (("a.out", "1"), ("b.out", "2")):
        home, uniq, got, sname = (tmp_path / out).read_text().split()
        assert (home, got, sname) == (os.environ["HOME"], rcnt, "local") and len(uniq) == 36, out


def test_info_has_the_working_directory(local, tmp_path):
    """QCG-PilotJob's info gives a job's (and an iteration's) working directory as runtime.wd, JobInfo.wdir; here
    wdir was always None."""
    local.submit(Jobs().add(name="a", exec="/bin/pwd", stdout="a.out").add(name="b", exec="/bin/true", wd="in_${jname}")
                 .add(name="its", exec="/bin/true", wd="its_${it}", iteration=2))
    local.wait4all()
    assert (tmp_path / "a.out").read_text().strip() == local.info_parsed("a")["a"].wdir == str(tmp_path)
    assert local.info("b")["jobs"]["b"]["data"]["runtime"]["wd"] == str(tmp_path / "in_b")
    parsed = local.info_parsed(["its", "its:1"], withChilds=True)
    assert [c.wdir for c in parsed["its"].childs] == [str(tmp_path / "its_0"), str(tmp_path / "its_1")]
    assert parsed["its:1"].wdir == str(tmp_path / "its_1") and parsed["its"].wdir is None   # as there: per task

def test_the_executor_the_run_record_and_info_resolve_a_task_s_variables_alike(local, tmp_path):
    """A task's ${...} are substituted by its executor, and again afterwards to say where its stderr went (the run
    record, `qcgpj wait`) and in which directory it ran (compat's info): every variable, in wd and stderr, for a
    single job and for iterations by values and from a start, must name what the executor made."""
    from qcgpj import record
    from qcgpj.jobspec import JobSpec
    every = "${jname}.${it}.${itval}.${ncores}.${nnodes}.${nlist}"
    local.submit(Jobs()
                 .add(name="s", script="pwd >&2; exit 1", numCores=2, wd="w-" + every, stderr="e-" + every)
                 .add(name="v", script="pwd >&2; exit 1", iteration={"values": ["p", "q"]},
                      wd="${root_wd}/v-" + every, stderr="${ncores}/" + every)
                 .add(name="r", script="pwd >&2; exit 1", iteration={"start": 3, "stop": 5}, wd="r${it}",
                      stderr="${root_wd}/r-" + every))
    local.wait4all()
    tasks = ["s", "v:0", "v:1", "r:3", "r:4"]
    entries = record.write(local.m, ["s", "v", "r"], str(tmp_path), {})[1]
    made = {str(p) for p in tmp_path.rglob("*") if p.is_file() and p.name != record.RECORD_FILE}
    assert {entries[t]["stderr"] for t in tasks} == made and len(made) == 5, made   # the files the tasks wrote
    for t in tasks:
        ran_in = open(entries[t]["stderr"]).read().strip()
        assert local.info_parsed(t)[t].wdir == ran_in, t
        job, _, it = t.partition(":")
        spec = JobSpec.from_json(json.dumps(local.m.info(job)["spec"]))
        seen_from_a_client = record.stderr_path(spec, None, int(it) if it else None, local.m.info(t).get("nodes"))
        assert os.path.join(tmp_path, seen_from_a_client) == entries[t]["stderr"], t
    assert entries["v:1"]["stderr"] == str(tmp_path / "v-v.1.q.1.1.n0" / "1" / "v.1.q.1.1.n0")
    assert entries["s"]["stderr"] == str(tmp_path / "w-s...2.1.n0" / "e-s...2.1.n0")


# ---------------------------------------------------------------------- the executor API (EasyVVUQ's calls)
class EchoTemplate(BasicTemplate):
    @staticmethod
    def template():
        return ("{'name': '${name}', 'execution': {'exec': '/bin/sh', "
                "'args': ['-c', 'echo ${word} $$QCG_PM_EXEC_API_JOB_ID > ${name}.txt'], 'venv': '${venv}', "
                "'modules': ${modules}}, 'resources': {'numCores': {'exact': ${cores}}}}",
                {"word": "default", "venv": "", "modules": [], "cores": 1})


def test_executor_submit_fills_the_template(tmp_path, monkeypatch):
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    with QCGPJExecutor(wd=str(tmp_path), resources="n0:2", reserve_core=True) as ex:
        f1 = ex.submit(EchoTemplate.template, {"name": "one", "word": "from-args"}, word="from-kwargs")
        f2 = ex.submit(EchoTemplate.template, {"name": "two"}, None, cores=2)
        assert f1.result() == {"one": "SUCCEED"} and f2.result(timeout=60) == {"two": "SUCCEED"}
        assert f1.done() and not f1.running() and not f1.cancelled()
        f3 = ex.submit(BasicTemplate.template, name="slow", exec="/bin/sleep", args=["300"])
        assert f3.cancel() and f3.cancelled() and f3.result(timeout=60) == {"slow": "CANCELED"}
        with pytest.raises(JobSpecError, match=r"\$\{name\}"):
            ex.submit(BasicTemplate.template, exec="true")
    assert (tmp_path / "one.txt").read_text() == "from-kwargs one\n"
    assert (tmp_path / "two.txt").read_text() == "default two\n"



def test_local_mode_with_a_queue_url_set_contacts_no_queue(tmp_path, monkeypatch):
    """QCGPJ_REDIS_URL exported for the qcgpj commands: QCGPJExecutor(resources=...) connected to that queue (and
    read its jobs) before refusing, so a stale URL said 'cannot reach Redis' for a run that needs none."""
    monkeypatch.setenv("QCGPJ_REDIS_URL", "redis://127.0.0.1:1/0")      # nothing listens on port 1
    with pytest.raises(ArgumentError, match="QCGPJ_REDIS_URL is set: unset it, or give the queue's URL"):
        QCGPJExecutor(wd=str(tmp_path), resources="1")
    with pytest.raises(ArgumentError, match="QCGPJ_REDIS_URL is set"):
        LocalManager(["--nodes", "1"])


def test_a_template_value_missing_is_also_a_key_error(tmp_path, monkeypatch):
    """QCG-PilotJob raises KeyError (its own tests expect it); here it was a JobSpecError only."""
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    with QCGPJExecutor(wd=str(tmp_path), resources="1") as ex:
        with pytest.raises(KeyError, match=r"job 'tj': template placeholder \$\{exec\} has no value$") as got:
            ex.submit(BasicTemplate.template, name="tj")
    assert isinstance(got.value, JobSpecError) and (got.value.job, got.value.field) == ("tj", None)

@pytest.mark.parametrize("call, wrong", [((5,), r"first argument must be a template function .*got integer 5$"),
                                         ((BasicTemplate,), r"BasicTemplate' must return the template text"),
                                         ((BasicTemplate.template, [1]), r"argument 1 after the template must be a dict")],
                         ids=["not-callable", "class", "values-not-dict"])
def test_executor_submit_of_a_wrong_argument_says_which(redis_url, call, wrong):
    """``submit(5)`` (EasyVVUQ users can mistype) was a TypeError traceback from inside submit: now qcgpj's
    ArgumentError in one line naming the argument, with nothing written to the queue."""
    with QCGPJExecutor(redis_url=redis_url) as ex:
        with pytest.raises(ArgumentError, match=wrong) as got:
            ex.submit(*call)
        assert "\n" not in str(got.value)
        assert ex.qcgpj_manager.list() == {} and ex.qcgpj_manager.m.store.job_names() == []


# ---------------------------------------------------------------------- a real queue
def test_manager_on_a_queue(tmp_path, redis_url):
    cluster = Cluster(redis_url, tmp_path)
    try:
        cluster.serving(2)
        m = Manager(redis_url)
        assert m.resources()["total_cores"] == 2
        m.submit(Jobs().add(name="q", script="echo $QCG_PM_NPROCS > q.txt", numCores=2))
        assert m.wait4("q", timeout=120) == {"q": "SUCCEED"}
        assert m.status(["q"])["jobs"]["q"]["data"] == {"jobName": "q", "status": "SUCCEED"}
        assert (tmp_path / "q.txt").read_text() == "2\n"
        m.submit(Jobs().add(name="w", exec="/bin/true", wd=str(tmp_path / "w_${it}"), iteration=1))
        assert m.wait4("w", timeout=120) == {"w": "SUCCEED"}
        assert m.info_parsed("w:0")["w:0"].wdir == str(tmp_path / "w_0")   # an absolute wd is known on a queue too
        assert m.info_parsed("q")["q"].wdir is None   # the worker's directory is not
        with pytest.raises(ArgumentError, match="local mode"):
            os.environ["QCGPJ_REDIS_URL"] = redis_url
            try:
                LocalManager([])
            finally:
                del os.environ["QCGPJ_REDIS_URL"]
    finally:
        cluster.stop()


def test_an_executor_made_on_a_full_queue_reads_none_of_its_jobs(redis_url):
    """QCGPJExecutor(redis_url=...) on a queue of 20,000 jobs took 0.45 s: its Manager read every job, to know
    which had ended before it (wait4_any_job_finish tells later ends only). It tells its own jobs' ends: nothing
    to read when made, so making one costs the same Redis commands whatever the queue holds."""
    other = Manager(redis_url)
    server = other.m.client

    def commands_to_make() -> tuple[int, QCGPJExecutor]:
        before = server.info("stats")["total_commands_processed"]
        made = QCGPJExecutor(redis_url=redis_url)
        return server.info("stats")["total_commands_processed"] - before, made

    other.submit(Jobs().add(name="o0", exec="/bin/true"))
    few, first = commands_to_make()
    other.submit([{"name": f"o{i}", "execution": {"exec": "/bin/true"}} for i in range(1, 3000)])
    many, ex = commands_to_make()
    assert many == few
    f = ex.submit(BasicTemplate.template, name="mine", exec="/bin/true")   # no executor: canceled before it runs
    assert f.cancel() and f.result(60) == {f"{ex.prefix}mine": "CANCELED"}
    other.cancel(["o1"])
    assert ex.qcgpj_manager.wait4_any_job_finish(60) == (f"{ex.prefix}mine", "CANCELED")
    with pytest.raises(TimeoutElapsed):   # the queue's other jobs are not this executor's to tell
        ex.qcgpj_manager.wait4_any_job_finish(0)
    for e in (first, ex):
        e.shutdown()
