"""Slurm, through its commands: ``sbatch --parsable``, ``squeue --me``, ``scancel``, ``sinfo``.

Batch scripts and their output go to one folder per allocation queue, rotated (oldest files first) so that an
allocator running for weeks does not fill a disk.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .alloc import TAG_PREFIX, AllocQueue
from .connection import ENV_URL
from .errors import AllocError

log = logging.getLogger(__name__)
TIMEOUT = 60.0   # seconds for one Slurm command: slurmctld may be slow, never hang forever


@dataclass(frozen=True)
class SlurmJob:
    id: str
    name: str
    state: str    # PENDING, RUNNING, COMPLETING, ...
    reason: str


def _run(args: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AllocError(f"{args[0]}: not found (is Slurm installed here?)") from None
    except subprocess.TimeoutExpired:
        raise AllocError(f"{args[0]}: no answer within {TIMEOUT:g} s") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def our_jobs() -> list[SlurmJob]:
    """This user's jobs submitted by any qcgpj allocator (job name starting with the tag prefix)."""
    res = _run(["squeue", "--me", "-h", "-o", "%i|%j|%T|%r"])
    if res.returncode != 0:
        raise AllocError(f"squeue failed: {_last_line(res.stderr)}")
    jobs = []
    for line in res.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4 and parts[1].startswith(TAG_PREFIX):
            jobs.append(SlurmJob(*parts))
    return jobs


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        res = _run(["scancel", *job_ids])
        if res.returncode != 0:
            log.warning("scancel %s: %s", " ".join(job_ids), _last_line(res.stderr))


def partition_cores(partition: str | None) -> int | None:
    """CPUs per node of the partition (the smallest, where nodes differ); None when sinfo cannot tell."""
    res = _run(["sinfo", "-h", "-o", "%c", *(["-p", partition] if partition else [])])
    values = [int(v.rstrip("+")) for v in res.stdout.split() if v.rstrip("+").isdigit()]
    return min(values) if res.returncode == 0 and values else None


def batch_script(q: AllocQueue, namespace: str, redis_url: str) -> str:
    """The script of one allocation: its worker leaves when the queue has stayed empty for the idle grace (or it
    had nothing it could run for as long)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={q.tag(namespace)}", f"#SBATCH --nodes={q.nodes}",
             f"#SBATCH --time={q.time}"]   # --output is given to sbatch: a directive cannot hold every path
    lines += [f"#SBATCH --{opt}={val}" for opt, val in
              (("partition", q.partition), ("account", q.account), ("qos", q.qos)) if val]
    # Without a core count Slurm gives one CPU per node: ask for all of them, or for the number given.
    lines.append(f"#SBATCH --ntasks-per-node={q.cores_per_node}" if q.cores_per_node else "#SBATCH --exclusive")
    worker = [*shlex.split(q.worker_cmd), "--namespace", namespace, "--exit-when-idle",
              "--idle-grace", f"{q.idle_grace:g}", "--wd", q.wd]
    # The URL goes by the environment: on the worker's command line a password in it would show in `ps` to
    # every user of the compute node.
    lines += [f"export {ENV_URL}={shlex.quote(redis_url)}", f"cd {shlex.quote(q.wd)}", "exec " + shlex.join(worker),
              ""]
    return "\n".join(lines)


def rotate(folder: Path, max_files: int, max_bytes: int) -> None:
    """Delete the oldest files of the folder until at most max_files - 1 files and max_bytes remain."""
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
    size = sum(p.stat().st_size for p in files)
    while files and (len(files) >= max_files or size > max_bytes):
        oldest = files.pop(0)
        size -= oldest.stat().st_size
        oldest.unlink(missing_ok=True)


def submit(q: AllocQueue, namespace: str, redis_url: str) -> str:
    """sbatch one allocation; returns its job id. AllocError with sbatch's own message when Slurm refuses."""
    folder = Path(q.dir)
    script = folder / f"alloc-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}.sh"
    try:   # a folder that cannot be written is this queue's failure, not the allocator's end
        folder.mkdir(parents=True, exist_ok=True)
        rotate(folder, q.max_files, q.max_bytes)
        # The script holds the Redis URL (and any password in it): readable by the owner only.
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(batch_script(q, namespace, redis_url))
    except OSError as exc:
        raise AllocError(f"cannot write the batch script of '{q.name}' in {folder}: {exc.strerror or exc}") from None
    res = _run(["sbatch", "--parsable", f"--output={folder / 'alloc-%j.out'}", *q.extra, str(script)])
    if res.returncode != 0:
        raise AllocError(f"sbatch refused an allocation of '{q.name}': {_last_line(res.stderr)}")
    return res.stdout.strip().split(";")[0]   # "jobid" or "jobid;cluster"
