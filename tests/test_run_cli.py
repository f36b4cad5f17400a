"""`qcgpj run` and `qcgpj wait` as a user lives them: Ctrl-C, --timeout, an idle wait, the progress line in a real
terminal (tmux), the run record, and a queue that lost its jobs. Real processes, real redis-servers; local mode
with each of its stores."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from qcgpj import Manager
from qcgpj.errors import FinishedError, LostJobsError, StoreError
from tests.cluster import Cluster, qcgpj_cmd
from tests.test_cli import REPO, qcgpj, write
from tests.terminal import Terminal

STORES = ["redis-server", "fakeredis"]
TCK = os.sysconf("SC_CLK_TCK")


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    e.pop("QCGPJ_REDIS_URL", None)
    return e


def start(*args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(qcgpj_cmd(*args), cwd=cwd, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def marked(marker: str) -> list[int]:
    """Processes whose command line holds the marker: the process table, not our bookkeeping."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def until(predicate, timeout: float, what: str) -> None:
    """Wait for something outside any queue (a process appearing): the process table has no events."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sleepers(n: int, seconds: int, marker: str, ignore_term: bool = False) -> list[dict]:
    trap = "trap '' TERM; " if ignore_term else ""
    return [{"name": "sleep", "iteration": {"stop": n},
             "execution": {"exec": "/bin/sh", "args": ["-c", f"{trap}sleep {seconds}; : {marker}"]}},
            {"name": "queued", "execution": {"exec": "/bin/true"}, "dependencies": {"after": ["sleep"]}}]


@pytest.fixture
def marker():
    m = f"qcgpj-test-{uuid.uuid4().hex[:10]}"
    yield m
    for pid in marked(m):   # never leave a task behind, even when the test failed
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("store", STORES)
def test_ctrl_c_cancels_kills_the_tasks_and_exits_130(tmp_path, marker, store):
    write(tmp_path / "jobs.json", sleepers(2, 60, marker))
    p = start("run", "jobs.json", "--store", store, "--cores", "2", cwd=tmp_path)
    until(lambda: len(marked(marker)) >= 2, 60, "both tasks running")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "2 jobs: CANCELED 2" in out and f"store {store}" in out
    assert "interrupted" in err
    assert marked(marker) == []   # no task process left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_stops_a_local_run_as_ctrl_c_does(tmp_path, marker, sig):
    """A batch system ends a job at its walltime with SIGTERM, a closed terminal sends SIGHUP: the tasks must
    not outlive the run."""
    write(tmp_path / "jobs.json", sleepers(2, 60, marker))
    p = start("run", "jobs.json", "--cores", "2", cwd=tmp_path)
    until(lambda: len(marked(marker)) >= 2, 60, "both tasks running")
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    assert "terminated" in err and "CANCELED 2" in out
    assert marked(marker) == []


def test_second_ctrl_c_exits_at_once_and_still_kills(tmp_path, marker):
    """Tasks that ignore SIGTERM would hold the first Ctrl-C's clean stop for seconds: the second one kills
    them (SIGKILL to their process groups) and exits."""
    write(tmp_path / "jobs.json", sleepers(2, 60, marker, ignore_term=True))
    p = start("run", "jobs.json", "--cores", "2", cwd=tmp_path)
    until(lambda: len(marked(marker)) >= 2, 60, "both tasks running")
    p.send_signal(signal.SIGINT)
    while "canceling" not in p.stderr.readline():   # the first Ctrl-C was handled: its clean stop waits
        pass
    assert marked(marker), "the tasks ignore SIGTERM: they still run"
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    until(lambda: marked(marker) == [], 10, "the tasks killed")


@pytest.mark.parametrize("store", STORES)
def test_a_refused_later_request_ends_the_run_at_once_and_what_it_started(tmp_path, marker, store):
    """A request of the file refused once earlier ones run (here a name taken again, as its removal came too
    early): the run ends at once with the one-line error, and its tasks do not run on unseen (it waited for
    them with nothing said, its heartbeat going round without a pause)."""
    write(tmp_path / "jobs.json", [
        {"request": "submit", "jobs": [{"name": "a", "execution": {"script": f"sleep 300; echo {marker}"}}]},
        {"request": "removeJob", "jobNames": ["a"]},
        {"request": "submit", "jobs": [{"name": "a", "execution": {"exec": "/bin/true"}}]}])
    res = qcgpj("run", "jobs.json", "--store", store, cwd=tmp_path, timeout=25)   # not the task's 300 s
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == \
        "Error: job 'a', field 'name': a job of that name is already in the queue", res.stderr
    assert "Traceback" not in res.stderr
    until(lambda: marked(marker) == [], 10, "the task killed")


def test_two_quick_ctrl_c_still_say_why_the_run_stopped(tmp_path, marker):
    """Ctrl-C again 0.2 s later, mostly before the wait saw the first: the run still kills what runs and says why
    it stopped (it printed nothing at all)."""
    write(tmp_path / "jobs.json", sleepers(2, 60, marker, ignore_term=True))
    p = start("run", "jobs.json", "--cores", "2", cwd=tmp_path)
    until(lambda: len(marked(marker)) >= 2, 60, "both tasks running")
    deadline = time.monotonic() + 60
    while p.poll() is None:   # Ctrl-C every 0.2 s until it exits: signals sent together may arrive as one
        assert time.monotonic() < deadline
        p.send_signal(signal.SIGINT)
        time.sleep(0.2)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted again: what ran was killed; exiting at once, without a summary", err
    until(lambda: marked(marker) == [], 10, "the tasks killed")


def test_timeout_cancels_and_exits_1(tmp_path, marker):
    write(tmp_path / "jobs.json", sleepers(1, 30, marker))
    t0 = time.monotonic()
    res = qcgpj("run", "jobs.json", "--timeout", "2", cwd=tmp_path, timeout=60)
    assert res.returncode == 1, res.stderr
    assert time.monotonic() - t0 < 25   # far less than the task's 30 s: it did not wait for it
    assert "timed out after 2 s" in res.stderr and "CANCELED 2" in res.stdout
    assert marked(marker) == []


def test_forced_store_missing_is_one_line(tmp_path):
    write(tmp_path / "jobs.json", [{"name": "a", "execution": {"exec": "/bin/true"}}])
    res = qcgpj("run", "jobs.json", "--store", "redis-server", cwd=tmp_path, env={"PATH": "/nonexistent"})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "Error: store redis-server asked for, but no redis-server is on PATH (install Redis, or use --store "
        "fakeredis)"]
    with pytest.raises(StoreError):
        Manager(store="nosuch")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def _idle_share(cwd: Path, marker: str, *args: str, window: float = 4.0) -> tuple[float, int, str]:
    """`qcgpj run` of one long sleep: the CPU its waiting client used while the task slept, as a share of the
    time (a busy wait shows as ~100%); then Ctrl-C. Returns the share, the exit code and stderr."""
    write(cwd / "jobs.json", sleepers(1, 20, marker)[:1])
    p = start("run", "jobs.json", *args, cwd=cwd)
    try:
        until(lambda: marked(marker), 60, "the task running")
        a, t0 = _cpu(p.pid), time.monotonic()
        time.sleep(window)   # the measured span itself, not a synchronisation
        share = (_cpu(p.pid) - a) / (time.monotonic() - t0)
    finally:
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=60)
    return share, p.returncode, err


@pytest.mark.parametrize("store", STORES)
def test_waiting_in_local_mode_costs_no_cpu(tmp_path, marker, store):
    share, _code, _err = _idle_share(tmp_path, marker, "--store", store)
    assert share < 0.10, f"the waiting client used {share:.0%} of a core"


def test_waiting_on_a_queue_costs_no_cpu(tmp_path, marker, redis_url):
    cluster = Cluster(redis_url, tmp_path)
    try:
        cluster.serving(1)
        share, code, err = _idle_share(tmp_path, marker, "--redis-url", redis_url)
        assert share < 0.10, f"the waiting client used {share:.0%} of a core"
        # Ctrl-C of run on a shared queue only stops waiting: the job goes on, and the user is told how to stop it
        assert code == 130 and "go on in the queue" in err and "qcgpj cancel" in err
        assert cluster.manager().status("sleep")["sleep"] in ("SCHEDULED", "EXECUTING")
        cluster.manager().cancel(["sleep"])   # else the worker's drain waits for it
    finally:
        cluster.stop()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
@pytest.mark.parametrize("width", [40, 120])
def test_progress_is_one_line_in_a_real_terminal(tmp_path, marker, width):
    jobs = [{"name": "quick", "iteration": {"stop": 30}, "execution": {"exec": "/bin/true"}},
            {"name": "bad", "execution": {"exec": "/bin/false"}}, *sleepers(2, 60, marker)[:1]]
    write(tmp_path / "jobs.json", jobs)
    cmd = f"cd {tmp_path} && PYTHONPATH={REPO} {' '.join(qcgpj_cmd('run', 'jobs.json', '--cores', '2'))}; sleep 60"
    with Terminal(cmd, width=width) as term:
        # running: the two sleepers once their starts reached the queue (a line may come between)
        until(lambda: any("31/33" in line and "2 running" in line for line in term.lines()), 60,
              "the progress line at 31/33 with the sleepers running")
        lines = term.lines()
        assert len(lines) == 1, lines   # one line: no wrapping, no line per redraw
        line = lines[0]
        assert len(line) <= width and "1 failed" in line and "2 running" in line and "/s" in line
        term.send("C-c")
        until(lambda: any("jobs:" in line for line in term.lines()), 30, "the summary")
        assert any("CANCELED 1" in line for line in term.lines())


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_progress_running_is_what_executes_not_what_is_claimed_ahead(tmp_path, marker):
    """On a 2-core worker the line said '67 running' for one job of 100,000 iterations: the iterations placed
    and not ended, the executor's look-ahead included. It says how many execute: here never more than 2."""
    write(tmp_path / "jobs.json", [{"name": "it", "iteration": {"stop": 200}, "execution": {
        "exec": "/bin/sh", "args": ["-c", f"while [ ! -e go ]; do sleep 0.05; done; : {marker}"]}}])
    cmd = f"cd {tmp_path} && PYTHONPATH={REPO} {' '.join(qcgpj_cmd('run', 'jobs.json', '--cores', '2'))}; sleep 60"
    shown: list[int] = []

    def running_shown() -> bool:   # the figure once it is 2 or more (0 until the starts reach the queue)
        shown[:] = [int(n) for line in term.lines() for n in re.findall(r"(\d+) running", line)]
        return any(n >= 2 for n in shown)

    with Terminal(cmd) as term:
        until(running_shown, 60, "the progress line with tasks running")
        assert max(shown) == 2, term.lines()   # was 18 and more: the 2 running and the look-ahead claimed
        (tmp_path / "go").touch()
        until(lambda: any("jobs:" in line for line in term.lines()), 60, "the summary")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_hint_when_no_executor_serves_the_namespace(tmp_path, fresh_redis):
    redis_url = fresh_redis.url   # a server of its own: any client blocked in XREAD is this run
    write(tmp_path / "jobs.json", [{"name": "a", "execution": {"exec": "/bin/true"}}])
    run = " ".join(qcgpj_cmd("run", "jobs.json", "--redis-url", redis_url, "-n", "lonely"))
    with Terminal(f"cd {tmp_path} && PYTHONPATH={REPO} QCGPJ_HINT_AFTER=1 {run}") as term:
        until(lambda: any("no executor serves namespace 'lonely'" in line for line in term.lines()), 60,
              "the hint")
    # The terminal closed (SIGHUP): the run stops waiting and leaves.
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    until(lambda: not _blocked_in_xread(r), 60, "the run gone after its terminal closed")


def test_hint_when_no_executor_serves_the_namespace_of_a_piped_run(tmp_path, redis_url):
    """A batch script's `qcgpj run jobs.json > log 2>&1` on a namespace no executor serves waited silently for
    ever: the hint was part of the progress line, which a piped run does not draw. It goes to stderr now."""
    write(tmp_path / "jobs.json", [{"name": "a", "execution": {"exec": "/bin/true"}}])
    proc = start("run", "jobs.json", "--redis-url", redis_url, "-n", "lonely", cwd=tmp_path,
                 extra_env={"QCGPJ_HINT_AFTER": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        until(lambda: any("no executor serves namespace 'lonely'" in line for line in lines), 60, "the hint")
    finally:
        proc.send_signal(signal.SIGTERM)   # with a URL: it only stops waiting
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    reader.join(timeout=60)
    assert sum("no executor serves" in line for line in lines) == 1, lines
    assert "stopped waiting" in lines[-1]


def test_summary_and_record_tell_what_failed(tmp_path):
    write(tmp_path / "jobs.json", [
        {"name": "ok", "execution": {"exec": "/bin/true"}},
        {"name": "bad", "execution": {"script": "echo oops >&2; exit 3", "stderr": "bad.err"}},
        {"name": "sweep", "iteration": {"stop": 4},
         "execution": {"script": "test ${it} -ne 2 || exit 4", "stderr": "sweep.${it}.err"}}])
    res = qcgpj("run", "jobs.json", cwd=tmp_path)
    assert res.returncode == 1
    assert f"bad: FAILED exit 3 (stderr: {tmp_path / 'bad.err'})" in res.stdout
    assert f"sweep:2: FAILED exit 4 (stderr: {tmp_path / 'sweep.2.err'})" in res.stdout
    assert (tmp_path / "bad.err").read_text() == "oops\n"
    lines = [json.loads(line) for line in (tmp_path / "qcgpj-run.jsonl").read_text().splitlines()]
    assert lines[0]["run"]["store"] in STORES and lines[0]["run"]["cores"] >= 1
    by_name = {e["name"]: e for e in lines[1:]}
    assert by_name["sweep"]["iterations"]["FAILED"] == 1 and by_name["sweep:2"]["exit_code"] == 4
    assert by_name["bad"]["executor"] and by_name["bad"]["end"] >= by_name["bad"]["start"]
    # asked about afterwards, with no queue left
    st = qcgpj("status", "--from", str(tmp_path), "--json", cwd=tmp_path)
    assert json.loads(st.stdout)["jobs"] == {"ok": "SUCCEED", "bad": "FAILED", "sweep": "FAILED"}
    info = qcgpj("info", "--from", str(tmp_path), "sweep:2", "--json", cwd=tmp_path)
    assert json.loads(info.stdout)["exit_code"] == 4
    missing = qcgpj("info", "--from", str(tmp_path / "nowhere"), "x", cwd=tmp_path)
    assert missing.returncode == 1 and "no record of a run" in missing.stderr


def sweep_with_failures(n: int, every: int) -> list[dict]:
    """f: n iterations, every ``every``-th fails; g: n iterations, each after f's own (so n / every OMITTED)."""
    return [{"name": "f", "iteration": {"stop": n}, "execution": {"script": f"[ $(( ${{it}} % {every} )) -ne 0 ]"}},
            {"name": "g", "iteration": {"stop": n}, "execution": {"exec": "/bin/true"},
             "dependencies": {"after": ["f:${it}"]}}]


def tail(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("  ... ")]


def test_the_summary_counts_the_tasks_it_does_not_list_by_state(tmp_path, redis_url):
    """A 20,000-iteration sweep (every 100th failing, a job after each iteration) ended, after 10 lines about f,
    with '... and more: 2 job(s) did not succeed': not a word of f's 190 other failures nor g's 200 omitted
    iterations. The tail counts the tasks the lines did not tell of, by state; in local mode (from the run
    record) and on a queue (`qcgpj wait`)."""
    write(tmp_path / "jobs.json", sweep_with_failures(1000, 50))
    res = qcgpj("run", "jobs.json", "--cores", "2", cwd=tmp_path)
    assert res.returncode == 1
    assert sum(line.startswith("  f:") for line in res.stdout.splitlines()) == 10, res.stdout
    assert tail(res.stdout) == ["  ... and 30 more tasks not succeeded: 10 FAILED, 20 OMITTED"], res.stdout

    cluster = Cluster(redis_url, tmp_path)
    try:
        assert qcgpj("submit", "jobs.json", "--redis-url", redis_url, cwd=tmp_path).returncode == 0
        cluster.inputqueue()
        cluster.worker(2, "--exit-when-idle")
        res = qcgpj("wait", "--timeout", "120", "--redis-url", redis_url, cwd=tmp_path)
    finally:
        cluster.stop()
    assert res.returncode == 1
    assert tail(res.stdout) == ["  ... and 30 more tasks not succeeded: 10 FAILED, 20 OMITTED"], res.stdout

    # nothing left out: no tail (g's own line counts its omitted iterations)
    write(tmp_path / "jobs.json", sweep_with_failures(200, 100))
    res = qcgpj("run", "jobs.json", "--cores", "2", cwd=tmp_path)
    assert [line.split(":")[0:2] for line in res.stdout.splitlines()[1:]] == [["  f", "0"], ["  f", "100"],
                                                                              ["  g", " FAILED"]], res.stdout
    assert tail(res.stdout) == [], res.stdout


def test_the_stderr_named_for_a_failure_is_the_file_the_task_wrote(tmp_path):
    """The summary, the record and `info --from` substituted only ${it}, ${root_wd} and ${jname} in the stderr
    path: 'v:0: FAILED exit 3 (stderr: .../v.${itval}.${ncores}.err)' named a file that does not exist (the task
    wrote v.p.1.err), and an iterative job's own line named '.../b..err' (${it} as empty)."""
    write(tmp_path / "jobs.json", [
        {"name": "v", "iteration": {"values": ["p", "q"]},
         "execution": {"script": "exit 3", "stderr": "v.${itval}.${ncores}.${nnodes}.${nlist}.err"}},
        {"name": "s", "resources": {"numCores": 2},
         "execution": {"script": "exit 4", "stderr": "s.${ncores}.err", "wd": "d-${jname}"}},
        {"name": "b", "iteration": {"stop": 2}, "execution": {"script": "exit 5", "stderr": "b.${it}.err"}}])
    res = qcgpj("run", "jobs.json", "--nodes", "n0:2", cwd=tmp_path)
    assert res.returncode == 1
    written = {str(p) for p in tmp_path.rglob("*.err")}
    named = {line.split("(stderr: ")[1].rstrip(")") for line in res.stdout.splitlines() if "(stderr: " in line}
    assert named == written and len(written) == 5, (named, written)
    lines = [json.loads(line) for line in (tmp_path / "qcgpj-run.jsonl").read_text().splitlines()[1:]]
    by_name = {e["name"]: e["stderr"] for e in lines}
    assert by_name["v:1"] == str(tmp_path / "v.q.1.1.n0.err") and by_name["s"] == str(tmp_path / "d-s" / "s.2.err")
    assert by_name["b"] is None and by_name["v"] is None   # per iteration: no one file for the job
    info = qcgpj("info", "--from", str(tmp_path), "b:1", "--json", cwd=tmp_path)
    assert json.loads(info.stdout)["stderr"] == str(tmp_path / "b.1.err")


def test_wait_names_a_stderr_under_root_wd_relative_to_the_executors_wd(tmp_path, redis_url):
    """On a queue the client does not know the executors' --wd, so `qcgpj wait` names stderr files relative to it;
    it substituted ${root_wd} as empty: 'stderr: ${root_wd}/logs/${jname}.err' was named '/logs/a.err', at the
    filesystem's root, where no task wrote."""
    write(tmp_path / "jobs.json", [
        {"name": "a", "execution": {"script": "echo a >&2; exit 3", "stderr": "${root_wd}/logs/${jname}.err"}},
        {"name": "b", "execution": {"script": "echo b >&2; exit 4", "stderr": "b.err", "wd": "${root_wd}/w"}}])
    client = tmp_path / "client"   # not the executors' --wd: a path taken as relative to it names nothing here
    client.mkdir()
    cluster = Cluster(redis_url, tmp_path)
    try:
        assert qcgpj("submit", str(tmp_path / "jobs.json"), "--redis-url", redis_url, cwd=client).returncode == 0
        cluster.inputqueue()
        cluster.worker(2, "--exit-when-idle")
        res = qcgpj("wait", "--timeout", "60", "--redis-url", redis_url, cwd=client)
    finally:
        cluster.stop()
    assert res.returncode == 1, res.stdout + res.stderr
    named = dict(line.strip().split(":", 1)[0:1] + [line.split("(stderr: ")[1].rstrip(")")]
                 for line in res.stdout.splitlines() if "(stderr: " in line)
    assert named == {"a": "logs/a.err", "b": "w/b.err"}, res.stdout
    assert [(tmp_path / named[n]).read_text() for n in ("a", "b")] == ["a\n", "b\n"]


def test_submit_after_finish_is_an_error(tmp_path):
    m = Manager(root_wd=str(tmp_path), store="fakeredis")
    m.finish()
    with pytest.raises(FinishedError):
        m.submit([{"name": "late", "execution": {"exec": "/bin/true"}}])


def _blocked_in_xread(r: redis.Redis) -> bool:
    return any(c.get("cmd") == "xread" for c in r.client_list())


@pytest.mark.parametrize("names", [["a", "b"], []])
def test_wait_says_when_the_queue_lost_its_jobs(tmp_path, fresh_redis, names):
    """No executor: the jobs stay queued; Redis then loses them (FLUSHALL stands for a restart without
    persistence). `wait` must not report '0 jobs' or success."""
    redis_url = fresh_redis.url   # a server of its own: any client blocked in XREAD is this `wait`
    m = Manager(redis_url)
    m.submit([{"name": n, "execution": {"exec": "/bin/true"}} for n in ("a", "b")])
    p = start("wait", "--redis-url", redis_url, *names, cwd=tmp_path)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    until(lambda: _blocked_in_xread(r), 30, "wait blocked on the events")
    r.flushall()
    r.xadd("qcgpj:{default}:events", {"type": "nudge", "data": ""})   # wake it now rather than at its timeout
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "lost 2 job(s)" in err, err


def test_wait4all_raises_lost_jobs(fresh_redis):
    redis_url = fresh_redis.url   # a server of its own: any client blocked in XREAD is this wait4all
    m = Manager(redis_url)
    m.submit([{"name": "a", "execution": {"exec": "/bin/true"}}])
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    got: list[BaseException] = []

    def waiting() -> None:
        try:
            Manager(redis_url).wait4all(timeout=60)
        except BaseException as exc:
            got.append(exc)

    t = threading.Thread(target=waiting)
    t.start()
    until(lambda: _blocked_in_xread(r), 30, "wait4all blocked on the events")
    r.flushall()
    t.join(60)
    assert got and isinstance(got[0], LostJobsError) and got[0].names == ["a"]


def test_a_task_waiting_for_cores_on_its_nodes_lets_later_ones_pass(tmp_path):
    """'mn' needs 3 cores on each of 2 nodes while 'hold' has 2 of node n1's 4: 6 cores are free, not where 'mn'
    needs them. 'small', claimed after 'mn', fits; in strict claim order it never started, and 'hold' (waiting
    for what 'small' makes) never ended: a coupled run's parts deadlocked. Later tasks that fit now pass."""
    write(tmp_path / "jobs.json", [
        {"name": "hold", "execution": {"script": "while [ ! -f gate ]; do sleep 0.05; done"},
         "resources": {"numCores": 2, "numNodes": 1}},
        {"name": "mn", "execution": {"exec": "/bin/true"}, "resources": {"numNodes": 2, "numCores": 3}},
        {"name": "small", "execution": {"script": "touch gate"}}])
    res = qcgpj("run", "jobs.json", "--nodes", "n1:4,n2:4", "--timeout", "120", cwd=tmp_path)
    assert res.returncode == 0 and "3 jobs: SUCCEED 3" in res.stdout, res.stdout + res.stderr


TRILLION = 10**12   # the documented maximum of iterations for a job
MEMORY_CAP = 2 << 30   # address space for the runs below: a record or summary that walks 10^12 iterations dies


def capped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """qcgpj under an address-space limit (it, and the store and tasks it starts), so that a command that walks
    every iteration fails with a MemoryError rather than filling the machine."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    return subprocess.run(qcgpj_cmd(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=cap)


def test_a_run_of_a_job_of_10_to_the_12_iterations_leaves_a_record_of_a_few_lines(tmp_path):
    """A local run wrote a line in its record for every iteration, also those canceled unstarted: a job of 10^12
    iterations ended with a MemoryError traceback and a qcgpj-run.jsonl.tmp left behind (3,000,000 iterations:
    26 s and 1.8 GB for a record of 3,000,002 lines). Its record now has the run, the job and the iterations that
    started (on 2 cores, held by a gate: 2 at most); `info`, `status` and `report` read the others from the job's
    line."""
    write(tmp_path / "h.json", [{"name": "huge", "iteration": {"stop": TRILLION},
                                 "execution": {"script": "while [ ! -e go ]; do sleep 0.05; done"}}])
    res = capped("run", "h.json", "--cores", "2", "--timeout", "1", cwd=tmp_path)
    assert res.returncode == 1 and "timed out after 1 s" in res.stderr, res.stderr
    assert "1 jobs: CANCELED 1" in res.stdout and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "qcgpj-run.jsonl"]   # no .tmp
    lines = [json.loads(line) for line in (tmp_path / "qcgpj-run.jsonl").read_text().splitlines()]
    started = [e for e in lines[2:] if e["start"] is not None]
    assert len(lines) == 2 + len(started) <= 4 and lines[1]["name"] == "huge", lines

    def ask(*args: str) -> str:
        got = capped(*args, "--from", str(tmp_path), cwd=tmp_path)
        assert got.returncode == 0, got.stderr
        return got.stdout
    last = json.loads(ask("info", f"huge:{TRILLION - 1}", "--json"))
    assert last == {"name": f"huge:{TRILLION - 1}", "state": "CANCELED", "exit_code": None, "executor": None,
                    "start": None, "end": None, "attempt": 0, "message": "canceled", "stderr": None}
    assert json.loads(ask("status", "huge:5", "--json"))["jobs"] == {"huge:5": "CANCELED"}
    figures = json.loads(ask("report", "stats", "--json"))
    assert figures["tasks"] == TRILLION and figures["tasks_by_state"] == {"CANCELED": TRILLION}
    rows = json.loads(ask("report", "jobs", "--json"))
    assert sum(r["count"] for r in rows) == TRILLION and len(rows) == len(started) + 1
    assert rows[-1]["task"] == f"huge:{len(started)}-{TRILLION - 1}" and rows[-1]["state"] == "CANCELED"
    assert ask("report", "jobs", "--state", "CANCELED").splitlines()[-1] == \
        f"huge:{len(started)}-{TRILLION - 1}\tCANCELED\t-\t-\t-\tcanceled ({TRILLION - len(started):,} iterations)"


def test_wait_on_a_job_of_10_to_the_12_iterations_that_failed_unplaceable(tmp_path, redis_url):
    """On a queue, a job of 10^12 iterations asking for more cores than any executor has fails whole after the
    InputQueue's --unplaceable-timeout, without a record per iteration. `qcgpj wait` built every iteration's
    details to list the first failed ones (a MemoryError); `report` listed each one. Now the summary names the
    first 10 and counts the rest, and `report` counts them as on a run's record."""
    write(tmp_path / "h.json", [{"name": "huge", "iteration": {"stop": TRILLION}, "resources": {"numCores": 2},
                                 "execution": {"exec": "/bin/true"}}])
    cluster = Cluster(redis_url, tmp_path)
    try:
        # submitted before any executor joined (a submit checks the cores of those there), then a 1-core one
        assert qcgpj("submit", "h.json", "--redis-url", redis_url, cwd=tmp_path).returncode == 0
        cluster.inputqueue("--unplaceable-timeout", "0.5")
        cluster.worker(1)
        res = capped("wait", "--timeout", "120", "--redis-url", redis_url, cwd=tmp_path)
        stats = capped("report", "stats", "--json", "--redis-url", redis_url, cwd=tmp_path)
        rows = capped("report", "jobs", "--json", "--redis-url", redis_url, cwd=tmp_path)
        info = capped("info", "huge:5", "--json", "--redis-url", redis_url, cwd=tmp_path)
    finally:
        cluster.stop()
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    listed = [line for line in res.stdout.splitlines() if line.startswith("  huge:")]
    assert [line.split(":")[1] for line in listed] == [str(i) for i in range(10)], res.stdout
    assert all(": FAILED: no live executor could run it" in line for line in listed), listed
    assert tail(res.stdout) == [f"  ... and {TRILLION - 10:,} more tasks not succeeded: {TRILLION - 10:,} FAILED"]
    assert json.loads(stats.stdout)["tasks_by_state"] == {"FAILED": TRILLION}, stats.stderr
    assert [(r["task"], r["count"]) for r in json.loads(rows.stdout)] == [(f"huge:0-{TRILLION - 1}", TRILLION)]
    assert json.loads(info.stdout)["state"] == "FAILED"


def test_a_record_that_cannot_be_written_is_one_line_and_leaves_nothing_behind(tmp_path):
    """Writing the record failed with a traceback and left qcgpj-run.jsonl.tmp behind (a full disk, or a
    MemoryError of a record too large). Now: one line on stderr, the summary from the queue, exit 1, no file."""
    write(tmp_path / "j.json", [{"name": "a", "iteration": {"stop": 3}, "execution": {"exec": "/bin/true"}}])
    (tmp_path / "qcgpj-run.jsonl.tmp").symlink_to("/dev/full")   # every write: ENOSPC
    res = qcgpj("run", "j.json", cwd=tmp_path)
    assert res.returncode == 1 and "1 jobs: SUCCEED 1" in res.stdout, res.stdout + res.stderr
    assert res.stderr.strip().splitlines()[-1] == \
        f"qcgpj: cannot write the record of the run, {tmp_path / 'qcgpj-run.jsonl'}: No space left on device"
    assert "Traceback" not in res.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["j.json"]
