"""Housekeeping on a real redis-server: removing final jobs, purging a namespace, forgetting departed executors."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from qcgpj import Jobs, Manager
from qcgpj.errors import RedisMemoryError, RemoveError
from qcgpj.housekeeping import BATCH, STEP, remove_finished
from qcgpj.keys import JOB_KINDS, TEMPLATES
from tests.cluster import qcgpj_cmd
from tests.test_reliability import wait_for

JOB_KEY_HEADS = tuple(TEMPLATES[k].split("{}")[0] for k in JOB_KINDS)   # "job:", "its:", ...


def namespace_keys(m: Manager) -> list[str]:
    return list(m.client.scan_iter(match=m.store.keys.prefix + "*", count=10_000))


def job_keys(m: Manager) -> list[str]:
    cut = len(m.store.keys.prefix)
    return [k for k in namespace_keys(m) if k[cut:].startswith(JOB_KEY_HEADS)]


def namespace_bytes(m: Manager) -> int:
    return sum(m.client.memory_usage(k) or 0 for k in namespace_keys(m))


def _noop_jobs(names: list[str]) -> Jobs:
    jobs = Jobs()
    for name in names:
        jobs.add(name=name, exec="/bin/true", model="noop")
    return jobs


def test_remove_finished_after_5000_jobs_leaves_a_few_kb(cluster):
    m = cluster.serving(2)
    jobs = Jobs()
    for i in range(5_000):   # several batches of remove's (1,000 names each)
        jobs.add(name=f"j{i}", exec="/bin/true", model="noop")
    m.submit(jobs.add(name="sweep", exec="/bin/true", model="noop", iteration=500, after=["j0"]))
    states = m.wait4all(timeout=300)
    assert set(states.values()) == {"SUCCEED"}
    before = namespace_bytes(m)
    assert len(m.remove(finished=True)) == 5_001
    assert job_keys(m) == [] and m.list() == {}
    after = namespace_bytes(m)
    assert after < 12_000, f"{after} bytes left ({before} before): {namespace_keys(m)}"
    stats = m.client.hgetall(m.store.keys.stats)
    assert int(stats["tasks"]) == 0 and int(stats["SUCCEED"]) == 0


def test_remove_names_only_final_jobs_without_waiting_dependants(cluster):
    m = cluster.serving(2)
    m.submit(Jobs().add(name="a", script="while [ ! -e go_a ]; do sleep 0.05; done")
             .add(name="hold", script="while [ ! -e go ]; do sleep 0.05; done")
             .add(name="child", exec="/bin/true", after=["a", "hold"]))
    (cluster.workdir / "go_a").touch()
    assert m.wait4(["a"], timeout=60) == {"a": "SUCCEED"}
    with pytest.raises(RemoveError, match="job 'a': jobs that are not final yet depend on it \\(child\\)"):
        m.remove(["a"])
    with pytest.raises(RemoveError, match="job 'hold': is (READY|SCHEDULED|EXECUTING): only final jobs"):
        m.remove(["hold", "a"])   # all or none: 'a' stays as well
    with pytest.raises(RemoveError, match="^unknown job 'nope'$"):
        m.remove(["nope"])
    assert m.info("a")["state"] == "SUCCEED"
    assert m.remove(finished=True) == []   # 'a' is kept while 'child' waits

    res = subprocess.run(qcgpj_cmd("remove", "hold", "--redis-url", cluster.url), capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "only final jobs can be removed" in res.stderr

    (cluster.workdir / "go").touch()
    assert set(m.wait4(["hold", "child"], timeout=60).values()) == {"SUCCEED"}
    assert sorted(m.remove(["child", "a", "hold"])) == ["a", "child", "hold"]
    assert job_keys(m) == [] and m.list() == {}


def test_remove_cli_finished_older_than_and_all(cluster):
    m = cluster.serving(1)
    m.submit(Jobs().add(name="x", exec="/bin/true").add(name="y", exec="/bin/false"))
    m.wait4(["x", "y"], timeout=60)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(qcgpj_cmd(*args, "--redis-url", cluster.url), capture_output=True, text=True)

    assert cli("remove", "--finished", "--older-than", "1d").stdout == "removed 0 job(s)\n"
    assert cli("remove", "--finished", "--older-than", "soon").returncode == 1
    assert cli("remove").returncode == 1   # nothing said
    assert cli("remove", "--all").stdout == "removed 2 job(s)\n"
    assert job_keys(m) == []
    assert m.client.llen(m.store.keys.failures) == 0   # y's failure went with it


def test_purge_asks_then_empties_the_namespace(cluster):
    m = cluster.serving(1)
    m.submit(Jobs().add(name="x", exec="/bin/true"))
    m.wait4(["x"], timeout=60)
    no = subprocess.run(qcgpj_cmd("purge", "--redis-url", cluster.url), input="n\n", capture_output=True,
                        text=True)
    assert no.returncode == 1 and "Aborted" in no.stderr and m.info("x")["state"] == "SUCCEED"
    other = Manager(cluster.url, namespace="other")
    other.submit(Jobs().add(name="z", exec="/bin/true"))
    yes = subprocess.run(qcgpj_cmd("purge", "--yes", "--redis-url", cluster.url), capture_output=True, text=True)
    assert yes.returncode == 0
    # the running services write their own keys again (lease, events), but nothing of the jobs comes back
    assert job_keys(m) == [] and m.list() == {} and not m.client.exists(m.store.keys.stats)
    assert other.status("z") == {"z": "READY"}   # other namespaces are left alone


def test_departed_executors_are_forgotten_after_the_retention(cluster):
    cluster.inputqueue("--executor-retention", "2s")
    first = cluster.worker(1, name="first")
    m = cluster.manager()
    cluster.wait_executors(m)
    (eid,) = m.store.executors()
    first.terminate()
    first.wait(30)
    assert m.store.prune_executors(3600) == 0 and eid in m.resources(departed=True)["executors"]
    wait_for(m, lambda: eid not in m.resources(departed=True)["executors"], what="the executor forgotten")
    assert [k for k in namespace_keys(m) if eid in k] == []


def test_inputqueue_keep_finished_removes_jobs_after_they_end(cluster):
    cluster.inputqueue("--keep-finished", "0")
    cluster.worker(1)
    m = cluster.manager()
    cluster.wait_executors(m)
    m.submit(Jobs().add(name="a", exec="/bin/true").add(name="b", exec="/bin/true", after=["a"]))
    wait_for(m, lambda: m.store.active() == 0 and m.list() == {}, what="the jobs removed")
    assert job_keys(m) == []


def test_remove_finished_goes_through_when_redis_is_past_maxmemory(redis_url):
    """A submit refused at maxmemory says 'free memory (qcgpj remove --finished)': that removal must work while
    Redis is past its limit, since deleting is the only way back under it. It was refused as a write ('Redis is
    out of memory ... free memory or raise maxmemory'): the script's first write was a counter, not a deletion."""
    m = Manager(redis_url)
    jobs = Jobs()
    for i in range(2000):
        jobs.add(name=f"j{i}", exec="/bin/true")
    names = m.submit(jobs)
    m.cancel(names)                       # no executor: canceled at once, final
    c = m.client
    c.config_set("maxmemory", c.info("memory")["used_memory"] - 100_000)
    try:
        with pytest.raises(RedisMemoryError):
            m.submit(Jobs().add(name="late", exec="/bin/true"))
        res = subprocess.run(qcgpj_cmd("remove", "--finished", "--redis-url", redis_url), capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
        assert job_keys(m) == [] and m.list() == {}
        assert m.submit(Jobs().add(name="late", exec="/bin/true")) == ["late"]   # back under the limit
        assert m.client.hget(m.store.keys.stats, "tasks") == "1" and m.store.final_counts()[0] in (None, "0")
    finally:
        c.config_set("maxmemory", 0)


def test_a_job_canceled_while_ready_removed_and_submitted_again_runs_once(cluster):
    """The entry a job canceled while it waited for cores left in `pending` went with the job: it was read
    later as the new job of the same name, which then ran twice (placed from the old entry and from its own)."""
    from tests.test_reliability import blockers, executing
    m = cluster.serving(2, "--prefetch", "0")
    m.submit(blockers(2))
    wait_for(m, lambda: executing(m, ["j0", "j1"]) == 2, what="both cores busy")
    again = Jobs().add(name="a", script="echo run >> a.log; while [ ! -e go_a ]; do sleep 0.05; done")
    m.submit(again)                            # waits for a core, in `pending`
    assert m.cancel(["a"]) == {"a": "canceled"}
    assert m.remove(["a"]) == ["a"]
    m.submit(again)
    (cluster.workdir / "go").touch()
    wait_for(m, lambda: m.client.llen(m.store.keys.pending) == 0
             and set(m.status(["j0", "j1"]).values()) == {"SUCCEED"}, what="the blockers' cores given out")
    (eid,) = m.store.executors()
    held = m.client.lrange(m.store.keys.ready(eid), 0, -1) + m.client.lrange(m.store.keys.running(eid), 0, -1)
    assert [e.split("|")[0] for e in held] == ["a"]
    (cluster.workdir / "go_a").touch()
    assert m.wait4(["a"], timeout=60) == {"a": "SUCCEED"}
    assert (cluster.workdir / "a.log").read_text() == "run\n"


def test_wait4all_is_not_lost_when_final_jobs_are_removed_meanwhile(cluster):
    """A client waiting for the whole queue got LostJobsError ('Redis lost data') when a final job it had seen was
    removed during the wait: by the InputQueue's --keep-finished (seen in a soak: the long-lived client died at
    its 8th batch), or by another user's `remove --finished`. Jobs removed are not lost: the wait now tells them
    apart by the `removed` counter, and returns the jobs still there."""
    m = cluster.serving(1)
    m.submit(Jobs().add(name="old", exec="/bin/true").add(name="older", exec="/bin/true"))
    assert m.wait4(["old", "older"], timeout=60) == {"old": "SUCCEED", "older": "SUCCEED"}
    m.submit(Jobs().add(name="hold", script="while [ ! -e go ]; do sleep 0.05; done"))
    # a removal under way as the wait starts: the job's keys gone and counted, its name still listed (a removal
    # takes the names of its batches off the job list at its end)
    assert m.store.remove_jobs(["older"], "skip") == [("removed", "")]
    waiting, out = threading.Event(), {}

    def wait() -> None:
        try:
            out["states"] = cluster.manager().wait4all(timeout=120, progress=lambda done, total: waiting.set())
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=wait)
    t.start()
    assert waiting.wait(60)          # the wait has read the queue's jobs
    assert m.remove(["old"]) == ["old"]
    m.store.unlist_jobs(["older"])
    (cluster.workdir / "go").touch()
    t.join(120)
    assert out == {"states": {"hold": "SUCCEED"}}


def test_a_keep_finished_pass_reads_only_the_jobs_submitted_before_its_horizon(cluster):
    """`--keep-finished` (remove --finished --older-than) read the state of every job of the queue on every pass: a
    soak whose window held 263,000 jobs took seconds per pass, in the InputQueue's serving thread ('Redis restarted
    or out of sight' after each). Jobs end after they are submitted, in list order: the pass now stops at the first
    batch all submitted after its horizon, so it reads the jobs old enough to go and one batch more."""
    m = cluster.serving(2)
    old, new = [f"old{i}" for i in range(1500)], [f"new{i}" for i in range(5000)]
    m.submit(_noop_jobs(old))
    m.wait4all(timeout=300)
    horizon = max(float(end) for (end,) in m.store.job_fields(old, "end"))
    m.submit(_noop_jobs(new))
    m.wait4all(timeout=300)
    cluster.stop()   # only this client talks to Redis from here on
    job_key = m.store.keys.job("")
    reads: list[str] = []
    with m.client.monitor() as mon:
        def listen() -> None:
            for cmd in mon.listen():
                if "qcgpj-test-end" in cmd["command"]:
                    return
                if cmd.get("client_type") != "lua" and cmd["command"].startswith(f"HMGET {job_key}"):
                    reads.append(cmd["command"].split()[1])
        t = threading.Thread(target=listen)
        t.start()
        removed, kept = remove_finished(m.store, older_than=time.time() - horizon)
        m.client.echo("qcgpj-test-end")
        t.join(60)
    assert sorted(removed) == sorted(old) and kept == {} and list(m.list()) == new
    assert len(old) <= len(reads) <= len(old) + 2 * BATCH, len(reads)


def test_remove_reads_names_from_stdin_all_or_none(redis_url):
    """`remove -` takes the names on standard input (a campaign's do not fit a command line), checked as those
    given as arguments: with one that cannot be removed, nothing is."""
    m = Manager(redis_url)
    jobs = Jobs()
    for i in range(2500):
        jobs.add(name=f"j{i}", exec="/bin/true")
    m.submit(jobs.add(name="open", exec="/bin/true"))
    m.cancel([f"j{i}" for i in range(2500)])   # no executor: canceled at once, final

    def remove(stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(qcgpj_cmd("remove", "-", "--redis-url", redis_url), input=stdin, capture_output=True,
                              text=True, timeout=120)

    refused = remove("\n".join(f"j{i}" for i in range(2500)) + "\nopen\n")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "'open'" in refused.stderr
    unknown = remove("j1\nnope\n")
    assert (unknown.returncode, unknown.stderr) == (1, "Error: unknown job 'nope'\n")
    assert len(m.list()) == 2501
    res = remove("\n".join(f"j{i}" for i in range(1, 2500)) + "\n\n")
    assert (res.returncode, res.stdout) == (0, "removed 2499 job(s)\n")
    assert m.list() == {"j0": "CANCELED", "open": "READY"}
    assert remove("").stdout == "nothing to remove: no names on standard input\n"


def _monitored(m: Manager, seen, until) -> None:
    """Feed every command MONITOR shows to seen(cmd) while until() runs (from this thread); then stop."""
    marker = "qcgpj-test-end"
    with m.client.monitor() as mon:
        def listen() -> None:
            for cmd in mon.listen():
                if marker in cmd["command"]:
                    return
                seen(cmd)
        t = threading.Thread(target=listen)
        t.start()
        try:
            until()
        finally:
            m.client.echo(marker)
            t.join(120)


def test_a_keep_finished_pass_goes_in_steps_between_the_inputqueue_turns(cluster):
    """A --keep-finished pass ran whole inside one turn of the InputQueue's loop: in a soak at 5,000 jobs/s,
    passes of 30,000-90,000 jobs held up placement, the dead-executor check (13 passes of 19 were followed by
    'Redis restarted or out of sight', a grace for every executor) and the lease renewal (a pass longer than the
    lease lets the standby take over). A pass now goes in steps of at most STEP jobs, one per turn: each turn
    starts by reading the events (XREADGROUP), so between two such reads at most STEP jobs are removed."""
    m = cluster.manager()
    n = 3 * STEP + 500
    names = m.submit(_noop_jobs([f"j{i}" for i in range(n)]))
    m.cancel(names)                        # no executor: final at once
    turns: list[int] = [0]                 # jobs removed in each turn of the InputQueue's loop

    def seen(cmd: dict) -> None:
        words = cmd["command"].split()
        if cmd.get("client_type") == "lua":
            return
        if words[0] == "XREADGROUP" and words[-1] == "0":   # the first read of a turn: pending events
            turns.append(0)
        elif words[0] == "EVALSHA" and words[4:5] == ["jobs"]:
            turns[-1] += len(words) - 7    # EVALSHA sha 1 key jobs now how names...

    def keep_finished() -> None:
        cluster.inputqueue("--keep-finished", "0")
        wait_for(m, lambda: m.list() == {}, timeout=120, what="the jobs removed")

    _monitored(m, seen, keep_finished)
    assert job_keys(m) == [] and sum(turns) == n
    assert max(turns) <= STEP, [t for t in turns if t]
    assert sum(1 for t in turns if t) >= 4


def test_unlisting_removed_jobs_reads_the_list_only_up_to_the_last_one(cluster):
    """Taking removed names off the job list rewrote the whole list in one script, however few went: Redis was
    blocked 40 ms at 100,000 names and 301 ms at 500,000 on every --keep-finished pass. It now reads the list
    from its head (where a removal's jobs are: the list is in submission order) up to the last entry it takes
    off, and rewrites that part only. Seen in what the script asks Redis for (MONITOR)."""
    m = cluster.manager()
    names = m.submit(_noop_jobs([f"j{i}" for i in range(20_000)]))   # no executor: all READY, listed
    gone = [f"j{i}" for i in range(150) if i != 50]
    m.cancel(gone + ["j50"])
    assert {s for s, _ in m.store.remove_jobs(gone, "skip")} == {"removed"}
    m.submit(_noop_jobs(["j10"]))          # removed, submitted again: its old entry goes, the new one stays
    jobs_key = m.store.keys.jobs
    touched: list[str] = []

    def seen(cmd: dict) -> None:
        if cmd.get("client_type") == "lua" and f" {jobs_key}" in cmd["command"]:
            touched.append(cmd["command"])

    _monitored(m, seen, lambda: m.store.unlist_jobs(gone))
    assert list(m.list()) == ["j50"] + names[150:] + ["j10"]
    read = pushed = 0
    for cmd in touched:
        words = cmd.split()
        if words[0] == "LRANGE":
            read += (len(names) if words[3] == "-1" else int(words[3]) + 1) - int(words[2])
        elif words[0] in ("LPUSH", "RPUSH"):
            pushed += len(words) - 2
    assert read <= len(gone) + 2 * BATCH and pushed == 1, touched
    # A name another removal took off already was looked for to the end of the list (a pass's step reads all of
    # it, 300 ms at 500,000 names): a step says where it read its names, and the search stops there.
    touched.clear()
    _monitored(m, seen, lambda: m.store.unlist_jobs(["j5"], within=150))
    ranges = [cmd.split()[2:4] for cmd in touched if cmd.startswith("LRANGE")]
    assert ranges == [["0", "149"]], touched


def test_names_of_jobs_removed_by_a_removal_that_died_are_taken_off_the_list_later(cluster):
    """A removal deletes a batch of jobs, then takes their names off the job list: one that died in between (the
    InputQueue killed mid-pass) left the names listed for good (`list` showed them with no state, `remove`
    answered 'unknown job', only `purge` cleared them). A later pass, or `remove --finished`, takes names whose
    job is gone off the list; a job submitted again under such a name meanwhile keeps its entry, even when the
    removal that died is taken up again."""
    m = cluster.manager()
    m.cancel(m.submit(_noop_jobs(["a", "b", "c", "d"])))    # no executor: final at once
    assert m.store.remove_jobs(["a", "c"], "skip") == [("removed", ""), ("removed", "")]   # ... and died
    assert m.list() == {"a": None, "b": "CANCELED", "c": None, "d": "CANCELED"}
    assert remove_finished(m.store, older_than=3600) == ([], {})   # nothing old enough: the names go all the same
    assert m.list() == {"b": "CANCELED", "d": "CANCELED"}

    assert m.store.remove_jobs(["b"], "skip") == [("removed", "")]   # another removal dies half way ...
    iq = cluster.inputqueue("--keep-finished", "1h")                # ... and a later InputQueue's pass cleans up
    wait_for(m, lambda: "b" not in m.list(), what="the stranded name taken off")
    assert m.list() == {"d": "CANCELED"} and iq.poll() is None
    assert m.submit(_noop_jobs(["b"])) == ["b"]                     # the name is free: submitted again
    m.store.unlist_jobs(["b"])                                       # the removal that died, taken up again
    assert m.list() == {"d": "CANCELED", "b": "READY"}


def test_wait4all_reads_each_job_once(redis_url):
    """wait4all read the state of every job when it started (to leave out those a removal under way had deleted),
    then again at its end: 10,000 reads more per wait on a queue of 10,000 jobs, 0.2 s of the client's CPU,
    which `qcgpj bench -w queue` showed as a 15% loss of rate (20,000-21,000 tasks/s against 23,000-26,000). The
    names whose job is gone now come with the job list from one script call per window, and each job is read
    once, at the end."""
    m = Manager(redis_url, namespace="readonce")
    try:
        jobs = Jobs()
        for i in range(300):
            jobs.add(name=f"r{i}", exec="/bin/true")
        m.submit(jobs)
        m.cancel([f"r{i}" for i in range(300)])   # all final: the wait returns at once
        reads: list[str] = []
        _monitored(m, lambda cmd: reads.append(cmd["command"]) if cmd["command"].startswith("HGET ") and
                   cmd.get("client_type") != "lua" and "readonce" in cmd["command"] else None,
                   lambda: m.wait4all(timeout=30))
        assert len(reads) == 300, len(reads)
    finally:
        m.store.drop_namespace()


def test_removed_omitted_job_is_no_longer_its_running_parents_child(cluster):
    """A fan-in job OMITTED by one failed parent may be removed while another parent still runs; that parent's end
    must not reach the removed job (its hash came back as a bare `deps` counter) nor a new job of the same name
    (which then ran before its own dependency)."""
    m = cluster.serving(2)
    m.submit(Jobs().add(name="a", script="while [ ! -e go_a ]; do sleep 0.05; done")
             .add(name="b", exec="/bin/false")
             .add(name="c", exec="/bin/true", after=["a", "b"]))
    assert m.wait4(["c"], timeout=60) == {"c": "OMITTED"}
    assert m.remove(["c"]) == ["c"]
    m.submit(Jobs().add(name="hold", script="while [ ! -e go ]; do sleep 0.05; done")
             .add(name="c", exec="/bin/true", after=["hold"]))
    (cluster.workdir / "go_a").touch()
    assert m.wait4(["a"], timeout=60) == {"a": "SUCCEED"}
    assert m.status(["c"]) == {"c": "QUEUED"}   # still waits for 'hold', not released by the old c's parent
    (cluster.workdir / "go").touch()
    assert m.wait4(["c"], timeout=60) == {"c": "SUCCEED"}
    assert sorted(m.remove(["a", "b", "c", "hold"])) == ["a", "b", "c", "hold"]
    assert job_keys(m) == [] and m.list() == {}
