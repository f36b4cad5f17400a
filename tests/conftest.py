"""Shared fixtures: private redis-servers, and the skip rule for tests that need Slurm.

Fixtures:
    redis_server  (session)  one private RedisServer for the whole session
    redis_url     (function) the session server's URL, FLUSHALLed before each test
    fresh_redis   (function) a RedisServer of the test's own (aof=True), for tests that kill/restart Redis
    slurm         (function) skips unless Slurm answers with idle nodes; returns a SlurmInfo
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:                 # `import qcgpj` (and qcgpj.workers), `import tests.x`
    sys.path.insert(0, str(REPO))

from tests.redisproc import RedisServer  # noqa: E402

SLURM_SKIP_REASON = "Slurm not running (start ../shared/slurm/start-slurm.sh)"
SLURM_CI_CONF = Path(os.environ.get("SLURM_CI_DIR", "/tmp/slurm-ci")) / "etc" / "slurm.conf"


# ---------------------------------------------------------------------- Redis
@pytest.fixture(scope="session")
def redis_server():
    """One private redis-server (free loopback port, temp dir) for the whole session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, with an empty database: FLUSHALL before each test."""
    if not redis_server.alive():              # a test killed it: bring it back for the next ones
        redis_server.restart()
    c = redis_server.client()
    try:
        c.flushall()
    finally:
        c.close()
    return redis_server.url


@pytest.fixture
def cluster(redis_url, tmp_path):
    """Services (InputQueue, workers) as processes on the session server, stopped after the test."""
    from tests.cluster import Cluster
    c = Cluster(redis_url, tmp_path)
    yield c
    c.stop()


@pytest.fixture
def fresh_redis():
    """A redis-server of this test's own, with AOF on (appendfsync everysec), to kill and restart."""
    with RedisServer(aof=True) as server:
        yield server


# ---------------------------------------------------------------------- Slurm
@dataclass
class SlurmInfo:
    ok: bool
    nodes: list[str] = field(default_factory=list)
    detail: str = ""


_slurm_info: SlurmInfo | None = None


def slurm_info() -> SlurmInfo:
    """Does `sinfo` answer with idle nodes? Asked once per session (timeout 5 s)."""
    global _slurm_info
    if _slurm_info is not None:
        return _slurm_info
    # start-slurm.sh links /etc/slurm/slurm.conf to its config; if that link is off, use its file.
    if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists() and SLURM_CI_CONF.exists():
        os.environ["SLURM_CONF"] = str(SLURM_CI_CONF)
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                             timeout=5, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        _slurm_info = SlurmInfo(False, detail="sinfo not found")
        return _slurm_info
    except subprocess.TimeoutExpired:
        _slurm_info = SlurmInfo(False, detail="sinfo timed out")
        return _slurm_info
    if out.returncode != 0:
        _slurm_info = SlurmInfo(False, detail=(out.stderr.strip().splitlines() or ["sinfo failed"])[-1])
        return _slurm_info
    nodes = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].rstrip("*~#$@+") in ("idle", "mix", "alloc"):
            nodes.append(parts[0])
    nodes = sorted(set(nodes))
    if not nodes:
        _slurm_info = SlurmInfo(False, detail="no idle nodes")
    else:
        _slurm_info = SlurmInfo(True, nodes=nodes)
    return _slurm_info


def _slurm_skip_reason(info: SlurmInfo) -> str:
    reason = SLURM_SKIP_REASON
    if info.detail:
        reason += f" [{info.detail}]"
    if os.environ.get("QCGPJ_SLURM_OK") == "1":
        reason += " [although .ci/run reported Slurm started]"
    return reason


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    _group_for_xdist(items)
    slurm_items = [item for item in items if item.get_closest_marker("slurm")]
    if not slurm_items:
        return
    info = slurm_info()
    if info.ok:
        return
    skip = pytest.mark.skip(reason=_slurm_skip_reason(info))
    for item in slurm_items:
        item.add_marker(skip)


def _group_for_xdist(items) -> None:
    """The suite runs on two processes (setup.cfg: ``-n 2 --dist loadgroup``): each file's tests stay together,
    in order, on one of them (module fixtures are made once), and the Slurm tests all on one, since they share
    the test cluster's two nodes."""
    for item in items:
        group = "slurm" if item.get_closest_marker("slurm") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def slurm() -> SlurmInfo:
    """Skips the test unless Slurm answers with idle nodes; returns them."""
    info = slurm_info()
    if not info.ok:
        pytest.skip(_slurm_skip_reason(info))
    return info


# ---------------------------------------------------------------------- reports
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (item.rep_setup / rep_call / rep_teardown), so a
    fixture's teardown can tell whether its test failed and print logs then."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
