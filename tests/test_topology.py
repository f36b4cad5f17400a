"""Redis Sentinel fail-over and Redis Cluster, on real servers on loopback (tests/topology.py starts them).

The runs are shortened here; ``python -m tests.topology sentinel --tasks 2000`` (and ``cluster``) run them at
full size."""
from __future__ import annotations

import re
import shutil

import pytest

from qcgpj import Manager
from qcgpj.connection import connect, safe_url
from qcgpj.errors import ConnectionError, DurabilityError, QcgpjError
from qcgpj.store import Report
from tests import topology_runs
from tests.topology import ClusterSetup

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli (cluster create)")


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch):
    monkeypatch.setattr(topology_runs, "RUN_TIMEOUT", 120.0)


def test_sentinel_failover_with_wait_loses_nothing(tmp_path):
    """Master SIGKILLed mid-run: the sentinels promote the replica, every service follows it, every job ends and
    nothing acknowledged is lost (the run asserts it)."""
    out = topology_runs.sentinel_run(tmp_path, 300, wait=True)
    assert out["lost"] == 0 and out["acknowledged"] == 300 and out["failed"] == 0


def test_sentinel_failover_without_wait_never_hangs(tmp_path):
    """Without WAIT a fail-over may lose the last writes (nondeterministic, so not asserted): what is guaranteed is
    that acknowledged jobs end or are reported lost by wait, and no service exits."""
    out = topology_runs.sentinel_run(tmp_path, 300, wait=False)
    assert out["acknowledged"] == 300 and out["failed"] == 0


def test_cluster_three_namespaces_on_three_shards(tmp_path):
    """Three campaigns at once, each on its own shard: cancel, requeue (a worker killed), status, top, remove."""
    out = topology_runs.cluster_run(tmp_path, 30)
    shards = out.pop("namespaces")
    assert len(set(shards.values())) == 3
    for ns in shards:
        cli = out[ns]
        assert cli["status_counts"] == {"SUCCEED": 31, "CANCELED": 1}
        assert cli["top_tasks"]["SUCCEED"] == 31 and cli["top_tasks"]["CANCELED"] == 1
    assert out[next(iter(shards))]["left_after_remove"] == 0


def test_function_jobs_refused_on_a_cluster():
    from qcgpj import Executor
    setup = ClusterSetup()
    try:
        with pytest.raises(QcgpjError, match="not supported on a Redis Cluster"):
            Executor(setup.url, namespace="fn")
    finally:
        setup.close()


def test_replica_wait_refuses_an_unacknowledged_submit(redis_url):
    """wait=1 on a Redis without replicas: the batch is written, but the submit says it was not acknowledged."""
    m = Manager(redis_url + "?wait=1&wait_timeout=50", namespace="acks")
    with pytest.raises(DurabilityError, match="0 of 1 replica"):
        m.submit([{"name": "a", "execution": {"exec": "/bin/true"}}])


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://127.0.0.1:1/", "master name"),
    ("redis+sentinel://127.0.0.1:1/m/x", "master name"),
    ("redis+sentinel://127.0.0.1:x/m", "bad port"),
    ("redis+cluster://127.0.0.1:1/3", "only database 0"),
    ("redis://127.0.0.1:1/0?wait=x", "whole numbers"),
    ("redis://127.0.0.1:1/0?wait_timeout=5", "needs wait"),
    ("redis://127.0.0.1:1/0?sentinel_password=p", "for redis+sentinel"),
    ("memcache://h/0", "redis+sentinel://"),
])
def test_bad_urls_say_why_in_one_line(url, says):
    with pytest.raises(ConnectionError, match=re.escape(says)) as err:
        connect(url)
    assert "\n" not in str(err.value)


def test_safe_url_hides_both_passwords():
    url = "redis+sentinel://u:secret@h1:26379,h2:26379/m/0?sentinel_password=other&wait=1"
    shown = safe_url(url)
    assert "secret" not in shown and "other" not in shown and "wait=1" in shown


def test_replica_wait_follows_executor_reports(redis_url, caplog):
    """Reports go out with WAIT too: with no replica to acknowledge, the executor says so once and goes on."""
    Manager(redis_url, namespace="racks").submit([{"name": "a", "execution": {"exec": "/bin/true"}}])
    store = Manager(redis_url + "?wait=1&wait_timeout=50", namespace="racks").store
    store.register("e1", 60, "h", "h=1", 1, 1, 1, 0, 1)
    (entry, _), = store.sync("e1", 1)
    assert store.sync("e1", 0, finished=[Report(entry.raw, "SUCCEED", 0, "1", "2")]) == []
    assert store.states(["a"]) == {"a": "SUCCEED"}
    assert [r.message for r in caplog.records].count(
        "a report was acknowledged by 0 of 1 replica(s) within 50 ms; going on") == 1
