"""A plain (non-editable) install works from any directory: the shipped model is package data.

The wheel and the sdist are built from a copy of the package's files (so no build/ or
*.egg-info lands in the checkout), with the venv's setuptools (a dev dependency: no download).
The wheel is installed into a bare folder that, put on PYTHONPATH, is found before the editable
install's finder; the command then runs from a directory that holds no checkout.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"config.json", "entropy.safetensors", "blt.safetensors"}
MODEL_DIR = "bltlab/checkpoints/small"


def run(cmd, cwd, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_plain_install_generates_from_another_directory(tmp_path):
    src, dist, site, elsewhere = (tmp_path / d for d in ("src", "dist", "site", "elsewhere"))
    shutil.copytree(ROOT / "bltlab", src / "bltlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)], src)
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"], src)
    wheel, = dist.glob("bltlab-*.whl")
    sdist, = dist.glob("bltlab-*.tar.gz")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"{MODEL_DIR}/{f}" for f in MODEL} <= names
    assert not any("__pycache__" in n for n in names)
    top = sdist.name[:-len(".tar.gz")]
    with tarfile.open(sdist) as t:
        assert {f"{top}/{MODEL_DIR}/{f}" for f in MODEL} <= set(t.getnames())
    assert wheel.stat().st_size <= 40e6  # the bound on the shipped files, compressed or not

    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)],
        tmp_path)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = run([sys.executable, "-c", "import bltlab.checkpoint as c; print(c.__file__); print(c.SHIPPED)"],
                elsewhere, env).stdout.split()
    assert [Path(w).is_relative_to(site) for w in where] == [True, True], where  # not the checkout's bltlab
    r = run([sys.executable, "-m", "bltlab", "generate", "--prompt", "def add(a, b):", "--max-bytes", "6"],
            elsewhere, env)
    assert "[blt: 6 bytes" in r.stderr, r.stderr
