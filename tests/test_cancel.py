"""Canceling many jobs at once on a real redis-server: in calls of CANCEL_BATCH names, so Redis serves the
executors and clients between them, and still all or none when a name is unknown; a whole campaign without
naming it (cancel --all), or named on standard input (cancel -)."""
from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from qcgpj import Jobs, Manager
from qcgpj.errors import UnknownJobError
from qcgpj.store import CANCEL_BATCH, script_source
from qcgpj.timefmt import now
from tests.cluster import qcgpj_cmd
from tests.test_reliability import blockers, executing, wait_for
from tests.test_submit import manager, snapshot, sweep

MORE = re.compile(r"\.\.\. \((\d+) more arguments\)$")


def cancel_calls(r) -> list[int]:
    """The names each cancel.lua call carried, from the slow log (every command logged: see below). The log
    keeps 31 arguments of a command and says how many more there were."""
    sha = hashlib.sha1(script_source("cancel").encode()).hexdigest()
    calls = []
    for entry in r.slowlog_get(100_000):
        args = entry["command"].decode().split(" ", 5)
        if args[0].upper() != "EVALSHA" or args[1] != sha:
            continue
        more = MORE.search(entry["command"].decode())
        argc = 31 + int(more.group(1)) if more else len(entry["command"].split())
        calls.append(argc - 6)   # EVALSHA sha numkeys jobs-key now mode
    return calls[::-1]           # the log lists the newest first


@pytest.fixture
def logged(redis_url):
    """A manager on the session's server with every command in the slow log."""
    m = manager(redis_url)
    r = m.client
    old = r.config_get("slowlog-*")
    r.config_set("slowlog-max-len", 100_000)
    m.store.cancel(["nope"])   # loads the script: a first EVALSHA refused (NOSCRIPT) would be logged too
    yield m, r
    r.config_set("slowlog-log-slower-than", old["slowlog-log-slower-than"])
    r.config_set("slowlog-max-len", old["slowlog-max-len"])
    r.slowlog_reset()


def test_a_large_cancel_goes_in_batches_and_cancels_all(logged):
    m, r = logged
    n = 2 * CANCEL_BATCH + 500
    m.submit(sweep(n))
    r.slowlog_reset()
    r.config_set("slowlog-log-slower-than", 0)
    res = m.cancel([f"j{i}" for i in range(n)])
    r.config_set("slowlog-log-slower-than", 10_000)
    calls = cancel_calls(r)
    assert max(calls) <= CANCEL_BATCH, calls   # one call of every name held Redis 669 ms for 100,000
    assert sum(calls) == 2 * n, calls           # each name checked once, then canceled once
    assert set(res.values()) == {"canceled"} and len(res) == n
    assert set(m.status([f"j{i}" for i in range(n)]).values()) == {"CANCELED"}


def test_a_large_cancel_with_a_name_unknown_cancels_nothing(logged):
    m, r = logged
    n = 2 * CANCEL_BATCH + 500
    m.submit(sweep(n))
    before = snapshot(r)
    names = [f"j{i}" for i in range(n)]
    names.insert(n - 10, "nope")                # in the last batch: the first ones are canceled by then
    with pytest.raises(UnknownJobError, match="unknown job 'nope'"):
        m.cancel(names)
    assert snapshot(r) == before
    res = m.store.cancel(names)
    assert res["nope"] == "unknown" and set(res.values()) == {"unknown", "skipped"}


def test_a_name_removed_between_the_check_and_its_batch_is_answered_final(logged):
    """Removal takes only final jobs: a later batch of a large cancel that finds a checked name gone says it
    ended, cancels the rest of its batch, and does not call the cancel refused (see Store.cancel)."""
    m, _ = logged
    m.submit(sweep(2))
    assert m.store._run("cancel", [now(), "known", "gone", "j1"]) == ["final", "canceled"]
    assert m.status(["j0", "j1"]) == {"j0": "READY", "j1": "CANCELED"}


# ---------------------------------------------------------------------- a whole campaign: --all, names on stdin
def cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(qcgpj_cmd(*args, "--redis-url", url), input=stdin, capture_output=True, text=True,
                          timeout=120)


def campaign(n: int) -> Jobs:
    """n jobs (READY: no executor serves the queue) and a job after each (QUEUED)."""
    jobs = sweep(n)
    for i in range(n):
        jobs.add(name=f"d{i}", exec="/bin/true", after=[f"j{i}"])
    return jobs


def test_cancel_all_cancels_every_open_job_in_batches_and_omits_their_dependents(logged, redis_url):
    m, r = logged
    n = 3 * CANCEL_BATCH
    m.submit(campaign(n))
    m.cancel(["j0"])                                   # final already (and d0 omitted): not counted again
    other = Manager(redis_url, namespace="other")
    other.submit(Jobs().add(name="j1", exec="/bin/true"))
    r.slowlog_reset()
    r.config_set("slowlog-log-slower-than", 0)
    res = cli(redis_url, "cancel", "--all")
    r.config_set("slowlog-log-slower-than", 10_000)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"canceled {n - 1} job(s), {n - 1} OMITTED (they "
                                                           "waited on one that did not succeed)\n", "")
    calls = cancel_calls(r)
    assert max(calls) <= CANCEL_BATCH, calls           # Redis served others between the calls
    assert sum(calls) == n - 1, calls                  # the open jobs by name, once; their dependents omitted
    states = m.list()
    assert {st for name, st in states.items() if name.startswith("j")} == {"CANCELED"}
    assert {st for name, st in states.items() if name.startswith("d")} == {"OMITTED"}
    assert m.info(f"d{n - 1}")["message"] == f"dependency j{n - 1} ended CANCELED"
    assert other.status() == {"j1": "READY"}           # another namespace is another campaign

    again = cli(redis_url, "cancel", "--all")
    assert (again.returncode, again.stdout) == (0, "nothing to cancel: no job of the namespace is waiting or running\n")


def test_cancel_all_kills_what_runs_and_leaves_what_ended(cluster):
    m = cluster.serving(1)
    m.submit(Jobs().add(name="done", exec="/bin/true"))
    m.wait4(["done"], timeout=60)
    m.submit(blockers(2, "b"))                         # one core: b0 or b1 runs until 'go', never made here
    m.submit(Jobs().add(name="after", exec="/bin/true", after=["b0"])
             .add(name="its", exec="/bin/true", iteration=3, after=["b1"]))
    wait_for(m, lambda: executing(m, ["b0", "b1"]) == 1, what="a blocker running")
    assert m.cancel_all() == {"b0": "CANCELED", "b1": "CANCELED", "after": "OMITTED", "its": "OMITTED"}
    assert m.status("done") == {"done": "SUCCEED"}
    # removal waits for the executor to report the killed process (up to 30 s): the blocker no longer runs
    assert sorted(m.remove(["b0", "b1", "after", "its"])) == ["after", "b0", "b1", "its"]
    assert m.cancel_all() == {}


def test_cancel_reads_names_from_stdin_as_from_the_command_line(redis_url):
    m = manager(redis_url)
    n = 2 * CANCEL_BATCH + 500
    m.submit(sweep(n).add(name="it", exec="/bin/true", iteration=3))
    names = [f"j{i}" for i in range(1, n)]
    stdin = "\n".join(["", *names[:10], "", "  it:2  ", *names[10:], ""]) + "\n"
    res = cli(redis_url, "cancel", "-", stdin=stdin)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"{name}\tcanceled" for name in names[:10] + ["it:2"] + names[10:]]
    assert m.status(["j0", "it"]) == {"j0": "READY", "it": "READY"}
    assert m.iterations("it")[2]["state"] == "CANCELED"
    both = cli(redis_url, "cancel", "j0", "-", stdin="it\n")   # '-' stands for stdin's names among the others
    assert both.stdout == "j0\tcanceled\nit\tcanceled\n"
    empty = cli(redis_url, "cancel", "-", stdin="\n\n")
    assert (empty.returncode, empty.stdout) == (0, "nothing to cancel: no names on standard input\n")


def test_an_unknown_name_on_stdin_cancels_nothing(redis_url):
    m = manager(redis_url)
    n = 2 * CANCEL_BATCH + 500
    m.submit(campaign(n))
    before = snapshot(m.client)
    names = [f"j{i}" for i in range(n)]
    names.insert(n - 10, "nope")                       # in the last batch: the others are checked by then
    res = cli(redis_url, "cancel", "-", stdin="\n".join(names) + "\n")
    assert (res.returncode, res.stdout, res.stderr) == (1, "", "Error: unknown job 'nope'\n")
    bad = cli(redis_url, "cancel", "-", stdin="j1\n\nj2\tREADY\n")   # `qcgpj list` piped whole
    assert (bad.returncode, bad.stderr) == (1, "Error: standard input, line 3: 'j2\\tREADY' is not a job name "
                                                "(one name a line, as NAME or NAME:IT)\n")
    assert snapshot(m.client) == before


@pytest.mark.parametrize("args, stdin, says", [
    (["--all", "j1"], None, "give job NAMES or --all, not both"),
    (["--all", "-"], "j1\n", "give job NAMES or --all, not both"),
    ([], None, "give job NAMES ('-': from standard input) or --all"),
    (["-", "-"], "j1\n", "'-' (names from standard input) may be given once"),
])
def test_cancel_all_with_names_and_other_misuse_is_refused_in_one_line(redis_url, args, stdin, says):
    m = manager(redis_url)
    m.submit(campaign(3))
    before = snapshot(m.client)
    res = cli(redis_url, "cancel", *args, stdin=stdin)
    assert res.returncode == 1 and res.stdout == "" and res.stderr.count("\n") == 1, res
    assert res.stderr.startswith(f"Error: {says}"), res.stderr
    assert snapshot(m.client) == before
