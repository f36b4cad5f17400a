"""The executor's round trip (``sync``) runs as a Redis function (FCALL) where the server has them, and behaves
exactly as the EVALSHA script it replaces: a library lost by the server is loaded again, past maxmemory a report
still goes through (a function would be refused whole), a server or user without functions keeps EVALSHA. Its
placement reads the pending list a page at a time, and hands out what it placed on its own executor without
reading the job again. Driven by hand through the Store on a real redis-server."""
from __future__ import annotations

import fakeredis
import redis

from qcgpj import Jobs, Manager
from qcgpj.connection import connect
from qcgpj.store import Report, Store, _spin_for_reply, now


def _join(store: Store, eid: str, cores: int) -> None:
    store.register(eid, 30, "node", f"n0={cores}", cores, cores, 1, 0, 1)


def _submit(url: str, ns: str, n: int, cores: int = 1, prefix: str = "j") -> None:
    m = Manager(url, namespace=ns)
    jobs = Jobs()
    for i in range(n):
        jobs.add(name=f"{prefix}{i}", exec="/bin/true", numCores=cores)
    m.submit(jobs)


def _done(entries: list) -> list[Report]:
    return [Report(e.raw, "SUCCEED", 0, now(), now(), "") for e, _ in entries]


def _functions(client) -> list[str]:
    return [lib["library_name"] for lib in client.execute_command("FUNCTION", "LIST")]


def test_the_round_trip_is_a_function_and_a_flushed_library_is_loaded_again(redis_url):
    client = connect(redis_url)
    store = Store(client, "fn1")
    _join(store, "e", 2)
    _submit(redis_url, "fn1", 6)
    got = store.sync("e", 2)
    assert store._lib.usable and any(n.startswith("qcgpj_") for n in _functions(client))
    assert [e.task for e, _ in got] == ["j0", "j1"] and all(spec for _, spec in got)
    client.execute_command("FUNCTION", "FLUSH")   # as a restarted server without persistence would have it
    got = store.sync("e", 2, finished=_done(got))
    assert [e.task for e, _ in got] == ["j2", "j3"]
    got = store.sync("e", 2, finished=_done(got))   # the library is back
    assert [e.task for e, _ in got] == ["j4", "j5"] and _functions(client)
    store.sync("e", 0, finished=_done(got))
    assert store.active() == 0
    assert {client.hget(store.keys.job(f"j{i}"), "state") for i in range(6)} == {"SUCCEED"}
    store.close()
    client.close()


def test_a_report_goes_through_past_maxmemory(redis_url):
    """A script may write once it has freed memory (the report's LREM); a function without flags is refused
    whole past maxmemory: the report falls back to the script, so an executor's ends are not held up."""
    client = connect(redis_url)
    store = Store(client, "fn2")
    _join(store, "e", 1)
    _submit(redis_url, "fn2", 1)
    got = store.sync("e", 1)
    assert store._lib.usable
    client.config_set("maxmemory", "1")
    try:
        assert store.sync("e", 0, finished=_done(got)) == []
    finally:
        client.config_set("maxmemory", "0")
    assert client.hget(store.keys.job("j0"), "state") == "SUCCEED" and store.active() == 0
    store.close()
    client.close()


def test_without_functions_the_script_runs(redis_url):
    """A user whose ACL has EVALSHA but no FCALL or FUNCTION (README's minimal ACL): the scripts, as before."""
    admin = connect(redis_url)
    admin.execute_command("ACL", "SETUSER", "nofn", "on", ">pw", "~*", "+@all", "-function", "-fcall")
    try:
        client = redis.Redis.from_url(redis_url.replace("redis://", "redis://nofn:pw@"), decode_responses=True)
        store = Store(client, "fn3")
        _join(store, "e", 1)
        _submit(redis_url, "fn3", 2)
        got = store.sync("e", 1)
        assert store._lib.usable is False and [e.task for e, _ in got] == ["j0"]
        got = store.sync("e", 1, finished=_done(got))
        assert [e.task for e, _ in got] == ["j1"]
        store.close()
        client.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "nofn")
        admin.close()


def test_fakeredis_runs_the_function():
    client = fakeredis.FakeRedis(decode_responses=True)
    store = Store(client, "fn4")
    _join(store, "e", 2)
    store.submit([(f"j{i}", '{"name": "x", "execution": {"exec": "/bin/true"}}', "1|1|0|0", "", "")
                  for i in range(3)])
    got = store.sync("e", 2)
    assert store._lib.usable and [e.task for e, _ in got] == ["j0", "j1"]
    got = store.sync("e", 2, finished=_done(got), spin=True)   # local mode's hops watch for the answer too
    assert [e.task for e, _ in got] == ["j2"] and store.active() == 1


def test_a_round_trip_that_watches_for_its_answer_gets_it_and_stops_watching_when_it_is_slow(redis_url):
    """A hop's round trip (nothing runs) watches the connection instead of sleeping on it: the same answer; and
    an answer that takes long is slept on after the watch's limit, not watched for all that time."""
    client = connect(redis_url)
    store = Store(client, "fn8")
    _join(store, "e", 1)
    _submit(redis_url, "fn8", 2)
    got = store.sync("e", 1, spin=True)
    got = store.sync("e", 1, finished=_done(got), spin=True)
    assert [e.task for e, _ in got] == ["j1"] and store.active() == 1
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command("BLPOP", "fn8:nothing", 2)   # no answer for 2 s
        _spin_for_reply(conn, 0.01)
        assert not conn.can_read(timeout=0)   # gave up watching long before the answer
        assert conn.read_response() is None
    finally:
        client.connection_pool.release(conn)
    store.close()
    client.close()


def test_placement_backfills_beyond_the_first_page_of_the_pending_list(redis_url):
    """Ten jobs too large for the free cores come first; the small ones after them (entries 11 and 12, past the
    first page of 8) are placed, and the large ones keep their places."""
    client = connect(redis_url)
    store = Store(client, "fn5")
    _join(store, "e", 4)
    _submit(redis_url, "fn5", 1, cores=3, prefix="first")   # placed: 1 core left
    _submit(redis_url, "fn5", 10, cores=2, prefix="big")
    _submit(redis_url, "fn5", 2, cores=1, prefix="small")
    got = store.sync("e", 4)
    assert [e.task for e, _ in got] == ["first0", "small0"]
    assert client.lrange(store.keys.pending, 0, -1) == [f"big{i}" for i in range(10)] + ["small1"]
    got = store.sync("e", 4, finished=_done(got))   # 4 cores free: two big ones
    assert [e.task for e, _ in got] == ["big0", "big1"]
    store.close()
    client.close()


def test_a_library_of_our_name_with_other_code_is_not_called(redis_url):
    """On a shared server another user could load a library under our name first: its code is compared, and
    when it is not ours the round trip stays a script (named by its own code's hash)."""
    client = connect(redis_url)
    probe = Store(client, "fn6")
    name = f"qcgpj_{probe._lib._tag}"
    if name in _functions(client):
        client.execute_command("FUNCTION", "DELETE", name)
    client.execute_command("FUNCTION", "LOAD", f"#!lua name={name}\n"
                           f"redis.register_function('{name}_sync', function(k, a) return {{'evil|1|0|0', ''}} end)")
    try:
        store = Store(client, "fn6")
        _join(store, "e", 1)
        _submit(redis_url, "fn6", 1)
        got = store.sync("e", 1)
        assert store._lib.usable is False and [e.task for e, _ in got] == ["j0"]
        store.close()
    finally:
        client.execute_command("FUNCTION", "DELETE", name)
        client.close()


def _calls(client, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_core_given_back_and_taken_again_writes_no_credit(redis_url):
    """The hop of a chain: the round trip that reports a task's end places the next task on the same core. Its
    credit is written once, net of what it got: here not at all (commands counted), and hash and index agree."""
    client = connect(redis_url)
    store = Store(client, "fn7")
    _join(store, "e", 2)
    _join(store, "other", 1)
    _submit(redis_url, "fn7", 3)   # j0, j1 on e (the most credit), j2 on other
    got = store.sync("e", 2)
    assert [e.task for e, _ in got] == ["j0", "j1"]
    _submit(redis_url, "fn7", 1, prefix="next")   # waits: nobody has a free core
    zadd = _calls(client, "zadd")
    got = store.sync("e", 1, finished=_done(got[:1]))
    assert [e.task for e, _ in got] == ["next0"]
    assert _calls(client, "zadd") == zadd   # was: +1 core, then -1 (a HINCRBY and a ZADD each)
    assert client.hget(store.keys.exec("e"), "free") == "0" and client.zscore(store.keys.free, "e") == 0
    got = store.sync("e", 0, finished=_done(got) + [Report("j1|1|0|0", "SUCCEED", 0, now(), now(), "")])
    assert client.hget(store.keys.exec("e"), "free") == "2" and client.zscore(store.keys.free, "e") == 2
    store.close()
    client.close()


def test_an_iterative_job_whose_iterations_end_before_their_start_is_reported_gets_its_start(redis_url):
    """Short iterations are reported ended with their start in one round trip: the job's own start (and state
    EXECUTING until the last ends) comes from the first of them, not never (``info`` showed no start)."""
    client = connect(redis_url)
    store = Store(client, "fn9")
    _join(store, "e", 2)
    store.submit([("x", '{"name": "x", "execution": {"exec": "/bin/true"}, "iteration": {"stop": 4}}', "1|1|0|0",
                   "0|4", "")])
    got = store.sync("e", 2)
    assert [e.task for e, _ in got] == ["x:0", "x:1"]
    store.sync("e", 2, finished=[Report(e.raw, "SUCCEED", 0, "1700000000.5@n0:0", "1700000000.6", "")
                                 for e, _ in got])
    assert client.hmget(store.keys.job("x"), "state", "start") == ["EXECUTING", "1700000000.5"]
