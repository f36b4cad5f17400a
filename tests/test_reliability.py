"""Nothing is lost: real processes killed with SIGKILL, a real redis-server stopped and started."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from qcgpj import ConnectionError as QConnectionError
from qcgpj import Jobs, Manager
from qcgpj.connection import connect
from qcgpj.inputqueue import InputQueue
from qcgpj.store import Report, Store

from tests.cluster import Cluster, kill_executor


def wait_for(m: Manager, predicate, timeout: float = 60, what: str = "condition") -> None:
    """Wait on the queue's events until predicate() holds."""
    deadline = time.monotonic() + timeout
    last = m.store.last_event_id()
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        last = m.store.wait_event(last, 0.5)


def executing(m: Manager, names) -> int:
    return sum(1 for s in m.status(names).values() if s == "EXECUTING")


def blockers(n: int, prefix: str = "j") -> Jobs:
    """Jobs that run until the file 'go' exists, so a test decides when they may end."""
    jobs = Jobs()
    for i in range(n):
        jobs.add(name=f"{prefix}{i}", script="while [ ! -e go ]; do sleep 0.05; done")
    return jobs


def test_dead_executor_work_runs_elsewhere(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        a = c.worker(2, "--ttl", "2", "--heartbeat", "0.5", name="worker-a")
        m = c.manager()
        names = m.submit(blockers(5))
        wait_for(m, lambda: executing(m, names) == 2, what="2 tasks running on executor a")
        kill_executor(m, a)                     # the executor dies; its orphaned tasks are not its report
        (tmp_path / "go").touch()
        c.worker(2, name="worker-b")
        states = m.wait4(names, timeout=90)
        assert set(states.values()) == {"SUCCEED"}, c.logs()
        attempts = sorted(m.info(n)["attempts"] for n in names)
        # a had claimed all five (two started, three ahead): each claim counts, since a task may kill its
        # executor before its start is reported
        assert attempts == [1, 1, 1, 1, 1]
        dead = [e for e in m.resources(departed=True)["executors"].values() if e["state"] == "DEAD"]
        assert len(dead) == 1
    finally:
        c.stop()


def test_a_worker_restarted_with_the_same_id_waits_for_the_old_ones_work_to_go_back(redis_url, tmp_path):
    """A worker restarted at once with the same --id (a node's service manager, a script) joined over the dead
    one's registration, whose heartbeat had not expired: that dropped its running list, and its tasks stayed
    EXECUTING for ever. It now waits until the InputQueue has given that work back, then joins and runs it."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        opts = ("--id", "node1", "--ttl", "2", "--heartbeat", "0.5")
        a = c.worker(2, *opts, name="worker-a")
        m = c.manager()
        names = m.submit(blockers(2))
        wait_for(m, lambda: executing(m, names) == 2, what="2 tasks running")
        kill_executor(m, a)
        (tmp_path / "go").touch()
        c.worker(2, *opts, name="worker-b")
        assert m.wait4(names, timeout=60) == {n: "SUCCEED" for n in names}, c.logs()
        assert "this id is registered as live" in (tmp_path / "worker-b.log").read_text()
    finally:
        c.stop()


def test_a_second_live_worker_with_the_same_id_is_refused(redis_url, tmp_path):
    """Two live workers given the same --id: the second took the first's registration over (the first was then
    told to leave when the second left). The second now says so and exits."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        c.worker(1, "--id", "twin", "--ttl", "1", "--heartbeat", "0.25", name="worker-a")
        m = c.manager()
        c.wait_executors(m)
        b = c.worker(1, "--id", "twin", "--ttl", "1", "--heartbeat", "0.25", name="worker-b")
        assert b.wait(timeout=60) != 0
        out = (tmp_path / "worker-b.log").read_text()
        assert "another live executor has this id" in out and "Traceback" not in out, out
        assert [e["state"] for e in m.store.executors().values()] == ["ALIVE"]
    finally:
        c.stop()


def test_attempts_are_bounded(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue("--max-attempts", "1")
        a = c.worker(1, "--ttl", "2", "--heartbeat", "0.5", name="worker-a")
        m = c.manager()
        m.submit(blockers(1))
        wait_for(m, lambda: executing(m, ["j0"]) == 1, what="j0 running")
        kill_executor(m, a)
        assert m.wait4(["j0"], timeout=60) == {"j0": "FAILED"}
        assert "lost" in m.info("j0")["message"] and "1 attempts" in m.info("j0")["message"]
    finally:
        (tmp_path / "go").touch()
        c.stop()


def test_report_of_a_dead_executor_is_fenced(redis_server):
    """An executor declared dead that reports later cannot complete a task that was given to another."""
    client = redis_server.client()
    client.flushall()
    store = Store(client, "fence")
    store.register("e1", 30, "h", "h=1", 1, 1, 1, 0, 1)
    store.submit([("t", '{"name":"t","execution":{"exec":"/bin/true"}}', "1|1|0|0", "", "")])
    (entry, _spec), = store.sync("e1", 1)
    store.sync("e1", 0, started=[(entry.raw, "1")])
    assert store.job_hash("t")["state"] == "EXECUTING"
    assert store.requeue("e1", 3, "lost (test)") is None     # its heartbeat is still there: not dead, untouched
    assert store.job_hash("t")["state"] == "EXECUTING"
    client.delete(store.keys.alive("e1"))                     # the heartbeat expires
    assert list(store.dead_executors()) == ["e1"]
    assert store.requeue("e1", 3, "lost (test)") == (1, 0)
    assert store.requeue("e1", 3, "lost (test)") is None     # a second check finds nothing to do
    late = [Report(entry.raw, "SUCCEED", 0, "1", "2")]
    store.sync("e1", 1, started=[(entry.raw, "1")], finished=late)     # the dead executor comes back
    h = store.job_hash("t")
    assert h["state"] == "READY" and h["attempts"] == "1"
    store.register("e2", 30, "h", "h=1", 1, 1, 1, 0, 1)
    assert [e.raw for e, _ in store.sync("e2", 1)] == ["t|1|0|1"]
    store.sync("e2", 0, started=[("t|1|0|1", "3")], finished=[Report("t|1|0|1", "SUCCEED", 0, "3", "4")])
    assert store.job_hash("t")["state"] == "SUCCEED" and store.job_hash("t")["executor"] == "e2"


def test_prefetch_change_moves_the_placement_credit(redis_server):
    """An executor that changes its prefetch (the adaptive look-ahead) gets that much more or less credit."""
    client = redis_server.client()
    client.flushall()
    store = Store(client, "credit")
    store.register("e1", 30, "h", "h=2", 2, 2, 1, 16, 1)
    assert client.hmget(store.keys.exec("e1"), "free", "prefetch") == ["18", "16"]
    store.sync("e1", 0, prefetch=100)
    assert client.hmget(store.keys.exec("e1"), "free", "prefetch") == ["102", "100"]
    store.submit([(f"t{i}", '{"name":"t%d","execution":{"exec":"/bin/true"}}' % i, "1|1|0|0", "", "")
                  for i in range(150)])
    assert client.llen(store.keys.ready("e1")) == 102   # placement follows the new credit
    store.sync("e1", 0, prefetch=40)
    assert client.hmget(store.keys.exec("e1"), "free", "prefetch") == ["-60", "40"]


def test_jobs_canceled_while_placed_give_their_cores_back(redis_server):
    """A job canceled while its entry waits on an executor's ready list is dropped when the executor claims it;
    its cores must return to the executor's credit. Lost, they starved the executor for good: a one-core
    executor got no work at all after one such cancel."""
    client = redis_server.client()
    client.flushall()
    m = Manager(redis_server.url, namespace="credit")
    m.store.register("e1", 30, "h", "h=1", 1, 1, 1, 0, 1)
    m.submit(Jobs().add(name="a", exec="/bin/true"))
    assert client.llen(m.store.keys.ready("e1")) == 1   # placed on e1, not claimed yet
    assert m.cancel("a") == {"a": "canceled"}
    assert m.store.sync("e1", 1) == []
    m.submit(Jobs().add(name="b", exec="/bin/true"))
    assert [entry.task for entry, _spec in m.store.sync("e1", 1)] == ["b"]


def test_sigterm_drains_and_hands_back(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        a = c.worker(1, "--prefetch", "3", name="worker-a")
        m = c.manager()
        names = m.submit(blockers(4))
        wait_for(m, lambda: executing(m, names) == 1, what="one task running")
        os.kill(a.pid, signal.SIGTERM)           # drain: finish what runs, hand back what waits
        (tmp_path / "go").touch()
        assert a.wait(timeout=60) == 0
        c.worker(2, name="worker-b")
        assert set(m.wait4(names, timeout=60).values()) == {"SUCCEED"}
        assert all(m.info(n)["attempts"] == 0 for n in names)
        assert sorted(e["state"] for e in m.resources(departed=True)["executors"].values()) == ["ALIVE", "LEFT"]
    finally:
        c.stop()


def test_a_drain_heartbeats_once_per_interval_while_its_tasks_run(redis_url, tmp_path):
    """A worker told to stop keeps its heartbeat while what runs finishes, once per interval: it went round without
    waiting, a core and a share of Redis busy for as long as the drain lasted."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        w = c.worker(1, "--heartbeat", "0.5")
        m = c.manager()
        names = m.submit(blockers(1))
        wait_for(m, lambda: executing(m, names) == 1, what="the task running")
        os.kill(w.pid, signal.SIGTERM)           # drain: the task runs on until 'go'
        m.store.r.config_resetstat()
        time.sleep(1.0)                          # the window measured: two heartbeats at most, and the InputQueue's
        calls = m.store.r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        assert calls < 50, calls                 # (it went round thousands of times a second)
        (tmp_path / "go").touch()
        assert w.wait(timeout=60) == 0
        assert m.wait4(names, timeout=60) == {"j0": "SUCCEED"}
    finally:
        c.stop()


def test_inputqueue_restart_and_standby(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path)
    try:
        first = c.inputqueue()
        m = c.manager()
        wait_for(m, lambda: m.client.get(m.store.keys.leader) is not None, what="a leader")
        leader = m.client.get(m.store.keys.leader)
        c.inputqueue()                           # started by mistake: stands by
        os.kill(first.pid, signal.SIGKILL)
        wait_for(m, lambda: m.client.get(m.store.keys.leader) not in (None, leader), timeout=30,
                 what="the standby to take over")
        a = c.worker(1, "--ttl", "2", "--heartbeat", "0.5", name="worker-a")
        names = m.submit(blockers(2))
        wait_for(m, lambda: executing(m, names) == 1, what="one task running")
        kill_executor(m, a)                      # the new leader must notice the dead executor
        (tmp_path / "go").touch()
        c.worker(1, name="worker-b")
        assert set(m.wait4(names, timeout=60).values()) == {"SUCCEED"}
    finally:
        c.stop()


def test_stopped_inputqueue_hands_its_lease_on(redis_url, tmp_path):
    """SIGTERM (the end of an allocation, a planned restart) gives the lease up: the standby takes over now,
    not when a 120 s lease would have expired (longer than this test waits)."""
    c = Cluster(redis_url, tmp_path)
    try:
        first = c.inputqueue("--lease", "120")
        m = c.manager()
        wait_for(m, lambda: m.client.get(m.store.keys.leader) is not None, what="a leader")
        leader = m.client.get(m.store.keys.leader)
        c.inputqueue("--lease", "3")             # stands by, asks again each second
        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        wait_for(m, lambda: m.client.get(m.store.keys.leader) not in (None, leader), timeout=30,
                 what="the standby to take over")
        c.worker(1)
        assert set(m.wait4(m.submit(Jobs().add(name="after", exec="/bin/true")), timeout=60).values()) == {"SUCCEED"}
    finally:
        c.stop()


def test_inputqueue_stopped_from_another_thread(redis_url):
    """Local mode stops its InputQueue from the client's thread: the stop wakes the wait and frees the lease."""
    iq = InputQueue(connect(redis_url), "t")
    t = threading.Thread(target=iq.run)
    t.start()
    m = Manager(redis_url, namespace="t")
    wait_for(m, lambda: m.client.get(m.store.keys.leader) == iq.id, what="the lease")
    iq.stop()
    t.join(timeout=30)
    assert not t.is_alive()
    assert m.client.get(m.store.keys.leader) is None
    assert any(f.get("type") == "stop" for _id, f in m.client.xrange(m.store.keys.events))


def test_redis_restart_mid_run(fresh_redis, tmp_path):
    c = Cluster(fresh_redis.url, tmp_path)
    try:
        c.inputqueue()
        c.worker(2)
        m = c.manager()
        jobs = Jobs()
        for i in range(200):
            jobs.add(name=f"r{i}", exec="/bin/sh", args=["-c", "sleep 0.01"])
        names = m.submit(jobs)
        wait_for(m, lambda: sum(s == "SUCCEED" for s in m.status(names).values()) >= 20, what="20 done")
        fresh_redis.stop()                       # a clean stop: the AOF has everything acknowledged
        fresh_redis.restart()
        states = Manager(fresh_redis.url).wait4(names, timeout=120)
        assert set(states.values()) == {"SUCCEED"}, c.logs()
    finally:
        c.stop()


def test_namespaces_are_isolated(redis_url, tmp_path):
    a = Cluster(redis_url, tmp_path, namespace="campaign-a")
    try:
        a.inputqueue()
        a.worker(1)
        ma, mb = a.manager(), Manager(redis_url, namespace="campaign-b")
        ma.submit(Jobs().add(name="same", exec="/bin/true"))
        mb.submit(Jobs().add(name="same", exec="/bin/true"))
        assert ma.wait4(["same"], timeout=30) == {"same": "SUCCEED"}
        assert mb.status(["same"]) == {"same": "READY"}   # no executor serves campaign-b
    finally:
        a.stop()


def test_password_and_wrong_password(tmp_path):
    from tests.redisproc import RedisServer
    with RedisServer(password="s3cret") as server:
        m = Manager(server.url)
        assert m.list() == {}
        bad = server.url.replace("s3cret", "wrong")
        with pytest.raises(QConnectionError, match="refused the credentials"):
            connect(bad)
        assert "wrong" not in str(pytest.raises(QConnectionError, connect, bad).value)


def test_running_entries_the_executor_does_not_know_are_given_back(redis_url, tmp_path):
    """After a Redis crash loses its last second of writes, an executor's running list may hold a task it
    already reported or never claimed; the executor gives such entries back rather than keep them forever."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.worker(1, "--id", "w1", "--reconcile", "0.2")
        m = c.manager()
        c.wait_executors(m)
        m.submit(Jobs().add(name="stale", script="test -e go"))
        m.wait4(["stale"], timeout=30)                        # ran once and FAILED: 'go' did not exist
        r = m.client
        (tmp_path / "go").touch()
        # What a lost write leaves behind: the job back in EXECUTING, its entry in w1's running list.
        r.hset(m.store.keys.job("stale"), mapping={"state": "EXECUTING", "executor": "w1"})
        r.incr(m.store.keys.active)
        r.rpush(m.store.keys.running("w1"), "stale|1|0|0")
        r.hincrby(m.store.keys.exec("w1"), "free", -1)
        assert m.wait4(["stale"], timeout=30) == {"stale": "SUCCEED"}, c.logs()
        assert r.llen(m.store.keys.running("w1")) == 0
        assert "unknown to us" in (tmp_path / "worker.log").read_text()
    finally:
        c.stop()
