"""Submits are all or none at any size, on real redis-servers: late errors, a full Redis, a Redis killed
mid-submit and retries by batch id leave either the whole batch or nothing; durable submits; jobs no executor
can fit are flagged and end FAILED."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from qcgpj import Jobs, Manager
from qcgpj.connection import connect
from qcgpj.errors import DependencyError, DurabilityError, QcgpjError, QueueFullError
from qcgpj.keys import Keys

from tests.cluster import Cluster, qcgpj_cmd
from tests.fault_submit import ballast
from tests.redisproc import RedisServer
from tests.test_reliability import wait_for

SMALL_REDIS = {"maxmemory": "20mb", "maxmemory-policy": "noeviction"}


def snapshot(r: redis.Redis) -> dict[str, bytes]:
    """Every key with its serialized value: equal snapshots mean Redis is byte-for-byte unchanged."""
    return {k: r.dump(k) for k in r.keys("*")}


def sweep(n: int, prefix: str = "j", **extra) -> Jobs:
    jobs = Jobs()
    for i in range(n):
        jobs.add(name=f"{prefix}{i}", exec="/bin/true", **extra)
    return jobs


def manager(url: str) -> Manager:
    return Manager(url, client=connect(url))


# ---------------------------------------------------------------------- all or none
def test_error_found_late_in_a_large_batch_writes_nothing(redis_url):
    m = manager(redis_url)
    m.submit(Jobs().add(name="a", exec="/bin/true", iteration=3))
    before = snapshot(m.client)
    jobs = sweep(3000)
    jobs.add(name="late", exec="/bin/true", after=["a:7"])   # a has iterations 0..2 only
    with pytest.raises(DependencyError, match="late.*a:7"):
        m.submit(jobs)
    assert snapshot(m.client) == before
    fixed = sweep(3000)
    fixed.add(name="late", exec="/bin/true", after=["a:2"])
    assert len(m.submit(fixed)) == 3001   # no leftovers to collide with


def test_per_iteration_dependency_on_a_queued_job_is_checked_before_writing(redis_url):
    m = manager(redis_url)
    m.submit(Jobs().add(name="a", exec="/bin/true", iteration=3))
    before = snapshot(m.client)
    jobs = sweep(2500)
    jobs.add(name="b", exec="/bin/true", iteration=4, after=["a:${it}"])
    with pytest.raises(DependencyError, match="'b'"):
        m.submit(jobs)
    assert snapshot(m.client) == before


def test_same_batch_id_again_after_success_writes_nothing(redis_url):
    m = manager(redis_url)
    assert m.submit(sweep(1500), batch_id="run-1") == [f"j{i}" for i in range(1500)]
    before = snapshot(m.client)
    m.submit(sweep(1500), batch_id="run-1")   # a retry: success, no duplicates, no error
    assert snapshot(m.client) == before
    assert m.store.active() == 1500 and len(m.list()) == 1500


def test_a_client_killed_after_staging_leaves_no_visible_job_and_its_retry_works(redis_url):
    m = manager(redis_url)
    rows = [(f"s{i}", '{"name": "s%d"}' % i, "1|1|0|0", "", "") for i in range(3000)]
    stage = m.store.keys.stage("run-2:dead")
    m.store._stage(stage, rows)             # what a client killed before its commit leaves behind
    assert m.list() == {} and m.store.active() == 0 and not m.client.exists(m.store.keys.pending)
    assert 0 < m.client.ttl(stage) <= 3600   # and it goes away by itself
    assert len(m.submit(sweep(3000, "s"), batch_id="run-2")) == 3000
    assert len(m.list()) == 3000


def test_redis_killed_mid_submit_leaves_all_or_nothing_and_the_retry_is_safe(fresh_redis):
    url = fresh_redis.url
    # A client that gives up at once when the server is gone (qcgpj's own retries for about 20 s first).
    m = Manager(url, client=redis.Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 0)))
    r = fresh_redis.client()
    jobs = sweep(100_000)
    stage_seen = threading.Event()

    def killer() -> None:   # SIGKILL the server as soon as the batch is being staged
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if next(r.scan_iter(match="*:stage:*", count=1000), None):
                    break
            except redis.RedisError:
                return
        stage_seen.set()
        fresh_redis.kill()

    t = threading.Thread(target=killer)
    t.start()
    with pytest.raises(Exception):
        m.submit(jobs, batch_id="big")
    t.join()
    assert stage_seen.is_set()
    fresh_redis.restart()
    m = manager(url)
    assert len(m.list()) in (0, 100_000)   # the AOF holds the whole batch or none of it
    assert len(m.submit(jobs, batch_id="big")) == 100_000
    assert len(m.list()) == 100_000 and m.store.active() == 100_000
    assert m.submit(jobs, batch_id="big") and len(m.list()) == 100_000


def test_one_job_of_a_million_iterations_stays_small(redis_url):
    m = manager(redis_url)
    used = m.client.info("memory")["used_memory"]
    m.submit(Jobs().add(name="big", exec="/bin/true", iteration=1_000_000))
    assert m.client.info("memory")["used_memory"] - used < 1_000_000
    assert m.info("big")["iterations"]["total"] == 1_000_000


# ---------------------------------------------------------------------- out of memory
def test_a_batch_id_with_a_line_break_is_refused(redis_url):
    """The batch id was checked with re.match and a '$', which lets a final newline through: 'run-1\n' was taken
    as a batch of its own, its key split in two the lines of `redis-cli --scan` (and of any script reading them).
    Refused now, in one line, with nothing written."""
    m = Manager(redis_url)
    with pytest.raises(QcgpjError, match="invalid batch id") as err:
        m.submit(sweep(2), batch_id="run-1\n")
    assert "\n" not in str(err.value) and m.list() == {} and m.client.keys("*") == []


def test_a_batch_too_large_for_maxmemory_is_refused_whole_and_the_queue_works_after():
    with RedisServer(config=SMALL_REDIS) as server:
        m = manager(server.url)
        r = server.client()
        m.submit(sweep(10, "pre"))
        before = snapshot(r)
        with pytest.raises(QueueFullError, match="maxmemory.*nothing was written"):
            m.submit(sweep(200_000))
        assert snapshot(r) == before
        assert len(m.submit(sweep(100, "after"))) == 100


def test_submit_and_cancel_at_maxmemory_give_one_line_and_change_nothing(tmp_path):
    with RedisServer(config=SMALL_REDIS) as server:
        m = manager(server.url)
        r = server.client()
        m.submit(sweep(5))
        r.config_set("maxmemory", "0")
        ballast(r, 30)                              # Redis is now past the limit set back below
        r.config_set("maxmemory", "20mb")
        before = snapshot(r)
        (tmp_path / "jobs.json").write_text('[{"name": "late", "execution": {"exec": "/bin/true"}}]')
        for args in (["submit", "jobs.json"], ["cancel", "j1"]):
            out = subprocess.run(qcgpj_cmd(*args, "--redis-url", server.url), cwd=tmp_path, capture_output=True,
                                 text=True, env=Cluster(server.url, tmp_path).env)
            assert out.returncode == 1, out.stderr
            said = [ln for ln in out.stderr.splitlines() if " WARNING " not in ln]   # the settings check's note
            assert len(said) == 1 and "Redis is full" in said[0], out.stderr
        with pytest.raises(QueueFullError):
            m.cancel("j1")
        assert snapshot(r) == before
        r.delete("ballast")                         # memory freed: the queue works again
        assert m.cancel("j1") == {"j1": "canceled"}
        assert m.submit(Jobs().add(name="late", exec="/bin/true")) == ["late"]


# ---------------------------------------------------------------------- durable submits
def test_durable_submit_is_refused_where_it_cannot_be_confirmed(redis_url, tmp_path):
    m = manager(redis_url)   # no AOF, no replica: nothing could confirm it
    before = snapshot(m.client)
    with pytest.raises(DurabilityError, match="nothing was written"):
        m.submit(sweep(3), durable=True)
    assert snapshot(m.client) == before
    (tmp_path / "jobs.json").write_text('[{"name": "a", "execution": {"exec": "/bin/true"}}]')
    out = subprocess.run(qcgpj_cmd("submit", "jobs.json", "--durable", "--redis-url", redis_url), cwd=tmp_path,
                         capture_output=True, text=True, env=Cluster(redis_url, tmp_path).env)
    said = [ln for ln in out.stderr.splitlines() if " WARNING " not in ln]   # the settings check's note
    assert out.returncode == 1 and len(said) == 1 and "durable" in said[0], out.stderr


def test_durable_submit_with_appendfsync_always():
    with RedisServer(aof=True, config={"appendfsync": "always"}) as server:
        m = manager(server.url)
        assert len(m.submit(sweep(10), durable=True, batch_id="d1")) == 10
        assert len(m.submit(sweep(10), durable=True, batch_id="d1")) == 10   # confirmed again, not rewritten
        assert len(m.list()) == 10


def test_durable_submit_waits_for_a_replica():
    with RedisServer() as primary, \
            RedisServer(config={"replicaof": f"127.0.0.1 {primary.port}"}) as replica:
        r = primary.client()
        deadline = time.monotonic() + 60
        while r.info("replication").get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica never came online"
            time.sleep(0.1)
        m = manager(primary.url)   # no AOF here: only the replica can confirm
        assert len(m.submit(sweep(20), durable=True)) == 20
        assert replica.client().exists(Keys().job("j19"))   # confirmed means: already on the replica


# ---------------------------------------------------------------------- jobs no executor can fit
def _big_jobs() -> Jobs:
    return (Jobs()
            .add(name="big", exec="/bin/true", numCores=64, model_opts={"cpu_bind": False})
            .add(name="bigsweep", exec="/bin/true", numCores=64, iteration=3, model_opts={"cpu_bind": False})
            .add(name="after", exec="/bin/true", after=["bigsweep"])
            .add(name="small", exec="/bin/true"))


def test_a_job_no_executor_fits_is_flagged_then_failed(cluster):
    cluster.inputqueue("--unplaceable-timeout", "2")
    m = cluster.manager()
    m.submit(_big_jobs())     # before any executor: nothing to check the sizes against yet
    cluster.worker(2)
    wait_for(m, lambda: "unplaceable" in m.info("big"), what="big flagged")
    assert "needs 64 cores; the largest live executor has 2" in m.info("big")["message"]
    states = m.wait4(["big", "bigsweep", "after", "small"], timeout=120)   # ends: nothing stranded
    assert states == {"big": "FAILED", "bigsweep": "FAILED", "after": "OMITTED", "small": "SUCCEED"}
    for name in ("big", "bigsweep"):
        assert "no live executor could run it for 2 s: needs 64 cores" in m.info(name)["message"]
    assert m.info("bigsweep")["iterations"]["FAILED"] == 3
    assert m.info("bigsweep:1")["state"] == "FAILED"
    assert m.client.llen(m.store.keys.pending) == 0


def test_an_executor_that_fits_joining_before_the_timeout_runs_the_job(cluster):
    cluster.inputqueue("--unplaceable-timeout", "600")
    m = cluster.manager()
    m.submit(_big_jobs())
    cluster.worker(2, name="small-worker")
    wait_for(m, lambda: "unplaceable" in m.info("bigsweep"), what="bigsweep flagged")
    cluster.worker(2, "--nodes", "pretend:64", name="big-worker")
    states = m.wait4(["big", "bigsweep", "after", "small"], timeout=120)
    assert set(states.values()) == {"SUCCEED"}, cluster.logs()
    assert "unplaceable" not in m.info("bigsweep") and m.info("bigsweep")["message"] == ""


def test_jobs_wait_for_the_first_executor_as_long_as_it_takes(cluster):
    cluster.inputqueue("--unplaceable-timeout", "0.5")
    m = cluster.manager()
    m.submit(_big_jobs())
    wait_for(m, lambda: m.client.get(m.store.keys.leader), what="the InputQueue acting")
    last = m.store.last_event_id()
    for _ in range(6):    # the InputQueue's checks come and go: with no executor, none flags or fails a job
        last = m.store.wait_event(last, 0.5)
    assert m.status(["big", "small"]) == {"big": "READY", "small": "READY"}
    assert "unplaceable" not in m.info("big")
