"""Bad input a user can type that once escaped as a traceback or left the queue changed: each is one line, a
QcgpjError, and writes nothing."""
from __future__ import annotations

import logging

import pytest

from qcgpj import Jobs, Manager, QcgpjError, RedisPermissionError, connection
from qcgpj.errors import ArgumentError, ConnectionError, JobSpecError, UnknownJobError


@pytest.mark.parametrize("url", ["redis://[::1/0", "redis://u:secret@[::1/0", "redis+cluster://[::1"])
def test_unclosed_ipv6_bracket_in_url_is_a_bad_url_without_the_password(url):
    # urlsplit's ValueError('Invalid IPv6 URL') escaped connect (and safe_url) as a traceback
    with pytest.raises(ConnectionError, match=r"^bad Redis URL .*Invalid IPv6 URL$") as exc:
        connection.connect(url)
    assert "secret" not in str(exc.value)


def test_submit_by_a_read_only_user_is_one_line_without_a_stage_warning(redis_server, redis_url, caplog):
    # RPUSH denied: the cleanup's DEL was denied too and warned of a staging list that was never written
    c = redis_server.client()
    c.execute_command("ACL", "SETUSER", "ro", "reset", "on", ">pw", "~*", "+@read", "+@connection", "+info")
    ro_url = redis_url.replace("redis://", "redis://ro:pw@")
    with caplog.at_level(logging.WARNING, logger="qcgpj.submission"):
        with pytest.raises(RedisPermissionError, match="'rpush'"):
            Manager(ro_url).submit(Jobs().add(name="a", exec="/bin/true"))
    assert not [r for r in caplog.records if r.name == "qcgpj.submission"], caplog.text
    assert c.keys("*") == []


@pytest.mark.parametrize("kw", [{"cores": 4}, {"nodes": "n0:4"}])
def test_local_mode_cores_or_nodes_with_a_queue_are_refused(redis_url, kw):
    # Manager(url, cores=4), and so 'qcgpj run f --redis-url U --cores 4', ignored them without a word
    with pytest.raises(ArgumentError, match="only in local mode"):
        Manager(redis_url, **kw)


def test_a_megabyte_name_is_clipped_in_the_one_line_error(redis_url):
    # each message quoted the whole name (twice for a JobSpecError): a 1 MB line
    huge, m = "x" * 10**6, Manager(redis_url)
    for call in (lambda: m.status([huge]), lambda: m.info(huge + ":x"), lambda: m.cancel([huge]),
                 lambda: m.remove([huge]), lambda: Jobs().add(name=huge, exec="/bin/true"),
                 lambda: Jobs().add(name="a", exec="/bin/true", after=[huge]),
                 lambda: m.submit(Jobs().add(name="a", exec="/bin/true"), batch_id=huge)):
        with pytest.raises(QcgpjError) as exc:
            call()
        assert len(str(exc.value)) < 1000 and "\n" not in str(exc.value), str(exc.value)[:300]
    assert m.client.keys("*") == []


def test_a_local_working_directory_that_cannot_be_made_is_an_argument_error(tmp_path):
    # Manager(root_wd=<a file>), LocalManager(['--wd', <a file>]): FileExistsError from inside the executor
    (tmp_path / "f").write_text("")
    from qcgpj.compat.api import LocalManager
    for make in (lambda: Manager(root_wd=str(tmp_path / "f"), store="fakeredis"),
                 lambda: LocalManager(["--wd", str(tmp_path / "f" / "x")], {})):
        with pytest.raises(ArgumentError, match="cannot make the working directory"):
            make()


@pytest.mark.parametrize("ttl", ["x", 0, -5, True])
def test_a_bad_result_ttl_is_refused_before_anything_starts(ttl):
    # 'x' failed each submit with rq's TimeoutFormatError; 0 made every call 'failed' (its result was gone)
    from qcgpj import Executor
    with pytest.raises(ArgumentError, match="result_ttl"):
        Executor(result_ttl=ttl)


def test_an_empty_batch_id_is_refused_not_taken_for_none(redis_url):
    # 'qcgpj submit f --batch-id "$ID"' with ID unset submitted without a batch id: the retry was not safe
    m = Manager(redis_url)
    with pytest.raises(ArgumentError, match="invalid batch id"):
        m.submit(Jobs().add(name="a", exec="/bin/true"), batch_id="")
    assert m.client.keys("*") == []


HUGE = 10**5000   # more digits than Python prints: str() and repr() raise ValueError


@pytest.mark.parametrize("field", [dict(numCores=HUGE), dict(iteration=HUGE), dict(args=[HUGE]), dict(wt=HUGE),
                                   dict(attributes={"x": HUGE}), dict(iteration=[HUGE]), dict(nodeCrs={"gpu": HUGE}),
                                   dict(nodeCrs={"mem": HUGE}), dict(after=["b:" + "9" * 5000])])
def test_an_integer_too_long_to_print_is_a_one_line_field_error(field):
    # ValueError('Exceeds the limit (4300 digits) for integer string conversion') from the check's own message,
    # from str() of an argument, or at submit from json.dumps
    with pytest.raises(JobSpecError) as exc:
        Jobs().add(name="a", exec="/bin/true", **field)
    assert exc.value.job == "a" and len(str(exc.value)) < 500, str(exc.value)


def test_huge_numbers_given_to_the_manager_are_argument_errors(redis_url):
    # Manager(cores=10**9) built a list of a billion cores (MemoryError, or the machine's memory);
    # info('a:<5000 digits>') and wait4(timeout=10**5000) raised ValueError / OverflowError
    for kw in (dict(cores=10**9), dict(cores=HUGE), dict(nodes="n0:1000000000"), dict(gpus=10**9)):
        with pytest.raises(ArgumentError, match="cores|gpus"):
            Manager(**kw)
    m = Manager(redis_url)
    with pytest.raises(UnknownJobError, match="unknown iteration"):
        m.info("a:" + "9" * 5000)
    with pytest.raises(UnknownJobError, match="unknown job 'nope'"):
        m.wait4(["nope"], timeout=HUGE)


@pytest.mark.parametrize("text", ['[1, 2]\n', '{"run": {}}\n{"name": 5}\n', '{"run": 5}\n'])
def test_a_record_of_json_that_is_not_ours_is_a_one_line_error(tmp_path, text):
    # 'qcgpj status --from DIR' on such a file: AttributeError / TypeError tracebacks from the readers
    from qcgpj import record
    (tmp_path / record.RECORD_FILE).write_text(text)
    with pytest.raises(QcgpjError, match=r"cannot read .*: line \d is not a line of a qcgpj run's record$"):
        record.load(str(tmp_path))


def test_alloc_add_refuses_a_worker_command_or_folder_the_allocator_could_not_use(tmp_path):
    # accepted at 'qcgpj alloc add slurm', then every allocation failed ('--worker-cmd ""') or 'alloc serve'
    # died of the OSError (a --dir that is a file) or of shlex's ValueError (an unclosed quote)
    from qcgpj import slurm
    from qcgpj.alloc import AllocQueue
    from qcgpj.alloc_cli import _check_new
    from qcgpj.errors import AllocError
    (tmp_path / "file").write_text("")
    for cmd, folder, words in (("", str(tmp_path), "give the command"), ("python3 'x", str(tmp_path), "No closing"),
                               ("qcgpj-worker", str(tmp_path / "file"), "is not a folder")):
        with pytest.raises(AllocError, match=words):
            _check_new(cmd, folder)
    q = AllocQueue(name="q", max_allocations=1, nodes=1, time="1h", wd=str(tmp_path),
                   dir=str(tmp_path / "file" / "sub"))   # under a file made since
    with pytest.raises(AllocError, match="cannot write the batch script of 'q'"):
        slurm.submit(q, "default", "redis://127.0.0.1:1/0")


def test_compat_queries_without_arguments_refuse_one_as_an_argument_error(redis_url):
    # m.list(5), m.resources(5), m.system_status(5): a TypeError, where every other method says ArgumentError
    from qcgpj.compat.api import Manager as CompatManager
    m = CompatManager(redis_url)
    for call in (m.list, m.resources, m.system_status):
        with pytest.raises(ArgumentError, match="too many positional arguments"):
            call(5)
    assert m.list() == {} and m.resources()["total_cores"] == 0


def test_a_call_submitted_past_maxmemory_says_redis_is_full(redis_server, redis_url):
    # the staging RPUSH was refused, and the commit then said 'the staged batch ... was incomplete (it expired,
    # or Redis lost it)': the wrong cause, and not a QueueFullError
    from qcgpj import Executor, QueueFullError
    c = redis_server.client()
    ex = Executor(redis_url)
    c.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueFullError, match="Redis is full.*nothing was written"):
            ex.submit(len, [1])
    finally:
        c.config_set("maxmemory", "0")
    ex.shutdown(wait=False)
    assert [k for k in c.keys("*") if ":job:" in k or k.startswith("rq:")] == []


@pytest.mark.parametrize("denied", ["rpush", "evalsha", "script"])
def test_a_call_submitted_by_a_denied_user_is_one_line_and_leaves_no_key(redis_server, redis_url, denied):
    # -rpush: 'the staged batch ... was incomplete'; -evalsha: redis-py's NoPermissionError, and the staging
    # list left for an hour; -script: NoPermissionError
    from qcgpj import Executor
    c = redis_server.client()
    c.execute_command("ACL", "SETUSER", "fn", "reset", "on", ">pw", "~*", "&*", "+@all", f"-{denied}")
    ex = Executor(redis_url.replace("redis://", "redis://fn:pw@"))
    with pytest.raises(RedisPermissionError, match=f"'{denied}"):
        ex.submit(len, [1])
    ex.shutdown(wait=False)
    assert [k for k in c.keys("*") if ":job:" in k or ":stage:" in k or k.startswith("rq:")] == []


@pytest.mark.parametrize("exec_", [":f", "os:", " : "])
def test_a_python_model_exec_without_module_or_function_is_refused_at_submit(exec_):
    # accepted, then each task FAILED at launch ('Empty module name', "has no attribute ''")
    with pytest.raises(JobSpecError, match="package.module:function") as exc:
        Jobs().add(name="p", exec=exec_, model="python")
    assert exc.value.field == "execution.exec"
