"""QCG-PilotJob's executor templates (``qcg.pilotjob.executor_api.templates``): a job description with
``${placeholders}``, as a Python literal, and the placeholders' defaults."""
from __future__ import annotations

from typing import Any


class QCGPJTemplate:
    """A template: ``template()`` returns a job description with ``${placeholders}`` (a Python literal) and the
    placeholders' defaults."""

    @staticmethod
    def template() -> tuple[str, dict[str, Any]]:
        raise NotImplementedError


class BasicTemplate(QCGPJTemplate):
    """One command with arguments, its output in files."""

    @staticmethod
    def template() -> tuple[str, dict[str, Any]]:
        return ("{'name': '${name}', 'execution': {'exec': '${exec}', 'args': ${args}, "
                "'stdout': '${stdout}', 'stderr': '${stderr}'}}",
                {"args": [], "stdout": "stdout", "stderr": "stderr"})
