"""Canceling many jobs at once on a real redis-server: in calls of CANCEL_BATCH names, so Redis serves the
executors and clients between them, and still all or none when a name is unknown."""
from __future__ import annotations

import hashlib
import re

import pytest

from qcgpj.errors import UnknownJobError
from qcgpj.store import CANCEL_BATCH, script_source
from qcgpj.timefmt import now
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
