"""Install hygiene: the plugins install as qcgpj.workers (never a top-level ``workers``), and qcgpj knows its
version."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import qcgpj
import qcgpj.workers

REPO = Path(__file__).resolve().parent.parent


def test_from_a_source_tree_qcgpj_workers_is_the_trees_workers_folder():
    assert Path(qcgpj.workers.__file__).resolve() == REPO / "workers" / "__init__.py"
    assert type(qcgpj.workers.get_worker("default")).__module__ == "qcgpj.workers.local"


def test_version_option():
    out = subprocess.run([sys.executable, "-m", "qcgpj", "--version"], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    assert out.strip() == f"qcgpj {qcgpj.__version__}"


def test_the_wheel_holds_qcgpj_workers_and_no_top_level_workers(tmp_path):
    src = tmp_path / "src"      # a clean copy: setuptools would reuse what a build/ of the tree holds
    src.mkdir()
    for name in ("setup.cfg", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("qcgpj", "workers"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
                           capture_output=True, text=True, timeout=600)
    if build.returncode:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1:]}")
    names = zipfile.ZipFile(next(tmp_path.glob("qcgpj-*.whl"))).namelist()
    assert "qcgpj/workers/__init__.py" in names and "qcgpj/workers/local.py" in names
    assert "qcgpj/lua/submit.lua" in names
    assert not [n for n in names if n.startswith("workers/")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(next(tmp_path.glob("qcgpj-*.whl"))).read(entry_points).decode()
    assert "default = qcgpj.workers.local:LocalWorker" in text
