"""Allocation queues: what ``qcgpj alloc add`` stores, and the allocator's decision, free of Redis and Slurm.

An allocation queue says what one Slurm allocation looks like (nodes, time, partition ...) and how many may exist
at once. The allocator compares the work that waits for cores (the ``pending`` list: ready tasks that no executor
has room for) with the allocations already on their way, and asks for the difference, within the limit. Work
already placed on an executor is that executor's: a new allocation could not take it, so it is not demand.
"""
from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import asdict, dataclass, field, fields

from .errors import AllocError

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
SLURM_NAME_RE = re.compile(r"[^\s\x00-\x1f\x7f]+")   # one #SBATCH line's value: no blank, no line break
SLURM_TIME_RE = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")
UNIT_TIME_RE = re.compile(r"^(\d+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TAG_PREFIX = "qcgpj."


def slurm_time(text: str) -> str:
    """``1h``, ``90m``, ``2d`` or one of Slurm's own forms (``30``, ``1:00:00``, ``1-12``) as a ``--time`` value."""
    text = text.strip()
    m = UNIT_TIME_RE.match(text)
    if m:
        secs = int(m.group(1)) * UNIT_SECONDS[m.group(2)]
        if secs <= 0:
            raise AllocError("--time: must be more than 0")
        days, rest = divmod(secs, 86400)
        return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    if SLURM_TIME_RE.match(text):
        if not any(c not in "0:-" for c in text):   # Slurm reads a zero limit as none at all
            raise AllocError("--time: must be more than 0")
        return text
    raise AllocError(f"--time: {text!r} is not a time limit (examples: 30m, 1h, 2d, 1:00:00, 1-12:00:00)")


@dataclass
class AllocQueue:
    """One allocation queue: the shape of its allocations, its limits, and how its workers start."""

    name: str
    max_allocations: int
    nodes: int
    time: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cores_per_node: int | None = None   # None: the partition's, read from sinfo (and --exclusive allocations)
    extra: list[str] = field(default_factory=list)   # more sbatch arguments, as given
    worker_cmd: str = "qcgpj-worker"
    wd: str = "."
    dir: str = "."                  # batch scripts and their output
    idle_grace: float = 30.0        # seconds a worker stays idle (queue empty, or nothing it could run waits)
    failure_limit: int = 3          # failures in a row that pause the queue
    register_timeout: float = 300.0  # seconds a started allocation has to register its worker
    max_files: int = 100            # rotation of the folder: files kept at most ...
    max_bytes: int = 10 << 20       # ... and bytes
    backend: str = "slurm"
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise AllocError(f"--name: {self.name!r}: use 1-32 letters, digits, '_', '.', '-'")
        for attr in ("partition", "account", "qos"):   # written into the batch script's #SBATCH lines
            value = getattr(self, attr)
            if value and not (isinstance(value, str) and SLURM_NAME_RE.fullmatch(value)):
                raise AllocError(f"--{attr}: {value!r}: a Slurm name holds no blanks, line breaks or control "
                                 "characters")
        for attr, low in (("max_allocations", 1), ("nodes", 1), ("failure_limit", 1), ("max_files", 2),
                          ("max_bytes", 1024)):
            if getattr(self, attr) < low:
                raise AllocError(f"--{attr.replace('_', '-')}: must be at least {low}")
        if self.cores_per_node is not None and self.cores_per_node < 1:
            raise AllocError("--cores-per-node: must be at least 1")
        if not (0 < self.register_timeout < math.inf and 0 <= self.idle_grace < math.inf):
            raise AllocError("--register-timeout must be more than 0 and --idle-grace at least 0 (finite seconds)")
        self.time = slurm_time(self.time)

    def tag(self, namespace: str) -> str:
        """The Slurm job name of its allocations: tells ours apart on a shared cluster, and lets a restarted
        allocator adopt what it had submitted."""
        return f"{TAG_PREFIX}{namespace}.{self.name}.{self.uid}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "AllocQueue":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


@dataclass(frozen=True)
class TaskDemand:
    """Waiting tasks of one job: ``count`` tasks of ``cores`` each (``nodes`` > 0: cores per node on that many)."""

    job: str
    count: int
    cores: int
    nodes: int = 0

    def total_cores(self) -> int:
        return self.cores * self.nodes if self.nodes else self.cores

    def fits(self, q: AllocQueue, cpn: int) -> bool:
        if self.nodes:
            return self.nodes <= q.nodes and self.cores <= cpn
        return self.cores <= q.nodes * cpn

    def describe(self, q: AllocQueue, cpn: int) -> str:
        need = f"{self.nodes} node(s) x {self.cores} cores" if self.nodes else f"{self.cores} cores"
        return f"job '{self.job}' needs {need}; an allocation of '{q.name}' has {q.nodes} node(s) x {cpn} cores"


@dataclass
class Decision:
    submit: int
    why: str
    too_large: list[str] = field(default_factory=list)


def decide(q: AllocQueue, cpn: int | None, demand: list[TaskDemand], waiting: int, active: int) -> Decision:
    """How many allocations to submit now. ``waiting``: ours that are queued in Slurm or started without a worker
    yet (they will take work soon); ``active``: all of ours Slurm knows (the limit counts these). ``cpn`` None:
    cores per node unknown; then every task is taken to fit, and one core per node is assumed."""
    fits = (lambda d: True) if cpn is None else (lambda d: d.fits(q, cpn))
    too_large = [d.describe(q, cpn) for d in demand if cpn is not None and not fits(d)]
    fitting = [d for d in demand if fits(d)]
    tasks = sum(d.count for d in fitting)
    cores = sum(d.count * d.total_cores() for d in fitting)
    wanted = math.ceil(cores / (q.nodes * (cpn or 1)))
    room = max(0, q.max_allocations - active)
    n = max(0, min(wanted - waiting, room))
    why = (f"{tasks} waiting task(s) need {cores} core(s) = {wanted} allocation(s) of {q.nodes}x{cpn or '?'}; "
           f"{waiting} on the way, {active}/{q.max_allocations} in Slurm")
    if cpn is None:
        why += " (cores per node unknown: give --cores-per-node)"
    if too_large:
        why += f"; {len(too_large)} job(s) too large for this queue"
    return Decision(n, why, too_large)
