"""EasyVVUQ, a real client of QCG-PilotJob's executor API, on qcgpj.compat's QCGPJExecutor: a small campaign
runs through ``easyvvuq.actions.QCGPJPool`` and its collated results are checked, in local mode and on a real
Redis with an InputQueue and a worker. EasyVVUQ is an optional extra (``pip install qcgpj[easyvvuq]``; it pulls
in dask, scikit-learn, chaospy... and numpy<2, which Python 3.13 builds from source: 12 to 42 minutes to
install), so those tests skip without it; the replay tests below make the same calls QCGPJPool makes
(EasyVVUQ 1.3) and run everywhere."""
from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from qcgpj.compat import QCGPJExecutor, QCGPJFuture
from qcgpj.compat.templates import BasicTemplate, QCGPJTemplate
from qcgpj.errors import QcgpjError

needs_easyvvuq = pytest.mark.skipif(importlib.util.find_spec("easyvvuq") is None,
                                    reason="easyvvuq not installed (pip install qcgpj[easyvvuq])")

MODEL = """\
import json, sys
p = json.load(open(sys.argv[1]))
with open("out.csv", "w") as f:
    f.write("y,z\\n%r,%r\\n" % (p["a"] * p["b"] + p["c"], p["a"] + 2 * p["b"] - p["c"]))
"""


@pytest.fixture
def python_on_path(monkeypatch):
    """Tasks run ``python3`` from PATH (QCGPJPool's command): make it this interpreter, which has easyvvuq."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)


# ---------------------------------------------------------------------- the real client
def run_campaign(tmp_path: Path, executor: QCGPJExecutor, vary: str = "abc"):
    """A PCE campaign of order 1 over the parameters ``vary`` (2**len(vary) runs; the model uses a, b and c):
    the encoder writes input.json, the model out.csv, the decoder reads it; every run goes through EasyVVUQ's
    QCGPJPool to ``executor`` (qcgpj's, or QCG-PilotJob's in tests/easyvvuq_timing.py)."""
    import chaospy as cp
    import easyvvuq as uq
    from easyvvuq.actions import Actions, CreateRunDirectory, Decode, Encode, ExecuteLocal, QCGPJPool
    from easyvvuq.actions.execute_qcgpj import EasyVVUQParallelTemplate

    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "input.template").write_text('{"a": $a, "b": $b, "c": $c}')
    params = {p: {"type": "float", "default": 0.5} for p in "abcd"}
    actions = Actions(
        CreateRunDirectory(root=str(tmp_path / "runs"), flatten=True),
        Encode(uq.encoders.GenericEncoder(template_fname=str(tmp_path / "input.template"), delimiter="$",
                                          target_filename="input.json")),
        ExecuteLocal(f"{sys.executable} {tmp_path / 'model.py'} input.json"),
        Decode(uq.decoders.SimpleCSV(target_filename="out.csv", output_columns=["y", "z"])))
    campaign = uq.Campaign(name="cup", params=params, actions=actions, work_dir=str(tmp_path))
    campaign.set_sampler(uq.sampling.PCESampler(vary={p: cp.Uniform(0, 1) for p in vary}, polynomial_order=1))
    pool = QCGPJPool(qcgpj_executor=executor, template=EasyVVUQParallelTemplate(),
                     template_params={"numCores": 1, "numNodes": 1}, polling_interval=0.2)
    with executor:
        campaign.execute(pool=pool).collate()
    return campaign.get_collation_result()


def check_results(df, tmp_path: Path) -> None:
    """The 8 runs' rows with the model's values, and each run went through QCGPJPool's task runner."""
    ran = sorted(tmp_path.glob("cup*/stdout_*"))
    assert len(ran) == 8 and all("execute_qcgpj_task" in p.read_text() for p in ran)
    assert sorted(df["run_id"].to_numpy().ravel().tolist()) == list(range(1, 9))
    a, b, c = (df[p].to_numpy().ravel() for p in "abc")
    assert len({(x, y, z) for x, y, z in zip(a, b, c)}) == 8          # the 2x2x2 quadrature points
    assert df["y"].to_numpy().ravel() == pytest.approx(a * b + c)
    assert df["z"].to_numpy().ravel() == pytest.approx(a + 2 * b - c)


@pytest.mark.slow
@needs_easyvvuq
def test_easyvvuq_campaign_in_local_mode(tmp_path, python_on_path):
    check_results(run_campaign(tmp_path, QCGPJExecutor(wd=str(tmp_path), resources="2")), tmp_path)


@pytest.mark.slow
@needs_easyvvuq
def test_easyvvuq_campaign_on_a_queue(tmp_path, python_on_path, cluster):
    m = cluster.serving(2)
    ex = QCGPJExecutor(redis_url=cluster.url)
    check_results(run_campaign(tmp_path, ex), tmp_path)
    assert m.list() == {f"{ex.prefix}{i}": "SUCCEED" for i in range(1, 9)}     # the worker ran them


# ---------------------------------------------------------------------- the same calls, without EasyVVUQ
class PoolTemplate(QCGPJTemplate):
    """The fields EasyVVUQ's templates send: an empty venv, no modules, the default model, cores and nodes."""

    @staticmethod
    def template():
        return ("""
            {
                'name': '${name}',
                'execution': {'exec': '${exec}', 'args': ${args}, 'stdout': '${stdout}', 'stderr': '${stderr}',
                              'venv': '${venv}', 'modules': ${modules}, 'model': '${model}',
                              'model_opts': ${model_opts}},
                'resources': {'numCores': {'exact': ${numCores}}, 'numNodes': {'exact': ${numNodes}}}
            }
            """, {"args": [], "stdout": "stdout", "stderr": "stderr", "venv": "", "modules": [],
                  "model": "default", "model_opts": {}, "numCores": 1, "numNodes": 1})


TASK = ("import json, os, sys; "
        "json.dump({'x2': int(sys.argv[2]) ** 2}, "
        "open(os.path.join(sys.argv[1], '.result_' + os.environ['QCG_PM_EXEC_API_JOB_ID']), 'w'))")


def replay_pool(campaign_dir: Path, ex: QCGPJExecutor, runs: int) -> dict[int, dict]:
    """QCGPJPool's calls: one submit per run (template params as a dict, the rest as keywords, the run id an
    int as the name), done() polled until every future is done, result() of each -> {name: state}, a result
    file the task names by QCG_PM_EXEC_API_JOB_ID, and shutdown()."""
    futures = {}
    for run_id in range(1, runs + 1):
        f = ex.submit(PoolTemplate().template, {"numCores": 1, "numNodes": 1}, exec=sys.executable,
                      name=run_id, stdout=f"{campaign_dir}/stdout_{run_id}", stderr=f"{campaign_dir}/stderr_{run_id}",
                      args=["-c", TASK, str(campaign_dir), str(run_id)])
        assert isinstance(f, QCGPJFuture)
        futures[f] = run_id
    pending, results = set(futures), {}
    while pending:
        for f in [f for f in pending if f.done()]:
            pending.discard(f)
            [(name, state)] = f.result().items()
            assert not f.running() and name == f"{ex.prefix}{futures[f]}" and state == "SUCCEED"
            results[futures[f]] = json.loads((campaign_dir / f".result_{name}").read_text())
        if pending:
            time.sleep(0.05)        # the client polls (QCGPJPool.as_completed): that is what is replayed here
    ex.shutdown()
    return results


def test_easyvvuqs_calls_in_local_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    ex = QCGPJExecutor(wd=str(tmp_path), resources="2,3")           # QCG-PilotJob's unnamed nodes: n0, n1
    [executor] = ex.qcgpj_manager.m.resources()["executors"].values()
    assert executor["nodes"] == "n0=2;n1=3"
    assert replay_pool(tmp_path, ex, 6) == {i: {"x2": i * i} for i in range(1, 7)}
    assert ex.finished


def test_easyvvuqs_calls_on_a_queue(tmp_path, cluster):
    """Two campaigns, one after the other, on one queue: both name their runs 1..6."""
    m = cluster.serving(2)
    ex1, ex2 = QCGPJExecutor(redis_url=cluster.url), QCGPJExecutor(redis_url=cluster.url)
    for ex in (ex1, ex2):
        assert replay_pool(tmp_path, ex, 6) == {i: {"x2": i * i} for i in range(1, 7)}
    assert m.list() == {f"{ex.prefix}{i}": "SUCCEED" for ex in (ex1, ex2) for i in range(1, 7)}
    assert len(m.list()) == 12


def test_a_futures_timeout_is_concurrent_futures_timeout(tmp_path, monkeypatch):
    """A caller written for concurrent.futures catches its TimeoutError from result(timeout)."""
    monkeypatch.delenv("QCGPJ_REDIS_URL", raising=False)
    with QCGPJExecutor(wd=str(tmp_path), resources="1") as ex:
        f = ex.submit(BasicTemplate.template, name="long", exec="/bin/sleep", args=["300"])
        with pytest.raises(concurrent.futures.TimeoutError, match="long") as caught:
            f.result(timeout=0.2)
        assert isinstance(caught.value, QcgpjError) and not f.done()
        f.cancel()
        assert f.result(timeout=60) == {"long": "CANCELED"}


def test_leaving_the_with_block_on_a_queue_cancels_what_it_submitted(tmp_path, cluster):
    """As QCG-PilotJob's shutdown ends its tasks (and local mode's does): a campaign that stopped early (a run
    FAILED, so EasyVVUQ's collate raised; Ctrl-C) left its runs on the queue's workers, where nothing could
    collect them. Another client's job on the same queue runs on."""
    from qcgpj import Jobs
    m = cluster.serving(2)
    m.submit(Jobs().add(name="other", exec="/bin/sleep", args=["300"]))
    with pytest.raises(RuntimeError, match="collate"):
        with QCGPJExecutor(redis_url=cluster.url) as ex:
            for i in (1, 2):    # one of them waits for a core (which one: the order they were claimed in)
                ex.submit(BasicTemplate.template, name=f"r{i}", exec="/bin/sleep", args=["300"])
            deadline, last = time.monotonic() + 60, m.store.last_event_id()
            while sorted(m.status([f"{ex.prefix}r1", f"{ex.prefix}r2", "other"]).values()) != [
                    "EXECUTING", "EXECUTING", "SCHEDULED"]:
                assert time.monotonic() < deadline, f"a run and other never both ran: {m.list()}\n{cluster.logs()}"
                last = m.store.wait_event(last, 0.5)     # woken by the queue's events
            raise RuntimeError("collate: QCG-PilotJob task 1 finished with the status: FAILED")
    names = [f"{ex.prefix}r1", f"{ex.prefix}r2"]
    assert m.wait4(names, timeout=60) == {n: "CANCELED" for n in names}
    assert m.status(["other"]) == {"other": "EXECUTING"}
    m.cancel(["other"])
    assert m.wait4(["other"], timeout=60) == {"other": "CANCELED"}


def test_easyvvuqs_calls_on_a_queue_of_another_namespace(tmp_path, redis_url):
    """A Redis that holds several campaigns keeps each in a namespace (the workers' -n): the executor named
    none, so its runs went to 'default', where no worker serves, and the campaign waited for ever."""
    from tests.cluster import Cluster
    cluster = Cluster(redis_url, tmp_path, namespace="sweep")
    try:
        m = cluster.serving(2)
        ex = QCGPJExecutor(redis_url=redis_url, namespace="sweep")
        assert replay_pool(tmp_path, ex, 2) == {i: {"x2": i * i} for i in (1, 2)}
        assert m.list() == {f"{ex.prefix}{i}": "SUCCEED" for i in (1, 2)}
    finally:
        cluster.stop()
