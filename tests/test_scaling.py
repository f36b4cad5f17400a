"""Costs that must not grow with a namespace's history, counted in Redis commands on a real redis-server
(INFO commandstats counts the commands a script runs too): no timing, the same work must cost the same."""
from __future__ import annotations

import json

import pytest

from qcgpj import Jobs, Manager
from qcgpj.connection import connect
from qcgpj.store import Report, Store, now
from tests.test_cli import qcgpj

NS = "hist"


@pytest.fixture
def queue(redis_url):
    """(manager, store, raw client) on one namespace with one live executor, "live", driven by hand below."""
    client = connect(redis_url)
    store = Store(client, NS)
    store.register("live", 30, "node", "node=2", 2, 2, 1, 0, 1)
    m = Manager(redis_url, namespace=NS)
    yield m, store, client
    client.close()


def _commands(client) -> int:
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def _work(m: Manager, store: Store, client, tag: str) -> int:
    """The Redis commands of one round of everyday work: a submit of a job and its dependent, each claimed and
    reported by the executor (which places the dependent), a cancel of a placed job (which tells the live executors),
    the InputQueue's check for dead executors."""
    client.config_resetstat()
    m.submit(Jobs().add(name=f"{tag}a", exec="/bin/true").add(name=f"{tag}b", exec="/bin/true", after=[f"{tag}a"]))
    for _ in range(2):
        ((entry, _spec),) = store.sync("live", 1)
        store.sync("live", 0, finished=[Report(entry.raw, "SUCCEED", 0, now(), now(), "")])
    m.submit(Jobs().add(name=f"{tag}c", exec="/bin/true"))
    assert m.cancel(f"{tag}c") == {f"{tag}c": "canceled"}
    assert store.sync("live", 1) == []   # the canceled job's placed entry is dropped when claimed
    assert not store.dead_executors()
    return _commands(client)


def test_departed_executors_cost_nothing_on_the_task_path(queue):
    """Every executor that ever joined stays listed (``resources --all``); placement, submit, cancel and the
    dead-executor check read only the live ones, so a namespace that saw thousands of executors come and go
    (one set per Slurm job) does not get slower with each."""
    m, store, client = queue
    _work(m, store, client, "w")   # first calls load the scripts
    before = _work(m, store, client, "x")
    for i in range(30):
        store.register(f"gone{i}", 30, "node", "node=2", 2, 2, 1, 0, 1)
        store.requeue(f"gone{i}", 3, "left", final="LEFT")
    after = _work(m, store, client, "y")
    assert after == before
    assert m.status(["xa", "xb", "ya", "yb", "yc"]) == dict.fromkeys(["xa", "xb", "ya", "yb"], "SUCCEED") | {
        "yc": "CANCELED"}
    assert list(m.resources()["executors"]) == ["live"]
    listed = m.resources(departed=True)["executors"]
    assert len(listed) == 31 and {e["state"] for eid, e in listed.items() if eid != "live"} == {"LEFT"}


def test_resources_lists_departed_executors_on_request(queue, redis_url, tmp_path):
    m, store, _client = queue
    store.register("old", 30, "node", "node=2", 2, 2, 1, 0, 1)
    store.requeue("old", 3, "left", final="LEFT")
    live = qcgpj("resources", "--redis-url", redis_url, "-n", NS, "--json", cwd=tmp_path)
    every = qcgpj("resources", "--redis-url", redis_url, "-n", NS, "--all", "--json", cwd=tmp_path)
    assert live.returncode == every.returncode == 0, live.stderr + every.stderr
    assert list(json.loads(live.stdout)["executors"]) == ["live"]
    assert {eid: e["state"] for eid, e in json.loads(every.stdout)["executors"].items()} == {
        "live": "ALIVE", "old": "LEFT"}
    assert json.loads(every.stdout)["total_cores"] == 2   # a departed executor's cores are not counted
