"""Placement reads executors from the credit index (``executors:free``), not by a scan of every live executor:
work goes only where there is room and to the executor with the most credit, dead and departed executors drop out,
a requeue lands elsewhere, and the cost of an executor's round trip does not grow with the executors that are
full. Driven by hand through the Store on a real redis-server (commands counted, never timed)."""
from __future__ import annotations

import pytest

from qcgpj import Jobs, Manager
from qcgpj.connection import connect
from qcgpj.errors import ResourceError
from qcgpj.store import Report, Store, now


def _join(store: Store, eid: str, cores: int, nodes: int = 1) -> None:
    """An executor of ``cores`` cores on ``nodes`` nodes and no look-ahead: its credit is its cores."""
    text = ";".join(f"n{i}={cores // nodes}" for i in range(nodes))
    store.register(eid, 30, "node", text, cores, cores // nodes, nodes, 0, 1)


def _placed(client, store: Store, eid: str) -> list[str]:
    return client.lrange(store.keys.ready(eid), 0, -1)


def _credit(client, store: Store, eid: str) -> tuple[int, float | None]:
    return int(client.hget(store.keys.exec(eid), "free")), client.zscore(store.keys.free, eid)


def _finish(store: Store, eid: str) -> None:
    """The executor claims what is placed on it and reports it all finished (one round trip each)."""
    got = store.sync(eid, 100)
    store.sync(eid, 0, finished=[Report(e.raw, "SUCCEED", 0, now(), now(), "") for e, _ in got])


def test_work_goes_only_where_there_is_room(redis_url):
    client = connect(redis_url)
    store, m = Store(client, "idx"), Manager(redis_url, namespace="idx")
    for i in range(40):   # more than one page of the index
        _join(store, f"e{i}", 1)
    jobs = Jobs()
    for i in range(50):
        jobs.add(name=f"j{i}", exec="/bin/true")
    m.submit(jobs)
    store.place_and_ack([])
    assert all(len(_placed(client, store, f"e{i}")) == 1 for i in range(40))
    assert all(_credit(client, store, f"e{i}") == (0, 0.0) for i in range(40))
    assert client.llen(store.keys.pending) == 10
    _finish(store, "e7")   # its core is free again: the next pending job goes there, and only there
    assert len(_placed(client, store, "e7")) == 1
    assert client.llen(store.keys.pending) == 9
    assert sum(len(_placed(client, store, f"e{i}")) for i in range(40)) == 40
    client.close()


def test_the_executor_with_the_most_credit_wins_beyond_the_first_page(redis_url):
    client = connect(redis_url)
    store, m = Store(client, "idx"), Manager(redis_url, namespace="idx")
    _join(store, "two-nodes", 2, nodes=2)   # the least credit, but the only one with two nodes
    for i in range(1, 40):
        _join(store, f"e{i}", i)
    m.submit(Jobs().add(name="big", exec="/bin/true").add(name="pair", exec="/bin/true", numCores=1, numNodes=2))
    assert [e.split("|")[0] for e in _placed(client, store, "e39")] == ["big"]
    assert [e.split("|")[0] for e in _placed(client, store, "two-nodes")] == ["pair"]
    assert _credit(client, store, "e39") == (38, 38.0)
    client.close()


def test_dead_executors_leave_the_index_and_their_work_is_placed_elsewhere(redis_url):
    client = connect(redis_url)
    store, m = Store(client, "idx"), Manager(redis_url, namespace="idx")
    _join(store, "a", 1)
    _join(store, "b", 1)
    m.submit(Jobs().add(name="x", exec="/bin/true").add(name="y", exec="/bin/true"))
    (on_a,) = _placed(client, store, "a")
    client.delete(store.keys.alive("a"))   # its heartbeat expired
    assert store.requeue("a", 3, "lost (no heartbeat)") == (1, 0)
    assert client.zscore(store.keys.free, "a") is None
    assert client.lrange(store.keys.pending, 0, -1) == [on_a.split("|")[0]]   # b is full: it waits
    _finish(store, "b")
    assert [e.split("|")[0] for e in _placed(client, store, "b")] == [on_a.split("|")[0]]
    m.submit(Jobs().add(name="z", exec="/bin/true"))
    assert _placed(client, store, "a") == []   # never to the dead one
    client.close()


def test_the_index_heals_stale_entries_and_is_rebuilt_after_an_upgrade(redis_url):
    client = connect(redis_url)
    store, m = Store(client, "idx"), Manager(redis_url, namespace="idx")
    _join(store, "a", 2)
    client.delete(store.keys.free)   # executors that joined before the index existed
    client.zadd(store.keys.free, {"ghost": 5})   # an entry whose executor left without removing it
    client.hset(store.keys.exec("ghost"), mapping={"state": "LEFT", "free": 5})
    m.submit(Jobs().add(name="x", exec="/bin/true"))
    assert client.zscore(store.keys.free, "ghost") is None
    assert _placed(client, store, "ghost") == []
    client.delete(store.keys.free)
    m.submit(Jobs().add(name="y", exec="/bin/true"))
    assert [e.split("|")[0] for e in _placed(client, store, "a")] == ["x", "y"]
    assert _credit(client, store, "a") == (0, 0.0)
    client.close()


def _round(redis_url: str, ns: str, full: int) -> int:
    """Commands of one executor's work (a job placed on it when its core frees, claimed, reported) while
    ``full`` other executors are live without room."""
    client = connect(redis_url)
    store, m = Store(client, ns), Manager(redis_url, namespace=ns)
    _join(store, "live", 1)
    m.submit(Jobs().add(name="block", exec="/bin/true"))   # live is full
    for i in range(full):
        _join(store, f"full{i}", 1)
    jobs = Jobs()
    for i in range(full):
        jobs.add(name=f"fill{i}", exec="/bin/true")
    if full:
        m.submit(jobs)
    client.config_resetstat()
    m.submit(Jobs().add(name="x", exec="/bin/true"))   # no room anywhere: it waits
    _finish(store, "live")   # block ends, x is placed on live
    _finish(store, "live")   # x ends
    calls = sum(int(v["calls"]) for v in client.info("commandstats").values())
    assert m.status(["block", "x"]) == {"block": "SUCCEED", "x": "SUCCEED"}
    client.close()
    return calls


def test_a_round_trip_costs_the_same_with_ten_or_a_hundred_full_executors(redis_url):
    _round(redis_url, "warm", 0)   # loads the scripts
    assert _round(redis_url, "few", 10) == _round(redis_url, "many", 100)


def test_submit_reads_the_largest_executor_from_the_shape_counts(redis_url):
    """What a job may ask is bounded by the largest live executor, read from the counts of executor shapes
    (one hash, however many executors), kept through joins, rejoins and departures, with a full read as the
    fallback while executors that joined before the counts existed are live."""
    client = connect(redis_url)
    store, m = Store(client, "idx"), Manager(redis_url, namespace="idx")
    _join(store, "a", 4)
    _join(store, "b", 8, nodes=2)
    _join(store, "a", 4)   # joins again while counted: still one
    assert client.hgetall(store.keys.shapes) == {"4|1|4|0|0|0": "1", "8|2|4|0|0|0": "1"}
    client.config_resetstat()
    assert m.limits() == (8, 2, 4)
    stats = client.info("commandstats")   # the counts were read, not each executor's hash
    assert stats["cmdstat_hgetall"]["calls"] == 1 and "cmdstat_llen" not in stats, stats
    client.delete(store.keys.alive("b"))
    store.requeue("b", 3, "lost (no heartbeat)")
    assert client.hgetall(store.keys.shapes) == {"4|1|4|0|0|0": "1"}
    assert m.limits() == (4, 1, 4)
    with pytest.raises(ResourceError, match="the largest executor has 4"):
        m.submit(Jobs().add(name="wide", exec="/bin/true", numCores=5))
    client.delete(store.keys.shapes)   # joined before the counts existed
    _join(store, "c", 6)
    assert m.limits() == (6, 1, 6)
    client.close()


def test_removing_a_canceled_placed_job_gives_its_credit_back_to_the_index_and_its_gpus(redis_url):
    """A canceled job's entry still on an executor's ready list goes with the job's removal: its cores return to
    the executor's credit in the hash and in the index (else placement no longer sees the executor), its GPUs too."""
    client = connect(redis_url)
    store, m = Store(client, "idx"), Manager(redis_url, namespace="idx")
    store.register("a", 30, "node", "n0=1", 1, 1, 1, 0, 1, "", 1, 1, 0)   # 1 core, 1 GPU
    m.submit(Jobs().add(name="g", exec="/bin/true", nodeCrs={"gpu": 1}))
    assert [e.split("|")[0] for e in _placed(client, store, "a")] == ["g"]
    assert _credit(client, store, "a") == (0, 0.0)
    m.cancel("g")
    assert m.remove("g") == ["g"]
    assert _placed(client, store, "a") == []
    assert _credit(client, store, "a") == (1, 1.0)
    assert client.hget(store.keys.exec("a"), "gfree") == "1"
    m.submit(Jobs().add(name="h", exec="/bin/true", nodeCrs={"gpu": 1}))
    assert [e.split("|")[0] for e in _placed(client, store, "a")] == ["h"]
    client.close()
