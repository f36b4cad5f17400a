"""Every example in README.md runs as written, so the README stays true.

The rules, general so that a new section is covered without a change here:
- Fenced blocks tagged ``sh``/``bash``, ``python`` and ``json`` run in README order, all in one temporary
  directory (a file one block writes is there for the next ones), in local mode unless the block starts a Redis.
- A block right below an HTML comment ``<!-- not run: REASON -->`` is skipped, with that reason.
- ``sh``: run by ``bash -e`` in a session of its own; lines that install the package (``pip install``) are left
  out, since the tree under test is what runs: ``qcgpj`` and ``qcgpj-worker`` on PATH are this tree's. Every
  Redis port a block names (``--port N``, ``-p N``, ``host:N``) becomes a free port of a private redis-server
  started by the block itself, never a real one. What a block leaves running in the background (``cmd &``) is
  killed when the README's run ends.
- ``python``: run by this Python, this tree first on its path.
- ``json``: a job file, run with ``qcgpj run`` (exit 0: every job SUCCEEDed).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from qcgpj.workers import sweep
from tests.redisproc import free_port

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RUN = {"sh": "sh", "bash": "sh", "python": "python", "json": "json"}
BLOCK_TIMEOUT = 300


@dataclass
class Block:
    line: int          # of the opening fence
    lang: str          # sh, python or json
    text: str
    skip: str | None   # the reason of a "not run" comment above it

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.lang}"


def blocks(markdown: str) -> list[Block]:
    found = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, end = i, i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if m.group(1) in RUN:
            above = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            note = re.match(r"^<!--\s*not run:\s*(.*?)\s*-->$", above.strip())
            found.append(Block(start + 1, RUN[m.group(1)], "\n".join(lines[start + 1:end]) + "\n",
                               note.group(1) if note else None))
        i = end + 1
    return found


BLOCKS = blocks(README.read_text())
PORT_RE = re.compile(r"(--port\s+|-p\s+|(?:127\.0\.0\.1|localhost):)(\d{2,5})\b")


class Reader:
    """Runs the README's blocks in order in one directory, as a new user would, one test per block."""

    def __init__(self, wd: Path) -> None:
        self.wd = wd
        self.done = 0
        self.sessions: list[int] = []
        self.ports: dict[str, str] = {}
        bin_dir = wd / ".bin"
        bin_dir.mkdir()
        for name, sub in (("qcgpj", ""), ("qcgpj-worker", " worker")):
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m qcgpj{sub} "$@"\n')
            shim.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QCGPJ_")}
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

    def port(self, match: re.Match) -> str:
        port = self.ports.setdefault(match.group(2), str(free_port()))
        return match.group(1) + port

    def run_until(self, index: int) -> None:
        while self.done <= index:
            block = BLOCKS[self.done]
            self.done += 1
            if block.skip is None:
                self.run(block)

    def run(self, block: Block) -> None:
        name = f"readme-{block.line}"
        if block.lang == "sh":
            script = "\n".join(ln for ln in block.text.splitlines() if not ln.lstrip().startswith("pip install"))
            (self.wd / f"{name}.sh").write_text(PORT_RE.sub(self.port, script) + "\n")
            argv = ["bash", "-e", f"{name}.sh"]
        elif block.lang == "python":
            (self.wd / f"{name}.py").write_text(block.text)
            argv = [sys.executable, f"{name}.py"]
        else:
            (self.wd / f"{name}.json").write_text(block.text)
            argv = ["qcgpj", "run", f"{name}.json"]
        # Output to a file, not a pipe: what the block leaves running in the background keeps a pipe open.
        with open(self.wd / f"{name}.out", "w+") as out:
            proc = subprocess.Popen(argv, cwd=self.wd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.sessions.append(proc.pid)
            try:
                proc.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.close()
                proc.wait()
            out.seek(0)
            assert proc.returncode == 0, f"{block.id} exited {proc.returncode}:\n{block.text}\n--- output:\n{out.read()}"

    def close(self) -> None:
        """Kill what the blocks left running (servers and services started with '&')."""
        for sid in self.sessions:
            sweep.signal_all(sweep.session_and_descendants(sid), signal.SIGKILL)


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    r = Reader(tmp_path_factory.mktemp("readme"))
    yield r
    r.close()


def test_the_readme_has_examples_of_each_kind():
    assert {b.lang for b in BLOCKS if b.skip is None} == {"sh", "python", "json"}


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[b.id for b in BLOCKS])
def test_readme_example_runs(reader, index):
    block = BLOCKS[index]
    if block.skip is not None:
        pytest.skip(f"not run: {block.skip}")
    reader.run_until(index)



def test_the_key_table_names_every_key():
    """'Inspecting with redis-cli' lists every key of a namespace (redis-cli showed executors:free and
    executors:shapes, which it did not name). A row may name several: `exec:<id>:ready` / `:running`."""
    from qcgpj.keys import TEMPLATES
    section = README.read_text().split("## Inspecting with redis-cli", 1)[1].split("\n## ", 1)[0]
    named = set()
    for cell in re.findall(r"^\| (`.+?`) \|", section, re.M):
        prev = ""
        for key in re.findall(r"`([^`]+)`", cell):
            key = prev.rsplit(":", 1)[0] + key if key.startswith(":") else key
            named.add(re.sub(r"<[^>]*>", "{}", key))
            prev = key
    assert sorted(t for t in TEMPLATES.values() if t not in named) == []


def test_the_errors_the_python_api_names_can_be_imported_from_qcgpj():
    """The Python API's list of errors: each is `from qcgpj import ...`, as the others are. RemoveError, which
    Manager.remove raises, was only in qcgpj.errors (`from qcgpj import RemoveError`: ImportError)."""
    import qcgpj
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    listed = section.split("Errors are subclasses of `qcgpj.QcgpjError`", 1)[1].split("\n\n", 1)[0]
    names = set(re.findall(r"`([A-Z]\w*Error)`", listed))
    assert "RemoveError" in names
    for name in sorted(names):
        assert name in qcgpj.__all__, name
        assert issubclass(getattr(qcgpj, name), qcgpj.QcgpjError), name
