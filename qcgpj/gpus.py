"""GPUs and memory of an executor's nodes (what it may hand out), and what a job asks of them (``nodeCrs``).

An executor learns its GPUs from, in order: ``--nodes NAME:CORES:GPUS`` or ``--gpus N`` (declared: ids 0..N-1),
``CUDA_VISIBLE_DEVICES`` (the devices this process may use, in the numbering its tasks see),
Slurm's ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS`` (ids) or ``SLURM_GPUS_ON_NODE`` (a count), and last
``nvidia-smi -L``. Every node of a multi-node allocation is taken to have the GPUs found on this one (Slurm gives
the same GRES per node). Nothing found means no GPUs: GPU tasks then never come here.

A job asks per node, as QCG-PilotJob's ``resources.nodeCrs`` does: ``{"gpu": n, "mem": m}`` (``gpus`` is taken
for ``gpu``; ``mem`` in MiB, or a string with a unit: ``"4G"``). GPUs are consumed: a task gets exactly n GPU ids
on each of its nodes, no other task has them until it ends. ``mem`` is a capacity check: the task goes only where
a node has at least that much memory (``--mem``, else Slurm's ``SLURM_MEM_PER_NODE``, else this machine's total;
nodes given by ``--nodes`` have none unless ``--mem`` says); it is not divided between concurrent tasks.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from .errors import JobSpecError
from .fieldcheck import _show, _unprintable

log = logging.getLogger(__name__)

CRS_FIELD = "resources.nodeCrs"
GPU_NAMES = ("gpu", "gpus")          # QCG-PilotJob spells it "gpu"; "gpus" is accepted for it
KNOWN_CRS = frozenset({*GPU_NAMES, "mem"})
MAX_GPUS = 4096
MAX_MEM = 1 << 40   # MiB (an exbibyte): beyond any node, and exact in Lua's numbers
_UNITS = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024, "t": 1 << 20, "tb": 1 << 20,
          "tib": 1 << 20, "k": None, "kb": None, "kib": None}
_MEM_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_NO_DEVICES = ("", "NoDevFiles", "-1", "none")
SMI_TIMEOUT = 10.0


# ---------------------------------------------------------------------- what an executor has
def _id_list(text: str) -> tuple[str, ...] | None:
    """A comma-separated GPU id list (``0,1``, ``GPU-uuid,...``); None when the text says there are none."""
    text = text.strip()
    if text in _NO_DEVICES:
        return None
    ids = tuple(x.strip() for x in text.split(",") if x.strip())
    return ids or None


def _nvidia_smi() -> tuple[str, ...]:
    """GPU indices from ``nvidia-smi -L`` ("GPU 0: ..." per device); none when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=SMI_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi -L: %s", exc)
        return ()
    if out.returncode != 0:
        return ()
    return tuple(m.group(1) for m in re.finditer(r"^GPU (\d+):", out.stdout, re.M))


def detect_gpus(environ: Mapping[str, str], smi: bool = True) -> tuple[str, ...]:
    """The GPU ids this process may hand to its tasks (see the module docstring for the order)."""
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return _id_list(cuda) or ()
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if environ.get(var):
            return _id_list(environ[var]) or ()
    count = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if count.isdigit():
        return tuple(str(i) for i in range(int(count)))
    return _nvidia_smi() if smi else ()


def detect_mem(environ: Mapping[str, str]) -> int:
    """MiB of one node: Slurm's ``SLURM_MEM_PER_NODE`` inside an allocation that sets it, else this machine's
    total memory; 0 when neither is known."""
    slurm = environ.get("SLURM_MEM_PER_NODE", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def declared_gpus(n: int) -> tuple[str, ...]:
    """``--gpus N``: ids 0..N-1."""
    if not 0 <= n <= MAX_GPUS:   # a typo's extra zeros must not build a billion ids (nor a huge message)
        raise ValueError(f"--gpus must be an integer from 0 to {MAX_GPUS}, got {n if n < 0 else 'more'}")
    return tuple(str(i) for i in range(n))


def parse_mem(text: Any) -> int:
    """MiB from ``4096``, ``"4096"``, ``"4G"``, ``"512MiB"``, ``"1.5T"``; ValueError if malformed or not positive."""
    if isinstance(text, bool):
        raise ValueError(f"expected a memory size like 4096 (MiB) or '4G', got {text!r}")
    if isinstance(text, int):
        mib = text
    elif isinstance(text, str) and (m := _MEM_RE.fullmatch(text)) and m.group(2).lower() in _UNITS:
        factor = _UNITS[m.group(2).lower()]
        if factor is None:
            raise ValueError(f"give memory in MiB or larger units (M, G, T), got {text!r}")
        value = float(m.group(1)) * factor
        if value != int(value):
            raise ValueError(f"{text!r} is not a whole number of MiB")
        mib = int(value)
    else:
        raise ValueError(f"expected a memory size like 4096 (MiB) or '4G', got {text!r}")
    if not 1 <= mib <= MAX_MEM:
        raise ValueError(f"must be between 1 MiB and {MAX_MEM} MiB, got {text!r}")
    return mib


# ---------------------------------------------------------------------- what a job asks
def node_crs(job: str, v: Any) -> tuple[int, int]:
    """``resources.nodeCrs`` -> (GPUs per node, MiB per node); JobSpecError naming the job and field."""
    if not isinstance(v, dict):
        raise JobSpecError(job, CRS_FIELD, f"must be an object like {{\"gpu\": 1}}, got {type(v).__name__} {v!r}"[:200])
    gpus = mem = 0
    for key, x in v.items():
        fld = f"{CRS_FIELD}.{key}"
        if key not in KNOWN_CRS:
            raise JobSpecError(job, fld, f"unknown resource (known: {', '.join(sorted(KNOWN_CRS))})")
        if key in GPU_NAMES:
            if gpus:
                raise JobSpecError(job, fld, "GPUs are given twice ('gpu' and 'gpus' are the same resource)")
            if type(x) is not int or not 0 <= x <= MAX_GPUS:
                raise JobSpecError(job, fld, f"must be an integer from 0 to {MAX_GPUS}, got {_show(x)}")
            gpus = x
        else:
            try:
                if _unprintable(x):
                    raise ValueError(f"must be at most {MAX_MEM} MiB, got {_show(x)}")
                mem = parse_mem(x)
            except ValueError as exc:
                raise JobSpecError(job, fld, str(exc)[:200]) from None
    return gpus, mem


def crs_json(gpus: int, mem: int) -> str:
    """The stored form of a job's request, as QCG-PilotJob spells it ('' when it asks for neither)."""
    parts = ([f'"gpu":{gpus}'] if gpus else []) + ([f'"mem":{mem}'] if mem else [])
    return '"nodeCrs":{' + ",".join(parts) + "}" if parts else ""
