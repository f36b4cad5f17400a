"""Hostile input, generated systematically: malformed job files through ``qcgpj submit FILE`` and hostile calls of
the Python API, against a private redis-server holding a queue with jobs and an executor. Each must give one line
(exit code 1, one line on stderr, no traceback) or a QcgpjError, and leave Redis byte for byte as it was: the
server's digest of every key's value (DEBUG DIGEST-VALUE: a DUMP of a hash or set is not stable, its order
changes when it is restored), and which keys expire, compared before and after."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
from typing import Any, Callable

import pytest
import redis
from click.testing import CliRunner

from qcgpj import Jobs, Manager, QcgpjError
from qcgpj.cli import main
from qcgpj.compat import Jobs as CompatJobs, LocalManager, Manager as CompatManager
from tests.cluster import REPO, qcgpj_cmd
from tests.redisproc import RedisServer

EXECUTOR = "fuzz-exec"   # registered, with 2 nodes of 4 cores, and never expiring: impossible sizes are known
QUEUED = [{"name": "queued", "execution": {"exec": "/bin/true"}, "iteration": {"stop": 3}},
          {"name": "single", "execution": {"exec": "/bin/true"}}]
VALID = [
    {"request": "submit", "jobs": [
        {"name": "prep", "execution": {"exec": "/bin/echo", "args": ["x", 1], "env": {"A": "1"},
                                       "stdout": "prep.out", "stderr": "prep.err", "wd": "w"},
         "resources": {"numCores": {"exact": 1}, "wt": "10m"}},
        {"name": "sweep", "execution": {"exec": "/bin/true", "modules": [], "model": "default", "model_opts": {},
                                        "stdin": "in.txt", "venv": "/opt/venv"},
         "resources": {"numCores": {"min": 1, "max": 2}, "numNodes": {"exact": 1}},
         "iteration": {"start": 0, "stop": 3}, "dependencies": {"after": ["prep", "queued:${it}"]},
         "attributes": {"k": [1, 2]}},
        {"name": "last", "execution": {"script": "echo done"}, "dependencies": {"after": ["sweep:2", "single"]}},
    ]},
    {"request": "control", "command": "finishAfterAllTasksDone"},
]

DEEP = 100_000
# Wrong values per field of the job 'sweep' (a path into the description); None deletes the field.
BAD_FIELDS: dict[tuple[str, ...], list[Any]] = {
    ("name",): [None, 3, "", "a b", "a:b", "a|b", "a}b", ".x", "-x", "x" * 201, [], {}, "é"],
    ("execution",): [None, [], "ls", 3, {}],
    ("execution", "exec"): [3, "", [], {}, True, "a\u0000b", "\ud800"],
    ("execution", "args"): ["a b", [None], [[1]], [{}], [True], {}, ["\u0000"]],
    ("execution", "env"): [[], "A=1", {"A": None}, {"A=B": "1"}, {"": "x"}, {"A": [1]}, {"A": "x\u0000"}],
    ("execution", "stdin"): [3, "", []],
    ("execution", "stdout"): [3, "", {}, "a\u0000"],
    ("execution", "stderr"): [False, ""],
    ("execution", "wd"): [3, "", ["w"]],
    ("execution", "model"): [3, "", "a b", [], "python"],
    ("execution", "model_opts"): [[], "x", 3, {"a": math.nan}, {"a": math.inf}],
    ("execution", "modules"): [3, [3], [""], {}],
    ("execution", "venv"): [3, ["v"]],   # "" is valid: QCG-PilotJob's "no venv"
    ("execution", "script"): ["echo both"],   # with 'exec' too
    ("execution", "bogus"): ["x"],
    ("resources",): [[], "x", 3],
    ("resources", "numCores"): [0, -1, 1.5, "many", [], True, {}, {"exact": 0}, {"min": 3, "max": 2},
                                {"exact": 2, "min": 1}, {"bogus": 1}, 10 ** 13, math.inf, 10 ** 30, 5,
                                {"min": 9}],
    ("resources", "numNodes"): [0, "x", {"min": 0}, 3, {"exact": -2}],
    ("resources", "wt"): ["", "abc", -5, 0, "1x", [], True, "99999999d", math.inf, "10m5h"],
    ("resources", "nodeCrs"): [{"gpu": -1}, {"gpu": 1.5}, {"gpu": "2"}, {"tpu": 1}, "x", {"mem": "lots"},
                               {"mem": 0}, {"gpu": 1, "gpus": 1}],
    ("resources", "bogus"): [1],
    ("dependencies",): [[], "a", 3],
    ("dependencies", "after"): ["prep", [3], ["nosuch"], ["prep:x"], ["sweep"], ["prep:${it}"], ["queued:99"],
                                [""], [None], ["single:0"], ["a b"], ["queued:${it}", "nosuch:1"]],
    ("dependencies", "bogus"): [1],
    ("iteration",): [[], "x", 3, {}, {"stop": 0}, {"start": 5, "stop": 2}, {"stop": -1}, {"stop": "10"},
                     {"values": []}, {"values": "abc"}, {"values": [[1]]}, {"values": [1], "stop": 2},
                     {"stop": 10 ** 13}, {"bogus": 1}, {"stop": 4}, {"start": 1.5, "stop": 3}],
    ("attributes",): [[], "x", 3, {"a": math.nan}],
    ("bogus",): [1],
}


def _set(doc: list, path: tuple[str, ...], value: Any) -> list:
    doc = copy.deepcopy(doc)
    target = doc[0]["jobs"][1]
    for key in path[:-1]:
        target = target.setdefault(key, {})
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return doc


def _deep(levels: int) -> dict:
    v: Any = 1
    for _ in range(levels):
        v = {"a": v}
    return v


def _text_cases() -> list[tuple[str, str | bytes]]:
    """Whole files: not JSON, the wrong JSON, truncated, deep, huge, badly encoded, and batch-level errors."""
    valid = json.dumps(VALID)
    jobs = VALID[0]["jobs"]
    cases: list[tuple[str, str | bytes]] = [
        ("empty", ""), ("blank", " \n\t"), ("open-brace", "{"), ("open-bracket", "["), ("close", "]"),
        ("null", "null"), ("true", "true"), ("number", "3"), ("string", '"jobs"'), ("object", "{}"),
        ("no-jobs", "[]"), ("only-control", json.dumps(VALID[1:])), ("list-of-numbers", "[1, 2]"),
        ("list-of-null", "[null]"), ("list-of-lists", "[[]]"), ("nan", "[NaN]"),
        ("deep-arrays", "[" * DEEP + "]" * DEEP), ("deep-objects", '{"a":' * DEEP + "1" + "}" * DEEP),
        ("deep-in-field", json.dumps(_set(VALID, ("attributes",), {"x": [[[[[[[[[[]]]]]]]]]]}))[:-1]
         .replace('[[[[[[[[[[]]]]]]]]]]', "[" * 2000 + "]" * 2000) + "]"),
        ("deep-attributes", json.dumps(_set(VALID, ("attributes",), _deep(200)))),
        ("huge-number", valid.replace('"exact": 1', '"exact": 1' + "0" * 5000)),
        ("huge-float", valid.replace('"exact": 1', '"exact": 1e999')),
        ("bad-utf8", valid.encode().replace(b"/bin/echo", b"/bin/\xff\xfeecho")),
        ("utf16", valid.encode("utf-16")), ("nul-byte", valid.replace("/bin/echo", "/bin/\u0000echo")),
        ("lone-surrogate-escape", valid.replace("/bin/echo", "/bin/\\ud800echo")),
        ("trailing-garbage", valid + "x"), ("two-documents", valid + valid),
        ("duplicate-names", json.dumps([jobs[0], jobs[0]])),
        ("duplicate-across-requests", json.dumps([VALID[0], VALID[0]])),
        ("duplicate-of-queued", json.dumps([{"name": "queued", "execution": {"exec": "/bin/true"}}])),
        ("cycle", json.dumps([{"name": "a", "execution": {"exec": "x"}, "dependencies": {"after": ["b"]}},
                              {"name": "b", "execution": {"exec": "x"}, "dependencies": {"after": ["a"]}}])),
        ("long-cycle", json.dumps([{"name": f"c{i}", "execution": {"exec": "x"},
                                    "dependencies": {"after": [f"c{(i + 1) % 50}"]}} for i in range(50)])),
        ("self-dependency", json.dumps([{"name": "a", "execution": {"exec": "x"}, "dependencies": {"after": ["a"]}}])),
        ("late-unknown-dependency", json.dumps(jobs + [{"name": f"j{i}", "execution": {"exec": "x"}}
                                                       for i in range(2500)]
                                               + [{"name": "z", "execution": {"exec": "x"},
                                                   "dependencies": {"after": ["nosuch"]}}])),
        ("late-duplicate-of-queued", json.dumps([{"name": f"j{i}", "execution": {"exec": "x"}} for i in range(2500)]
                                                + [{"name": "single", "execution": {"exec": "x"}}])),
        ("unknown-request", json.dumps([{"request": "explode"}])),
        ("request-not-string", json.dumps([{"request": 3}])),
        ("unknown-control", json.dumps([{"request": "control", "command": "selfDestruct"}])),
        ("submit-jobs-not-list", json.dumps([{"request": "submit", "jobs": {"name": "a"}}])),
        ("submit-no-jobs", json.dumps([{"request": "submit", "jobs": []}])),
        ("submit-extra-field", json.dumps([{**VALID[0], "bogus": 1}])),
        ("too-big-for-executor", json.dumps([{"name": "big", "execution": {"exec": "x"},
                                              "resources": {"numCores": 9}}])),
        ("too-many-nodes", json.dumps([{"name": "big", "execution": {"exec": "x"}, "resources": {"numNodes": 3}}])),
        ("too-many-per-node", json.dumps([{"name": "big", "execution": {"exec": "x"},
                                           "resources": {"numNodes": 2, "numCores": 5}}])),
    ]
    for cut in (1, 2, 10, 50, 100, len(valid) // 2, len(valid) - 2, len(valid) - 1):
        cases.append((f"truncated-{cut}", valid[:cut]))
    return cases


def file_cases() -> list[tuple[str, str | bytes]]:
    cases = [(f"{'.'.join(path)}={json.dumps(v, allow_nan=True)[:30]}", json.dumps(_set(VALID, path, v)))
             for path, values in BAD_FIELDS.items() for v in values]
    return cases + _text_cases()


FILE_CASES = file_cases()


# ---------------------------------------------------------------------- the queue and its snapshots
class DebugRedis(RedisServer):
    """A private redis-server that answers DEBUG from loopback (off by default since Redis 7)."""

    def _args(self, port: int) -> list[str]:
        return super()._args(port) + ["--enable-debug-command", "local"]


def snapshot(r: redis.Redis) -> dict[bytes, tuple[bytes, bool, bytes, int]]:
    """Every key's value digest, whether it expires, its DUMP and TTL (to put it back): equal digests are equal
    data."""
    keys = sorted(r.keys("*"))
    digests = r.execute_command("DEBUG", "DIGEST-VALUE", *keys) if keys else []
    out = {}
    for k, d in zip(keys, digests):
        ttl = r.pttl(k)
        out[k] = (d, ttl > 0, r.dump(k), max(ttl, 0))
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k][:2] == b[k][:2] for k in a)


class Queue:
    def __init__(self, server: RedisServer) -> None:
        self.server, self.url = server, server.url
        self.raw = server.client(decode_responses=False)
        self.base = snapshot(self.raw)

    def unchanged(self) -> None:
        """Assert nothing changed; if something did, put the base state back so that other cases stay apart."""
        now = snapshot(self.raw)
        if not same(now, self.base):
            changed = sorted(k.decode() for k in set(now) ^ set(self.base)
                             | {k for k in now if k in self.base and now[k][:2] != self.base[k][:2]})
            self.raw.flushall()
            for k, (_digest, _expires, dump, ttl) in self.base.items():
                self.raw.restore(k, ttl, dump)
            raise AssertionError(f"Redis changed: {changed}")


@pytest.fixture(scope="module")
def queue():
    """A persistent redis-server (so the settings check has nothing to say) with two jobs and an executor."""
    with DebugRedis(aof=True) as server:
        m = Manager(server.url)
        m.store.register(EXECUTOR, 60, "fuzz", "n1=4;n2=4", 8, 4, 2, 16, os.getpid())
        m.client.persist(m.store.keys.alive(EXECUTOR))
        m.submit(QUEUED)
        yield Queue(server)


def one_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in stderr, stderr[-2000:]


# ---------------------------------------------------------------------- files
def test_the_valid_file_submits(queue, tmp_path):
    """The mutations start from a file that works (submitted on a copy of the queue, then put back)."""
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(VALID))
    res = CliRunner().invoke(main, ["submit", str(path), "--redis-url", queue.url])
    assert res.exit_code == 0 and "submitted 3" in res.stdout, res.output
    with pytest.raises(AssertionError, match="Redis changed"):
        queue.unchanged()
    queue.unchanged()


@pytest.mark.parametrize("name, text", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_malformed_file_gives_one_line_and_changes_nothing(queue, tmp_path, name, text):
    path = tmp_path / "jobs.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    res = CliRunner().invoke(main, ["submit", str(path), "--redis-url", queue.url])
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), \
        (res.exit_code, res.exception, res.output)
    one_line(res.stderr)
    queue.unchanged()


@pytest.mark.parametrize("name", ["deep-arrays", "huge-number", "cycle", "duplicate-of-queued", "bad-utf8"])
def test_malformed_file_as_a_real_process(queue, tmp_path, name):
    """The same through a real `qcgpj submit` process: what a user's shell sees."""
    text = dict(FILE_CASES)[name]
    path = tmp_path / "jobs.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(qcgpj_cmd("submit", str(path), "--redis-url", queue.url), env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    one_line(res.stderr)
    queue.unchanged()


@pytest.mark.parametrize("args", [
    ["run", "{file}", "--cores", "0"], ["run", "{file}", "--nodes", "n1:x"], ["run", "{file}", "--timeout", "-1"],
    ["submit", "{file}", "--redis-url", "{url}99"], ["submit", "{file}", "--redis-url", "{url}x"],
    ["submit", "{file}", "--redis-url", "http://x"], ["submit", "{file}", "--redis-url", "{url}", "-n", "bad ns"],
    ["submit", "{file}", "--redis-url", "{url}", "-n", "a}b"], ["submit", "/nonexistent.json", "--redis-url", "{url}"],
    ["submit", "{dir}", "--redis-url", "{url}"], ["submit"], ["info", "single:x", "--redis-url", "{url}"],
    ["info", "queued:7", "--redis-url", "{url}"], ["info", "nosuch", "--redis-url", "{url}"],
    ["status", "single:x", "--redis-url", "{url}"], ["cancel", "nosuch", "--redis-url", "{url}"],
    ["wait", "nosuch", "--redis-url", "{url}", "--timeout", "1"], ["wait", "single", "--redis-url", "{url}",
                                                                   "--timeout", "nan"],
    ["worker", "--redis-url", "{url}", "--id", "bad|id"], ["worker", "--redis-url", "{url}", "--cores", "0"],
    ["worker", "--redis-url", "{url}", "--prefetch", "-1"], ["worker", "--redis-url", "{url}", "--heartbeat", "0"],
    ["worker", "--redis-url", "{url}", "--nodes", "a:0"], ["worker", "--redis-url", "{url}", "--nodes", "a:1,a:2"],
    ["worker", "--redis-url", "{url}", "--wd", "/proc/nonexistent/wd"], ["run", "{file}", "--nodes", "a:1,a:2"],
    ["inputqueue", "--redis-url", "{url}", "--max-attempts", "0"],
    ["inputqueue", "--redis-url", "{url}", "--lease", "nan"], ["worker", "--redis-url", "{url}", "--heartbeat", "nan"],
    ["worker", "--redis-url", "{url}", "--idle-grace", "nan"], ["worker", "--redis-url", "{url}", "--reconcile", "inf"],
    ["top", "--redis-url", "{url}", "--interval", "nan"], ["alloc", "serve", "--redis-url", "{url}", "--poll", "nan"],
    ["alloc", "serve", "--redis-url", "{url}", "--lease", "0"], ["alloc", "add", "slurm", "--redis-url", "{url}"],
    ["alloc", "add", "pbs", "--redis-url", "{url}"], ["alloc", "list", "--redis-url", "{url}", "--bogus"],
    ["status"], ["nosuch-command"], ["status", "--redis-url", "{url}", "--bogus"],
], ids=lambda a: " ".join(a))
def test_bad_options_give_one_line_and_change_nothing(queue, tmp_path, args):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(VALID))
    fill = {"{file}": str(path), "{dir}": str(tmp_path), "{url}": queue.url}
    argv = [fill.get(a, a.replace("{url}", queue.url.removesuffix("0"))) for a in args]
    res = CliRunner(env={"QCGPJ_REDIS_URL": None}).invoke(main, argv)
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), \
        (res.exit_code, res.exception, res.output)
    one_line(res.stderr)
    queue.unchanged()


# ---------------------------------------------------------------------- the Python API
def hostile_calls(url: str) -> list[tuple[str, Callable[[Manager], Any]]]:
    def job(**kw: Any) -> Callable[[Manager], Any]:
        return lambda m: m.submit(Jobs().add(**{"name": "x", "exec": "/bin/true", **kw}))
    return [
        ("Manager(namespace=5)", lambda m: Manager(url, namespace=5)),
        ("Manager(namespace='a b')", lambda m: Manager(url, namespace="a b")),
        ("Manager('http://x')", lambda m: Manager("http://x")),
        ("Manager(5)", lambda m: Manager(5)),
        ("Manager(url/99)", lambda m: Manager(url[:-1] + "99")),
        ("Manager(url/x)", lambda m: Manager(url[:-1] + "x")),
        ("Manager(cores=0)", lambda m: Manager(cores=0)),
        ("Manager(cores='x')", lambda m: Manager(cores="x")),
        ("Manager(nodes='n1:x')", lambda m: Manager(nodes="n1:x")),
        ("Manager(nodes=5)", lambda m: Manager(nodes=5)),
        ("Manager(nodes='a:1,a:2')", lambda m: Manager(nodes="a:1,a:2")),
        ("Manager(max_attempts=0)", lambda m: Manager(max_attempts=0)),
        ("Manager(root_wd=5)", lambda m: Manager(root_wd=5)),
        ("Manager(client='x')", lambda m: Manager(client="x")),
        ("Manager(bogus=1)", lambda m: Manager(url, bogus=1)),
        ("submit(None)", lambda m: m.submit(None)),
        ("submit(5)", lambda m: m.submit(5)),
        ("submit('abc')", lambda m: m.submit("abc")),
        ("submit({job})", lambda m: m.submit({"name": "x", "execution": {"exec": "x"}})),
        ("submit([1])", lambda m: m.submit([1])),
        ("submit([None])", lambda m: m.submit([None])),
        ("submit([{}])", lambda m: m.submit([{}])),
        ("submit(duplicate of queued)", lambda m: m.submit([{"name": "single", "execution": {"exec": "x"}}])),
        ("submit(unknown dependency)", job(after="nosuch")),
        ("submit(no such iteration)", job(after="queued:7")),
        ("submit(iteration of a single job)", job(after="single:0")),
        ("submit(too many cores)", job(numCores=9)),
        ("submit(too many nodes)", job(numNodes=3)),
        ("submit(1 of 2 mixed)", lambda m: m.submit([{"name": "ok", "execution": {"exec": "x"}}, 5])),
        ("submit(name=3)", lambda m: m.submit(Jobs().add(name=3, exec="x"))),
        ("status(5)", lambda m: m.status(5)),
        ("status([5])", lambda m: m.status([5])),
        ("status([None])", lambda m: m.status([None])),
        ("status({'a': 1})", lambda m: m.status({"single": 1})),
        ("status('nosuch')", lambda m: m.status("nosuch")),
        ("status('single:x')", lambda m: m.status("single:x")),
        ("info(None)", lambda m: m.info(None)),
        ("info(5)", lambda m: m.info(5)),
        ("info('single:x')", lambda m: m.info("single:x")),
        ("info('queued:-1')", lambda m: m.info("queued:-1")),
        ("info('queued:3')", lambda m: m.info("queued:3")),
        ("info('')", lambda m: m.info("")),
        ("info('nosuch')", lambda m: m.info("nosuch")),
        ("iterations(None)", lambda m: m.iterations(None)),
        ("iterations('single')", lambda m: m.iterations("single")),
        ("iterations('nosuch')", lambda m: m.iterations("nosuch")),
        ("cancel([])", lambda m: m.cancel([])),
        ("cancel(None)", lambda m: m.cancel(None)),
        ("cancel(5)", lambda m: m.cancel(5)),
        ("cancel([5])", lambda m: m.cancel([5])),
        ("cancel('nosuch')", lambda m: m.cancel("nosuch")),
        ("cancel(['single', 'nosuch'])", lambda m: m.cancel(["single", "nosuch"])),
        ("cancel(['queued:1', 'queued:3'])", lambda m: m.cancel(["queued:1", "queued:3"])),
        ("wait4(123)", lambda m: m.wait4(123)),
        ("wait4(None)", lambda m: m.wait4(None)),
        ("wait4([], timeout='x')", lambda m: m.wait4([], timeout="x")),
        ("wait4(timeout=-1)", lambda m: m.wait4(["single"], timeout=-1)),
        ("wait4(timeout=nan)", lambda m: m.wait4(["single"], timeout=math.nan)),
        ("wait4(progress=5)", lambda m: m.wait4(["single"], progress=5)),
        ("wait4('nosuch')", lambda m: m.wait4("nosuch", timeout=1)),
        ("wait4(timeout=0)", lambda m: m.wait4(["single"], timeout=0)),
        ("wait4all(timeout='x')", lambda m: m.wait4all(timeout="x")),
        ("resources('x')", lambda m: m.resources("x")),
        ("status(1, 2, 3)", lambda m: m.status(1, 2, 3)),
        ("Jobs().add(numCores='many')", lambda m: Jobs().add(name="x", exec="x", numCores="many")),
        ("Jobs().add(iteration=-1)", lambda m: Jobs().add(name="x", exec="x", iteration=-1)),
        ("Jobs().add(iteration=1.5)", lambda m: Jobs().add(name="x", exec="x", iteration=1.5)),
        ("Jobs().add(iteration=range(0, 9, 2))", lambda m: Jobs().add(name="x", exec="x", iteration=range(0, 9, 2))),
        ("Jobs().add(iteration=10**30)", lambda m: Jobs().add(name="x", exec="x", iteration=10 ** 30)),
        ("Jobs().add(after=5)", lambda m: Jobs().add(name="x", exec="x", after=5)),
        ("Jobs().add(wt=[1])", lambda m: Jobs().add(name="x", exec="x", wt=[1])),
        ("Jobs().add(env={1: 2})", lambda m: Jobs().add(name="x", exec="x", env={1: 2})),
        ("Jobs().add(args=[None])", lambda m: Jobs().add(name="x", exec="x", args=[None])),
        ("Jobs().add(args=['\\0'])", lambda m: Jobs().add(name="x", exec="x", args=["\0"])),
        ("Jobs().add(exec='\\ud800')", lambda m: Jobs().add(name="x", exec="\ud800")),
        ("Jobs().add(attributes=object)", lambda m: Jobs().add(name="x", exec="x", attributes={"a": object()})),
        ("Jobs().add(attributes=deep)", lambda m: Jobs().add(name="x", exec="x", attributes=_deep(500))),
        ("Jobs().add(bogus=1)", lambda m: Jobs().add(name="x", exec="x", bogus=1)),
        ("Jobs().add({'bogus': 1})", lambda m: Jobs().add({"name": "x", "exec": "x", "bogus": 1})),
        ("Jobs().add twice", lambda m: Jobs().add(name="x", exec="x").add(name="x", exec="x")),
        ("Jobs().add_std(None)", lambda m: Jobs().add_std(None)),
        ("Jobs().remove([])", lambda m: Jobs().remove([])),
        ("Jobs().load_from_file(None)", lambda m: Jobs().load_from_file(None)),
        ("Jobs().load_from_file('/proc/nonexistent')", lambda m: Jobs().load_from_file("/proc/nonexistent")),
        ("Jobs().save_to_file('/proc/nonexistent/x')", lambda m: Jobs().save_to_file("/proc/nonexistent/x")),
        ("remove(5)", lambda m: m.remove(5)),
        ("remove('queued') (not final)", lambda m: m.remove("queued")),
        ("remove(finished='yes')", lambda m: m.remove(finished="yes")),
        ("remove(older_than=-1)", lambda m: m.remove(finished=True, older_than=-1)),
        ("info('queued:')", lambda m: m.info("queued:")),
        ("info('queued:2:1')", lambda m: m.info("queued:2:1")),
        # QCG-PilotJob's API (qcgpj.compat), the same queue
        ("compat info(5)", lambda m: CompatManager(url).info(5)),
        ("compat info(None)", lambda m: CompatManager(url).info(None)),
        ("compat info('queued:')", lambda m: CompatManager(url).info("queued:")),
        ("compat info_parsed('nosuch')", lambda m: CompatManager(url).info_parsed("nosuch")),
        ("compat status([])", lambda m: CompatManager(url).status([])),
        ("compat status('queued:2:1')", lambda m: CompatManager(url).status("queued:2:1")),
        ("compat cancel(None)", lambda m: CompatManager(url).cancel(None)),
        ("compat cancel(['single', 'nosuch'])", lambda m: CompatManager(url).cancel(["single", "nosuch"])),
        ("compat remove('single') (not final)", lambda m: CompatManager(url).remove("single")),
        ("compat remove(7)", lambda m: CompatManager(url).remove(7)),
        ("compat wait4(5)", lambda m: CompatManager(url).wait4(5)),
        ("compat wait4('nosuch')", lambda m: CompatManager(url).wait4("nosuch", timeout=1)),
        ("compat wait4all('x')", lambda m: CompatManager(url).wait4all("x")),
        ("compat wait4_any_job_finish(-1)", lambda m: CompatManager(url).wait4_any_job_finish(-1)),
        ("compat submit(5)", lambda m: CompatManager(url).submit(5)),
        ("compat Jobs().add(bogus=1)", lambda m: CompatJobs().add(name="x", exec="x", bogus=1)),
        ("compat LocalManager(['--nodes'])", lambda m: LocalManager(["--nodes"])),
        ("compat LocalManager([5])", lambda m: LocalManager([5])),
        ("compat LocalManager('--nodes n0:2')", lambda m: LocalManager("--nodes n0:2")),
        ("Jobs().save_to_file(5)", lambda m: Jobs().add(name="x", exec="x").save_to_file(5)),
    ]


API_CASES = hostile_calls("redis://placeholder/0")


@pytest.mark.parametrize("name", [c[0] for c in API_CASES])
def test_hostile_api_call_raises_qcgpj_error_and_changes_nothing(queue, name):
    call = dict(hostile_calls(queue.url))[name]
    m = Manager(queue.url)
    with pytest.raises(QcgpjError) as err:
        call(m)
    assert "\n" not in str(err.value)
    queue.unchanged()


def test_there_are_enough_cases():
    assert len(FILE_CASES) + len(API_CASES) >= 150 and len(FILE_CASES) >= 150


# ---------------------------------------------------------------------- a refusing Redis
@pytest.fixture
def refusing(tmp_path):
    """A queue whose Redis refuses writes: ``refuse("oom")`` (maxmemory reached) or ``refuse("readonly")`` (it
    became a replica, of a master that does not answer)."""
    from tests.redisproc import free_port
    with DebugRedis(aof=True) as server:
        m = Manager(server.url)
        m.submit(QUEUED)
        q = Queue(server)
        c = server.client()

        def refuse(how: str) -> Queue:
            if how == "oom":
                c.config_set("maxmemory", 1)
            else:
                c.execute_command("REPLICAOF", "127.0.0.1", free_port())
            q.base = snapshot(q.raw)   # REPLICAOF changes the replication id only
            return q
        yield refuse
        c.config_set("maxmemory", 0)
        c.execute_command("REPLICAOF", "NO", "ONE")


@pytest.mark.parametrize("how, says", [("oom", "out of memory (maxmemory reached)"),
                                       ("readonly", "read-only replica")])
def test_a_refusing_redis_is_one_line_and_an_error_of_ours(refusing, tmp_path, how, says):
    from qcgpj import RedisError
    q = refusing(how)
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([{"name": "new", "execution": {"exec": "/bin/true"}}]))
    for argv in (["submit", str(path)], ["cancel", "single"], ["cancel", "--all"]):
        res = CliRunner().invoke(main, [*argv, "--redis-url", q.url])
        assert res.exit_code == 1, res.output
        one_line(res.stderr)
        assert says in res.stderr
        q.unchanged()
    m = Manager(q.url)
    for call in (lambda: m.submit([{"name": "new", "execution": {"exec": "/bin/true"}}]),
                 lambda: m.cancel(["single"]), m.cancel_all):
        with pytest.raises(RedisError, match=says.split(" (")[0]):
            call()
        q.unchanged()


def test_no_arguments_at_all_still_show_the_help():
    """Usage errors are one line, but `qcgpj` alone is a request for the help, shown as click shows it."""
    res = CliRunner().invoke(main, [])
    assert "Usage:" in res.output and "submit" in res.output


@pytest.mark.parametrize("exc, kind, says", [
    (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), "RedisError", "still loading"),
    (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), "RedisError", "read-only"),
    (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "RedisMemoryError",
     "out of memory"),
    (redis.ResponseError("Error running script (call to f_0): @user_script:3: -OOM command not allowed when used "
                         "memory > 'maxmemory'.\nscript: 0"), "RedisMemoryError", "out of memory"),
    (redis.exceptions.NoPermissionError("this user has no permissions to run the 'xadd' command"),
     "RedisPermissionError", "(ACL)"),
    (redis.ResponseError("ERR Error running script: The user executing the script can't run this command or "
                         "subcommand"), "RedisPermissionError", "(ACL)"),
    (redis.ResponseError("DB index is out of range"), "ConnectionError", "no such database"),
    (redis.AuthenticationError("invalid username-password pair"), "ConnectionError", "refused the credentials"),
    (redis.ConnectionError("Error 111 connecting"), "ConnectionError", "lost the connection"),
    (redis.ResponseError("MASTERDOWN Link with MASTER is down"), "RedisError", "refused a command: MASTERDOWN"),
])
def test_each_refusal_of_redis_is_named_in_one_line(exc, kind, says):
    """The causes that cannot be set up cheaply for real (LOADING, a script's OOM text, MASTERDOWN): the mapping."""
    from qcgpj.connection import redis_error
    err = redis_error(exc)
    assert type(err).__name__ == kind and says in str(err) and "\n" not in str(err), str(err)
