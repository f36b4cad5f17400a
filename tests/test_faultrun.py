"""The short fault run (python -m tests.faultrun --short) as a test: nothing lost, nothing stuck, reruns only of
tasks that were in flight when their executor or Redis was killed. Two scenarios are left to tests of their own
that assert more of the same run: 'outage' (test_outage.py::test_outage_longer_than_the_ttl_stops_nobody) and
'poison' (test_outage.py::test_poison_task_is_failed_and_workers_remain)."""
from __future__ import annotations

from qcgpj.executor import PREFETCH_MAX

from tests.faultrun import SCENARIOS, SHORT, run

IN_FLIGHT = 1 + PREFETCH_MAX   # what one one-core executor can hold claimed
COVERED_ELSEWHERE = ("outage", "poison")


def test_short_fault_run():
    lines = []
    for name in (n for n in SCENARIOS if n not in COVERED_ELSEWHERE):
        res = run(name, SHORT)
        lines.append(res.line(name))
        assert res.lost == 0 and res.stuck == 0, lines
        assert res.duplicated <= (IN_FLIGHT if name in ("kills", "restarts") else 0), lines
        assert res.extra.get("workers_exited", 0) == 0 and res.extra.get("inputqueue_died", 0) == 0, lines
        if name == "submit-oom":
            assert res.extra["written_on_error"] == 0 and res.extra["not_refused"] == 0, lines
