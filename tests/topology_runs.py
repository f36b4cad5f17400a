"""The runs on a Sentinel-managed Redis and on a Redis Cluster that tests/test_topology.py shortens and
``python -m tests.topology`` runs at full size. Each returns a summary dict and asserts what qcgpj guarantees."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import redis

from qcgpj import Manager
from qcgpj.errors import LostJobsError, QcgpjError, UnknownJobError
from qcgpj.store import FINAL_STATES, Report
from tests.cluster import Cluster, kill_executor, qcgpj_cmd
from tests.redisproc import RedisServer
from tests.topology import ClusterSetup, SentinelSetup, wait_replica

BATCH = 20
RUN_TIMEOUT = float(os.environ.get("QCGPJ_TOPOLOGY_TIMEOUT", "600"))   # seconds for any one wait


def _jobs(prefix: str, n: int) -> list[dict]:
    return [{"name": f"{prefix}{i}", "execution": {"exec": "/bin/true"}} for i in range(n)]


def _submit_all(m: Manager, prefix: str, n: int, acked: list[str], stop: threading.Event) -> None:
    """Submit n jobs in batches, each retried with its batch id until acknowledged: a careful client, going on
    through the fail-over. ``acked`` gets the names of the batches whose submit returned."""
    for b in range(0, n, BATCH):
        batch_id = uuid.uuid4().hex
        jobs = _jobs(f"{prefix}{b}-", min(BATCH, n - b))
        while not stop.is_set():
            try:
                m.submit(jobs, batch_id=batch_id)
                acked.extend(j["name"] for j in jobs)
                break
            except (QcgpjError, redis.RedisError):
                time.sleep(0.2)


def _final_count(m: Manager) -> int:
    stats = m.client.hgetall(m.store.keys.stats)
    return sum(int(stats.get(s, 0)) for s in FINAL_STATES)


def sentinel_run(workdir: Path, tasks: int, wait: bool = True) -> dict:
    """Two workers and an InputQueue through a sentinel URL; the master is SIGKILLed when about a third of the
    tasks have ended. Guaranteed: no service exits, nothing hangs, and every acknowledged job ends or (WAIT off
    only) is reported lost by ``wait``; with WAIT on, nothing acknowledged is lost."""
    setup = SentinelSetup()
    c = None
    try:
        url = setup.url("wait=1&wait_timeout=500" if wait else "")
        c = Cluster(url, workdir, namespace="fo")
        c.inputqueue()
        c.worker(2)
        c.worker(2, name="worker2")
        m = c.manager()
        c.wait_executors(m, 2)
        acked: list[str] = []
        stop = threading.Event()
        submitter = threading.Thread(target=_submit_all, args=(m, "t", tasks, acked, stop), daemon=True)
        t0 = time.monotonic()
        submitter.start()
        while len(acked) < tasks // 3 or _final_count(m) < tasks // 10:   # the kill comes amid submits and runs
            assert time.monotonic() - t0 < RUN_TIMEOUT, f"no progress before the kill\n{c.logs()}"
            time.sleep(0.05)
        old_port = setup.master_port()
        victim = setup.kill_master()
        killed_at = time.monotonic()
        setup.wait_failover(old_port)
        failover_s = time.monotonic() - killed_at
        setup.rejoin(victim)   # the machine comes back, as a replica: WAIT 1 can be met again
        submitter.join(RUN_TIMEOUT)
        assert not submitter.is_alive(), f"the submitter never got its batches acknowledged\n{c.logs()}"
        states = m.store.states(acked)
        lost = [n for n, s in states.items() if s is None]
        try:
            m.wait4([n for n in acked if n not in lost], timeout=RUN_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"acknowledged jobs never ended\n{c.logs()}") from None
        if lost:   # what wait says of them: lost, not an endless wait
            try:
                m.wait4(acked, timeout=RUN_TIMEOUT)
                raise AssertionError("wait did not report the lost jobs")
            except (LostJobsError, UnknownJobError):
                pass
        exited = [p.args[3] + f" ({p.returncode})" for p in c.procs if p.poll() is not None]
        assert not exited, f"services exited: {exited}\n{c.logs()}"
        final = m.store.states(acked)
        summary = {"tasks": tasks, "acknowledged": len(acked), "lost": len(lost), "wait": wait,
                   "failover_s": round(failover_s, 1), "seconds": round(time.monotonic() - t0, 1),
                   "failed": sum(1 for s in final.values() if s not in (None, "SUCCEED"))}
        if wait:
            assert not lost, f"acknowledged jobs lost with WAIT on: {lost[:5]}"
        assert summary["failed"] == 0, f"{summary}\n{c.logs()}"
        return summary
    finally:
        if c is not None:
            c.stop()
        setup.close()


def cluster_run(workdir: Path, tasks: int) -> dict:
    """Three namespaces, each on its own shard, served at once; in each: cancel, a worker killed (its tasks
    requeued to the other), ``status`` and ``top`` through the cluster URL."""
    setup = ClusterSetup()
    clusters: list[Cluster] = []
    try:
        namespaces = setup.namespaces_on_each_shard()
        out: dict = {"namespaces": {ns: setup.owner(ns) for ns in namespaces}}
        managers = {}
        for ns in namespaces:
            d = workdir / ns
            d.mkdir()
            c = Cluster(setup.url, d, namespace=ns)
            clusters.append(c)
            c.inputqueue()
            c.worker(2, "--heartbeat", "1", "--ttl", "3", name="victim")
            c.worker(2, name="worker")
            m = c.manager()
            c.wait_executors(m, 2)
            managers[ns] = m
        for ns, m in managers.items():
            m.submit([{"name": "long", "execution": {"exec": "/bin/sleep", "args": ["600"]}},
                      {"name": "sleeper", "execution": {"exec": "/bin/sleep", "args": ["1"]}},
                      *_jobs("t", tasks)])
        for c, (ns, m) in zip(clusters, managers.items()):
            kill_executor(m, c.procs[1])   # the victim worker's executor: its tasks go to the other one
            assert m.cancel(["long"]) == {"long": "canceled"} or m.status("long")["long"] in FINAL_STATES
        for c, (ns, m) in zip(clusters, managers.items()):
            states = m.wait4([f"t{i}" for i in range(tasks)] + ["sleeper", "long"], timeout=RUN_TIMEOUT)
            assert states["long"] == "CANCELED", states["long"]
            assert all(states[f"t{i}"] == "SUCCEED" for i in range(tasks)), f"{ns}\n{c.logs()}"
            out[ns] = _cli_on_cluster(c, full=ns == namespaces[0])
            exited = [p.args[3] for p in c.procs[:1] + c.procs[2:] if p.poll() is not None]
            assert not exited, f"{ns}: services exited: {exited}\n{c.logs()}"
        return out
    finally:
        for c in clusters:
            c.stop()
        setup.close()


def _cli_on_cluster(c: Cluster, full: bool) -> dict:
    """The reading commands and a removal through the cluster URL, each a process as a user runs it."""
    def run(*args: str) -> str:
        p = subprocess.run(qcgpj_cmd(*args, "--redis-url", c.url, "-n", c.namespace), capture_output=True,
                           text=True, env=c.env, timeout=120)
        assert p.returncode == 0, f"qcgpj {' '.join(args)}: {p.stderr}"
        return p.stdout
    status = json.loads(run("status", "--json"))
    top = json.loads(run("top", "--json"))
    out = {"status_counts": status["counts"], "top_tasks": top.get("tasks")}
    if full:   # the rest once: each command is a process start, seconds on a loaded machine
        run("resources")
        run("info", "t0")
        run("remove", "--finished")
        out["left_after_remove"] = len(json.loads(run("status", "--json"))["jobs"])
    return out


def wait_cost(reports: int) -> dict:
    """Executor reports per second on a master with one replica on loopback, without and with WAIT 1: the
    same round trips (claim one task, report it finished) timed in interleaved rounds."""
    master = RedisServer()
    replica = RedisServer(config={"replicaof": f"127.0.0.1 {master.port}"})
    try:
        wait_replica(master, 1)
        rates: dict[str, list[float]] = {"off": [], "wait=1": []}
        rounds = 6
        per = max(reports // (2 * rounds), 100)
        for r in range(rounds):
            for mode in (("off", "wait=1") if r % 2 == 0 else ("wait=1", "off")):
                url = master.url + ("?wait=1&wait_timeout=1000" if mode != "off" else "")
                rates[mode].append(_report_rate(url, f"w{r}{mode[0]}", per))
        return {mode: round(sorted(v)[len(v) // 2]) for mode, v in rates.items()} | {"reports_per_round": per}
    finally:
        replica.close()
        master.close()


def _report_rate(url: str, ns: str, n: int) -> float:
    """Reports per second of one simulated executor: each round trip reports the last task and claims the next."""
    m = Manager(url, namespace=ns)
    m.submit([{"name": "it", "iteration": {"stop": n}, "execution": {"exec": "/bin/true"}}])
    store = m.store
    store.register("e1", 60, "h", "h=1", 1, 1, 1, 0, 1)
    got = store.sync("e1", 1)
    t0 = time.perf_counter()
    done = 0
    while got:
        entry = got[0][0]
        store.sync("e1", 0, started=[(entry.raw, str(time.time()))])
        got = store.sync("e1", 1, finished=[Report(entry.raw, "SUCCEED", 0, str(time.time()), str(time.time()))])
        done += 1
    return done / (time.perf_counter() - t0)
