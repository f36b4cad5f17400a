"""``default`` (also ``local``): one process on this node, bound to the task's cores."""
from __future__ import annotations

from .base import ProcessWorker


class LocalWorker(ProcessWorker):
    name = "default"
