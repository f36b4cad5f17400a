"""Followers (sync.lua): a job whose last dependency runs on an executor is named to that executor, which starts
it on the same cores the moment the dependency succeeds and reports both in one round trip. Redis must never
show a follower running before its dependency succeeded, nor run one that was canceled, nor lose its cores."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qcgpj import Jobs, Manager
from qcgpj.connection import connect
from qcgpj.store import Report, Store, now
from tests.test_reliability import executing, wait_for


def _chain(url: str, ns: str, *names: str) -> Manager:
    m = Manager(url, namespace=ns)
    jobs = Jobs().add(name=names[0], exec="/bin/true")
    for parent, name in zip(names, names[1:]):
        jobs.add(name=name, exec="/bin/true", after=[parent])
    m.submit(jobs)
    return m


def _store(url: str, ns: str, cores: int = 1) -> tuple[Store, object]:
    client = connect(url)
    store = Store(client, ns)
    store.register("e", 30, "node", f"n0={cores}", cores, cores, 1, 0, 1)
    return store, client


def _succeeded(entry, follower=None) -> Report:
    t = now()
    return Report(entry.raw, "SUCCEED", 0, t, t, "", "", follower.raw if follower else "",
                  now() if follower else "")


def test_a_follower_runs_on_its_parents_cores_as_placed_after_the_parents_end(redis_url):
    m = _chain(redis_url, "fol1", "a", "b", "c")
    store, client = _store(redis_url, "fol1")
    got = store.sync("e", 1)
    (a, _), = got
    b, spec = got.followers["a"]
    assert a.task == "a" and b.task == "b" and b.cores == 1 and '"name":"b"' in spec
    assert m.status(["b"]) == {"b": "QUEUED"}   # named to the executor, not placed: its parent still runs
    got = store.sync("e", 0, finished=[_succeeded(a, b)])
    assert got == [] and got.stopped == [] and got.followers["b"][0].task == "c"
    assert m.status(["a", "b", "c"]) == {"a": "SUCCEED", "b": "EXECUTING", "c": "QUEUED"}
    assert client.lrange(store.keys.running("e"), 0, -1) == [b.raw]
    assert client.llen(store.keys.pending) == 0 and client.hget(store.keys.exec("e"), "free") == "0"
    store.sync("e", 0, finished=[_succeeded(b)])   # b ends without its follower: c is placed as usual
    assert m.status(["b", "c"]) == {"b": "SUCCEED", "c": "SCHEDULED"}
    store.close()
    client.close()


def test_a_follower_canceled_or_omitted_meanwhile_is_refused_and_its_cores_come_back(redis_url):
    m = _chain(redis_url, "fol2", "a", "b")
    store, client = _store(redis_url, "fol2")
    got = store.sync("e", 1)
    (a, _), = got
    b, _ = got.followers["a"]
    with ThreadPoolExecutor(1) as pool:   # the cancel returns once the executor said it dropped its follower
        canceled = pool.submit(m.cancel, ["b"])
        assert client.blpop([store.keys.control("e")], timeout=30)[1] == "cancelack b"
        assert not canceled.done()
        store.cancel_acked("e", "b")   # as the executor does once it forgot b
        assert canceled.result(timeout=30) == {"b": "canceled"}
    got = store.sync("e", 0, finished=[_succeeded(a, b)])
    assert got.stopped == [b.raw] and m.status(["a", "b"]) == {"a": "SUCCEED", "b": "CANCELED"}
    assert client.lrange(store.keys.running("e"), 0, -1) == []
    assert client.hget(store.keys.exec("e"), "free") == "1"
    store.close()
    client.close()


def test_a_follower_of_a_report_not_taken_is_refused(redis_url):
    """Declared dead meanwhile: its tasks went back to the queue, so the parent's end does not count, and the
    follower it started must not run either."""
    m = _chain(redis_url, "fol3", "a", "b")
    store, client = _store(redis_url, "fol3")
    got = store.sync("e", 1)
    (a, _), = got
    b, _ = got.followers["a"]
    client.delete(store.keys.alive("e"))   # its heartbeat expired
    assert store.requeue("e", 5, "declared dead", final="DEAD") == (1, 0)
    got = store.sync("e", 0, finished=[_succeeded(a, b)])
    assert got.stopped == [b.raw] and m.status(["a", "b"]) == {"a": "READY", "b": "QUEUED"}
    store.close()
    client.close()


def test_a_chain_runs_through_followers_with_each_start_after_its_parents_end(cluster):
    m = cluster.serving(1)
    names = [f"c{i}" for i in range(20)]
    jobs = Jobs().add(name=names[0], exec="/bin/true")
    for parent, name in zip(names, names[1:]):
        jobs.add(name=name, exec="/bin/true", after=[parent])
    m.submit(jobs)
    assert set(m.wait4(names, timeout=60).values()) == {"SUCCEED"}
    infos = [m.info(n) for n in names]
    assert all(child["start"] >= parent["end"] for parent, child in zip(infos, infos[1:]))
    assert "may not run" not in cluster.logs()


def test_followers_start_as_their_parent_ends_two_deep(cluster):
    """p runs until 'go'; f1 and f2 were named to the executor meanwhile. Each starts as its parent ends, its
    start reported with that end ('sync' events: executor, starts, ends): 3 starts in all with p's own (placed
    instead, f1 and f2 would be claimed in the round trip that reported their parent's end, and their starts
    reported with their own ends: 1)."""
    m = cluster.serving(1)
    m.submit(Jobs().add(name="p", script="while [ ! -e go ]; do sleep 0.05; done")
             .add(name="f1", exec="/bin/true", after=["p"]).add(name="f2", exec="/bin/true", after=["f1"]))
    wait_for(m, lambda: executing(m, ["p"]) == 1, what="the parent running")
    Path(cluster.workdir, "go").touch()
    assert m.wait4(["p", "f1", "f2"], timeout=60) == {"p": "SUCCEED", "f1": "SUCCEED", "f2": "SUCCEED"}
    syncs = [f["data"].split() for _, f in m.store.r.xrange(m.store.keys.events) if f["type"] == "sync"]
    assert sum(int(started) for _, started, _ in syncs) == 3


def test_a_follower_canceled_while_its_parent_runs_never_starts(cluster):
    """The cancel reaches the executor holding it: no process, not even its output file."""
    m = cluster.serving(1)
    m.submit(Jobs().add(name="p", script="while [ ! -e go ]; do sleep 0.05; done")
             .add(name="f", exec="/bin/true", stdout="f.out", after=["p"]))
    wait_for(m, lambda: executing(m, ["p"]) == 1, what="the parent running")
    assert m.cancel(["f"]) == {"f": "canceled"}
    Path(cluster.workdir, "go").touch()
    assert m.wait4(["p"], timeout=60) == {"p": "SUCCEED"}
    assert not Path(cluster.workdir, "f.out").exists() and "may not run" not in cluster.logs()


def test_a_follower_canceled_just_before_its_parent_ends_never_starts(cluster):
    """The cancel returned, then the parent ended at once (it reads a fifo the test then writes): the executor may
    not have taken the cancel in yet when the parent's end reaches it, and started the follower anyway (about
    every second time: its output file was there). A cancel of a named follower now returns only once the
    executor holding it has dropped it."""
    m = cluster.serving(1)
    for i in range(30):
        fifo = Path(cluster.workdir, f"fifo{i}")
        os.mkfifo(fifo)
        m.submit(Jobs().add(name=f"p{i}", script=f"read x < {fifo}")
                 .add(name=f"f{i}", exec="/bin/true", stdout=f"f{i}.out", after=[f"p{i}"]))
        wait_for(m, lambda: executing(m, [f"p{i}"]) == 1, what="the parent running")
        assert m.cancel([f"f{i}"]) == {f"f{i}": "canceled"}
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b"go\n")
        os.close(fd)
        assert m.wait4([f"p{i}"], timeout=60) == {f"p{i}": "SUCCEED"}
        assert not Path(cluster.workdir, f"f{i}.out").exists(), f"trial {i}: the canceled follower ran"
    assert m.status([f"f{i}" for i in range(30)]) == {f"f{i}": "CANCELED" for i in range(30)}


def test_a_report_sent_again_after_its_answer_was_lost_keeps_its_follower_running(redis_url):
    """The executor sends a report again when the call failed, which may be after Redis took it (a connection cut
    after the script ran, Redis killed after writing it). The second call found the parent's end taken, so it
    refused the follower ('!b'): the executor killed b, which Redis showed EXECUTING on it, with no process, until
    its reconcile gave it back to run again. The start taken by the first call now stands."""
    m = _chain(redis_url, "fol4", "a", "b", "c")
    store, client = _store(redis_url, "fol4")
    got = store.sync("e", 1)
    (a, _), = got
    b, _ = got.followers["a"]
    report = [_succeeded(a, b)]
    store.sync("e", 0, finished=report)   # taken; its answer never reached the executor
    got = store.sync("e", 0, finished=report)
    assert got.stopped == [] and got.followers["b"][0].task == "c"
    assert m.status(["a", "b", "c"]) == {"a": "SUCCEED", "b": "EXECUTING", "c": "QUEUED"}
    assert client.lrange(store.keys.running("e"), 0, -1) == [b.raw]
    assert client.hget(store.keys.exec("e"), "free") == "0"
    store.sync("e", 0, finished=[_succeeded(b)])
    assert m.status(["b"]) == {"b": "SUCCEED"} and client.llen(store.keys.running("e")) == 0
    store.close()
    client.close()
