"""Redis outages, restarts, lost data and memory limits; poison tasks; fencing of executors declared dead.
Real redis-servers and real worker processes throughout."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

from qcgpj import Jobs, Manager
from qcgpj.connection import connect
from qcgpj.inputqueue import InputQueue
from qcgpj.store import Store

from tests.cluster import Cluster, kill_executor, qcgpj_cmd
from tests.test_kill import until
from tests.test_reliability import blockers, wait_for

FAST = ("--ttl", "2", "--heartbeat", "0.5")


def states(m: Manager) -> dict[str, str]:
    return {eid: e.get("state", "") for eid, e in m.store.executors(departed=True).items()}


def no_tracebacks(c: Cluster) -> None:
    assert "Traceback" not in c.logs(), c.logs()


def test_outage_longer_than_the_ttl_stops_nobody(fresh_redis, tmp_path):
    """Redis away for more than twice the TTL: the workers keep running, come back and nothing is lost."""
    c = Cluster(fresh_redis.url, tmp_path)
    try:
        c.inputqueue()
        workers = [c.worker(1, *FAST, name=f"worker-{i}") for i in range(2)]
        m = c.manager()
        c.wait_executors(m, 2)
        jobs = Jobs()
        for i in range(150):
            jobs.add(name=f"o{i}", script=f"echo run >> runs.{i}; sleep 0.02")
        names = m.submit(jobs)
        wait_for(m, lambda: sum(s == "SUCCEED" for s in m.status(names).values()) >= 20, what="20 done")
        fresh_redis.stop()
        time.sleep(5)                            # the outage itself: 2.5 TTLs without Redis
        fresh_redis.restart()
        m = Manager(fresh_redis.url)
        assert set(m.wait4(names, timeout=120).values()) == {"SUCCEED"}, c.logs()
        assert [w.poll() for w in workers] == [None, None], c.logs()
        assert set(states(m).values()) == {"ALIVE"}, c.logs()
        runs = [len((tmp_path / f"runs.{i}").read_text().split()) for i in range(150)]
        assert max(runs) == 1       # nobody was declared dead, so nothing ran twice
        assert (tmp_path / "worker-0.log").read_text().count("heartbeat: Redis unavailable") <= 2
        no_tracebacks(c)
    finally:
        c.stop()


def test_services_survive_oom_lost_scripts_and_lost_stream(redis_url, tmp_path):
    """maxmemory reached, the script cache flushed, the events stream (and its group) deleted: the InputQueue
    and the worker's threads wait it out, and the queue works afterwards."""
    c = Cluster(redis_url, tmp_path)
    m = c.manager()
    try:
        c.inputqueue()
        worker = c.worker(1, *FAST)
        c.wait_executors(m)
        m.client.config_set("maxmemory", "1")    # every write refused: OOM command not allowed
        time.sleep(4)                            # the fault lasts two TTLs
        m.client.config_set("maxmemory", "0")
        m.client.script_flush()
        m.client.delete(m.store.keys.events)     # NOGROUP for the InputQueue's next read
        names = m.submit(blockers(3))
        (tmp_path / "go").touch()
        assert set(m.wait4(names, timeout=60).values()) == {"SUCCEED"}, c.logs()
        assert worker.poll() is None and all(p.poll() is None for p in c.procs)
        log = (tmp_path / "worker.log").read_text()
        assert "OutOfMemoryError" in log and log.count("Redis unavailable") <= 8, log
        no_tracebacks(c)
    finally:
        m.client.config_set("maxmemory", "0")
        c.stop()


def test_inputqueue_survives_redis_restarts(fresh_redis):
    """Killed and restarted under a running InputQueue (scripts and unsaved data lost each time), it never dies."""
    iq = InputQueue(connect(fresh_redis.url), "r", check_every=0.1, min_pass=0.01)
    t = threading.Thread(target=iq.run, daemon=True)
    t.start()
    try:
        for _ in range(4):
            fresh_redis.kill()
            fresh_redis.restart()
            m = Manager(fresh_redis.url, namespace="r")
            wait_for(m, lambda: m.client.get(m.store.keys.leader) == iq.id, what="the lease again")
            assert t.is_alive()
        m.store.register("e1", 30, "h", "h=1", 1, 1, 1, 0, 1)
        m.client.config_set("maxmemory", "1")   # its lease renewal (a write) meets OOM
        time.sleep(3)
        m.client.config_set("maxmemory", "0")
        m.client.delete(m.store.keys.events)    # and its next read NOGROUP
        m.submit(Jobs().add(name="after", exec="/bin/true"))
        m.client.delete(m.store.keys.leader)
        wait_for(m, lambda: m.client.get(m.store.keys.leader) == iq.id, what="the InputQueue serving again")
        assert t.is_alive() and m.client.xinfo_groups(m.store.keys.events)[0]["pending"] == 0
    finally:
        iq.stop()
        t.join(timeout=30)


def test_poison_task_is_failed_and_workers_remain(redis_url, tmp_path):
    """A task that kills its worker at once (before its start is reported) runs out of attempts."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue("--max-attempts", "3")
        workers = [c.worker(1, *FAST, name=f"worker-{i}") for i in range(4)]
        m = c.manager()
        c.wait_executors(m, 4)
        m.submit(Jobs().add(name="poison", script="kill -9 $PPID"))
        assert m.wait4(["poison"], timeout=120) == {"poison": "FAILED"}, c.logs()
        msg = m.info("poison")["message"]
        died = [i for i, w in enumerate(workers) if w.poll() is not None]
        assert len(died) == 3 and "gave up after 3 attempts" in msg, (msg, c.logs())
        dead = [eid for eid, st in states(m).items() if st == "DEAD"]
        assert sorted(msg.rsplit(": ", 1)[1].split()) == sorted(dead)
        names = m.submit(Jobs().add(name="fine", exec="/bin/true"))
        assert m.wait4(names, timeout=60) == {"fine": "SUCCEED"}     # the worker left still serves
    finally:
        c.stop()


def test_claims_count_attempts_but_placements_do_not(redis_server):
    client = redis_server.client()
    client.flushall()
    store = Store(client, "charge")
    store.register("e1", 30, "h", "h=1", 1, 1, 1, 1, 1)     # one core and one ahead: two placed
    spec = '{"name":"%s","execution":{"exec":"/bin/true"}}'
    store.submit([(n, spec % n, "1|1|0|0", "", "") for n in ("a", "b")])
    assert [e.task for e, _ in store.sync("e1", 1)] == ["a"]  # a claimed (start not reported), b only placed
    client.delete(store.keys.alive("e1"))
    assert store.requeue("e1", 3, "lost (test)") == (2, 0)
    assert store.job_hash("a")["attempts"] == "1" and store.job_hash("a")["lost"] == "e1"
    assert store.job_hash("b").get("attempts", "0") == "0" and "lost" not in store.job_hash("b")


def test_a_task_given_up_on_counts_the_attempt_that_failed_it(redis_server):
    """`qcgpj info` of a task whose executors died with it until --max-attempts showed 'attempts: 1' beside the
    message 'gave up after 2 attempts' (an iteration's record the same): the last charge was not written."""
    client = redis_server.client()
    client.flushall()
    store = Store(client, "giveup")
    Manager(redis_server.url, namespace="giveup").submit(Jobs().add(name="a", exec="/bin/true")
                                                         .add(name="i", exec="/bin/true", iteration=1))
    for eid in ("e1", "e2"):
        store.register(eid, 30, "h", "h=1", 2, 1, 1, 0, 1)
        assert len(store.sync(eid, 2)) == 2   # both claimed
        client.delete(store.keys.alive(eid))
        store.requeue(eid, 2, "lost (test)")
    a = store.job_hash("a")
    assert a["state"] == "FAILED" and "gave up after 2 attempts" in a["message"] and a["attempts"] == "2"
    rec = client.hget(store.keys.its("i"), "0").split("|")
    assert rec[0] == "FAILED" and "gave up after 2 attempts" in rec[6] and rec[5].split(",")[0] == "2"


def test_entry_claimed_by_an_executor_declared_dead_is_not_handed_out(redis_server):
    """The waiter's BLMOVE may claim just before the executor is declared dead: the sync that adopts it
    must not give it back to the executor, which would start it while it also runs elsewhere."""
    client = redis_server.client()
    client.flushall()
    store = Store(client, "fence")
    store.register("e1", 30, "h", "h=1", 1, 1, 1, 0, 1)
    store.submit([("t", '{"name":"t","execution":{"exec":"/bin/true"}}', "1|1|0|0", "", "")])
    entry = store.wait_ready("e1", 1)
    client.delete(store.keys.alive("e1"))
    assert store.requeue("e1", 3, "lost (test)") == (1, 0)
    assert store.sync("e1", 1, adopt=[entry]) == []


def test_worker_declared_dead_rejoins_and_never_starts_its_old_claims(redis_url, tmp_path):
    """Frozen past the TTL, a worker is declared dead and its claims run elsewhere. Resumed, it must not
    start them (its lease lapsed), and it joins again instead of exiting."""
    c = Cluster(redis_url, tmp_path)
    try:
        c.inputqueue()
        a = c.worker(1, *FAST, "--prefetch", "3", "--id", "a", name="worker-a")
        m = c.manager()
        c.wait_executors(m)
        jobs = Jobs().add(name="first", script="echo run >> runs.first; sleep 1")
        for i in range(3):
            jobs.add(name=f"t{i}", script=f"echo run >> runs.t{i}")
        names = m.submit(jobs)
        wait_for(m, lambda: m.status(["first"])["first"] == "EXECUTING", what="first running")
        frozen = kill_executor(m, a, signal.SIGSTOP)   # its first task ends meanwhile: a core free at SIGCONT
        wait_for(m, lambda: states(m).get("a") == "DEAD", what="a declared dead")
        c.worker(1, *FAST, "--id", "b", name="worker-b")
        wait_for(m, lambda: all(s == "SUCCEED" for s in m.status(names).values()), what="b ran all")
        os.kill(frozen, signal.SIGCONT)
        wait_for(m, lambda: states(m).get("a") == "ALIVE", what="a joined again")
        more = m.submit(Jobs().add(name="later", script="echo run >> runs.later", iteration=4))
        assert set(m.wait4(more, timeout=60).values()) == {"SUCCEED"}
        assert a.poll() is None
        for n in ("t0", "t1", "t2"):
            assert (tmp_path / f"runs.{n}").read_text().split() == ["run"], c.logs()
        assert "joined again" in (tmp_path / "worker-a.log").read_text()
    finally:
        c.stop()


def test_worker_ttl_and_heartbeat_are_checked(redis_url):
    for args, what in ((["--ttl", "0"], "'--ttl'"), (["--heartbeat", "5", "--ttl", "3"], "not less than --ttl")):
        out = subprocess.run(qcgpj_cmd("worker", "--redis-url", redis_url, *args), capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
        assert out.returncode == 1 and what in out.stderr and "Traceback" not in out.stderr
    assert Manager(redis_url).resources()["executors"] == {}     # no phantom executor


def test_services_started_while_redis_is_down_wait_for_it(fresh_redis, tmp_path):
    """A worker and an InputQueue started while Redis is away (restarting, or not up yet when a batch job starts
    them) wait for it instead of exiting, and serve once it is back."""
    fresh_redis.stop()
    c = Cluster(fresh_redis.url, tmp_path)
    try:
        iq = c.inputqueue("--connect-wait", "120")
        worker = c.worker(1, *FAST, "--connect-wait", "120")
        wait_for_log(tmp_path / "worker.log", "waiting up to 120 s")
        wait_for_log(tmp_path / "inputqueue.log", "waiting up to 120 s")
        fresh_redis.restart()
        m = c.manager()
        c.wait_executors(m, 1, timeout=120)
        names = m.submit(Jobs().add(name="after", exec="true"))
        assert m.wait4(names, timeout=120) == {"after": "SUCCEED"}, c.logs()
        assert iq.poll() is None and worker.poll() is None, c.logs()
        no_tracebacks(c)
    finally:
        c.stop()


def wait_for_log(path, text: str, timeout: float = 60) -> None:
    """Wait until a service's log says ``text`` (it has nothing else to wait on while Redis is away)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{path.name} never said {text!r}"
        time.sleep(0.05)


def test_a_worker_that_cannot_join_yet_stops_on_sigterm(tmp_path):
    """Redis answers but refuses the registration (out of memory): the worker waits to join, and SIGTERM (a batch
    system ending it) stops that wait with one line instead of being ignored."""
    from tests.redisproc import RedisServer
    with RedisServer(config={"maxmemory": "2mb", "maxmemory-policy": "noeviction"}) as server:
        r = server.client()
        r.config_set("maxmemory", "0")
        r.set("ballast", "x" * 4_000_000)
        r.config_set("maxmemory", "2mb")
        c = Cluster(server.url, tmp_path)
        worker = c.worker(1, *FAST)
        wait_for_log(tmp_path / "worker.log", "Redis unavailable (OutOfMemoryError")
        worker.terminate()
        assert worker.wait(timeout=60) == 1, c.logs()
        assert "stopped before it could join" in (tmp_path / "worker.log").read_text()
        no_tracebacks(c)


def test_a_second_sigterm_ends_a_drain_that_waits_for_redis(fresh_redis, tmp_path):
    """SIGTERM while Redis is away: the worker drains and waits to report and hand back (nothing is lost while
    it waits). A second SIGTERM ends that wait: it leaves, saying what it could not deliver; what it held goes
    back to the queue through the InputQueue once its heartbeat expires."""
    c = Cluster(fresh_redis.url, tmp_path)
    try:
        m = c.serving(1, *FAST)
        worker = c.procs[-1]
        names = m.submit(Jobs().add(name="slow", script="sleep 1"))
        wait_for(m, lambda: m.status(names)["slow"] == "EXECUTING", what="the task running")
        fresh_redis.stop()
        worker.terminate()
        wait_for_log(tmp_path / "worker.log", "Redis unavailable")
        assert worker.poll() is None   # the first SIGTERM: still waiting for Redis
        worker.terminate()
        worker.wait(timeout=60)
        log = (tmp_path / "worker.log").read_text()
        assert "left without Redis" in log, c.logs()
        no_tracebacks(c)
    finally:
        c.stop()


def test_a_task_that_ends_while_redis_is_away_keeps_its_real_end_time(fresh_redis, tmp_path):
    """The dispatcher's own calls (here its frequent check of the running list) fail at once while Redis is away
    instead of waiting in redis-py's retries: it goes on reaping, so a task that ends meanwhile is reported, once
    Redis is back, with the time it ended, not the time Redis came back."""
    c = Cluster(fresh_redis.url, tmp_path)
    try:
        c.inputqueue()
        c.worker(2, "--reconcile", "0.2")
        m = c.manager()
        c.wait_executors(m)
        m.submit(Jobs().add(name="o", script=f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.02; done; touch ended"))
        wait_for(m, lambda: m.status(["o"])["o"] == "EXECUTING", what="o running")
        time.sleep(1)                            # the start's round trips are over (no event says so)...
        fresh_redis.stop()
        time.sleep(0.5)                          # ... and a check of the running list meets the outage
        (tmp_path / "go").touch()
        until((tmp_path / "ended").exists, 30, "the task ended")
        time.sleep(2)                            # the rest of the outage: Redis comes back well after the end
        back = time.time()
        fresh_redis.restart()
        m = Manager(fresh_redis.url)
        assert m.wait4(["o"], timeout=60) == {"o": "SUCCEED"}, c.logs()
        end = float(m.store.r.hget(m.store.keys.job("o"), "end"))
        assert end < back, (end, back, c.logs())
        assert abs(end - (tmp_path / "ended").stat().st_mtime) < 1.5, c.logs()
        no_tracebacks(c)
    finally:
        c.stop()


def test_services_say_when_an_outage_starts_and_how_long_it_lasted(fresh_redis, tmp_path):
    """The services' loops wait out an outage themselves: it is logged when it starts, not once redis-py's own
    retries (about 15 s of them) gave up or Redis came back, and its end with how long it lasted."""
    c = Cluster(fresh_redis.url, tmp_path)
    try:
        c.inputqueue()
        c.worker(1, *FAST)
        m = c.manager()
        c.wait_executors(m)
        until(lambda: "acting (leader)" in (tmp_path / "inputqueue.log").read_text(), 30, "inputqueue.log: acting (leader)")
        fresh_redis.stop()
        until(lambda: "Redis unavailable" in (tmp_path / "worker.log").read_text(), 10, "worker.log: Redis unavailable")
        until(lambda: "Redis unavailable" in (tmp_path / "inputqueue.log").read_text(), 10, "inputqueue.log: Redis unavailable")
        time.sleep(2)                            # the outage goes on for a while after it was seen
        fresh_redis.restart()
        log = tmp_path / "worker.log"
        began = lambda: set(re.findall(r"qcgpj\.\w+: (.*?): Redis unavailable", log.read_text()))  # noqa: E731
        ended = lambda: dict(re.findall(r"qcgpj\.\w+: (.*?): Redis back after ([0-9.]+) s", log.read_text()))  # noqa: E731
        # each of its threads says when its outage ended (a thread may say it began twice, once per kind of error)
        until(lambda: began() <= set(ended()), 30, "every outage's end logged")
        assert max(float(x) for x in ended().values()) >= 2, c.logs()   # the thread seen before the 2 s (others
        #                                                               may have met the outage later)
        no_tracebacks(c)
    finally:
        c.stop()


def test_a_service_starting_while_redis_goes_away_waits_for_it(tmp_path):
    """The check of Redis's settings at a service's start meets an outage: a warning, and the service goes on to
    wait Redis out (with few retries of redis-py's own, the InputQueue exited there with the error)."""
    from qcgpj.connection import SERVICE_RETRIES, check_settings
    from tests.redisproc import free_port
    client = connect(f"redis://127.0.0.1:{free_port()}/0", check=False, retries=SERVICE_RETRIES)   # nobody there
    (warning,) = check_settings(client)
    assert warning.startswith("could not check Redis's persistence and eviction settings (Error 111 connecting")
