"""The services start without the client's modules, and ``import qcgpj`` still gives the client's API.

Every worker and InputQueue process imports (here: compiles too) each module on its path before it can serve, in
each ``qcgpj bench`` run and at every executor an allocation starts, so what they import is guarded here: read
from ``-X importtime``, of the command as users run it (stopped at its first step, the connection to Redis).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

import qcgpj

REPO = Path(__file__).resolve().parent.parent
NO_REDIS = "unix:///nonexistent/qcgpj-test.sock"   # fails at once: the command stops at its connection

# Modules of the client, the tools and local mode, which no service needs.
CLIENT_ONLY = ("qcgpj.manager", "qcgpj.futures", "qcgpj.batch", "qcgpj.jobs", "qcgpj.requests", "qcgpj.progress",
               "qcgpj.local", "qcgpj.bench", "qcgpj.bench_cli", "qcgpj.alloc", "qcgpj.alloc_cli",
               "qcgpj.monitor_cli", "fakeredis", "rq")


def _imported(*args: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("QCGPJ_REDIS_URL", None)
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "qcgpj", *args], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 1 and "cannot reach Redis" in res.stderr, res.stderr[-500:]
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)$", res.stderr, re.M)}


@pytest.mark.parametrize("command, service", [("worker", "qcgpj.executor"), ("inputqueue", "qcgpj.inputqueue")])
def test_a_service_imports_none_of_the_client_modules(command, service):
    mods = _imported(command, "--redis-url", NO_REDIS, "--connect-wait", "0")
    assert service in mods   # the command got as far as its service's module
    assert not {m for m in mods if m.split(".")[0] in CLIENT_ONLY or m in CLIENT_ONLY}


def test_the_package_gives_the_client_api_on_first_use():
    from qcgpj import Executor, Jobs, JobSpec, Manager
    from qcgpj.futures import Executor as FuturesExecutor
    from qcgpj.manager import Manager as ManagerClass
    assert (Manager, Executor) == (ManagerClass, FuturesExecutor)
    assert Jobs.__module__ == "qcgpj.jobs" and JobSpec.__module__ == "qcgpj.jobspec"
    assert {"Manager", "Executor", "Jobs", "JobSpec"} <= set(dir(qcgpj))
    namespace: dict = {}
    exec("from qcgpj import *", namespace)
    assert set(qcgpj.__all__) <= set(namespace)
    with pytest.raises(AttributeError):
        qcgpj.NoSuchThing   # noqa: B018


def test_every_lazily_registered_command_resolves():
    from qcgpj.cli import LAZY_COMMANDS, main
    ctx = click.Context(main)
    for name in LAZY_COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and main.commands[name] is command
    assert set(LAZY_COMMANDS) <= set(main.list_commands(ctx))
