"""Omission of the iterations that wait per iteration (``after: a:${it}``) on a job that ended badly, at sizes
where one script doing it all would hold Redis, and every executor and client with it, for seconds."""
from __future__ import annotations

from qcgpj import Jobs, Manager
from qcgpj.keys import Keys

from tests.cluster import Cluster

N = 2500   # iterations: more than one step (OMIT_STEP, common.lua), still quick


def omitted(m: Manager, name: str) -> int:
    return int(m.client.hget(Keys().job(name), "n_OMITTED") or 0)


def test_a_large_per_iteration_omission_goes_in_steps(redis_url, tmp_path):
    """Canceling a job of 100,000 iterations on which another waited per iteration held Redis for 2.1 s in the
    cancel's one call (a million: about 20 s). The cancel and a later submit now omit a step's worth of
    iterations, the InputQueue the rest a step per pass; the jobs end as before, the causes per iteration too,
    down a chain of such jobs."""
    m = Manager(redis_url)
    m.submit(Jobs().add(name="a", exec="/bin/true", iteration=N)
             .add(name="b", exec="/bin/true", iteration=N, after=["a:${it}"])
             .add(name="c", exec="/bin/true", iteration=N, after=["b:${it}"]))
    m.cancel(["a"])
    m.submit(Jobs().add(name="late", exec="/bin/true", iteration=N, after=["a:${it}"]))
    assert m.status(["b", "c", "late"]) == {"b": "READY", "c": "READY", "late": "READY"}   # not final yet
    assert 0 < omitted(m, "b") < N and 0 < omitted(m, "late") < N and 0 < omitted(m, "c") < N
    cluster = Cluster(redis_url, tmp_path)
    cluster.inputqueue()   # works off the rest; no executor needed
    try:
        assert m.wait4(["b", "c", "late"], timeout=60) == {"b": "OMITTED", "c": "OMITTED", "late": "OMITTED"}
    finally:
        cluster.stop()
    assert [omitted(m, name) for name in ("b", "c", "late")] == [N] * 3
    assert m.info(f"b:{N - 1}")["message"] == f"dependency a:{N - 1} ended CANCELED"
    assert m.info(f"c:{N - 1}")["message"] == f"dependency b:{N - 1} ended OMITTED"
    assert m.client.llen(Keys().omitting) == 0
    assert m.store.active() == 0
