"""A plain (non-editable) install works from any directory: the shipped model (and the report its
model card quotes) is package data, the app is a module of the package with a console script.

The wheel and the sdist are built from a copy of the package's files (so no build/ or
*.egg-info lands in the checkout), with the venv's setuptools (a dev dependency: no download).
The wheel is installed into a bare folder that, put on PYTHONPATH, is found before the editable
install's finder; the command then runs from a directory that holds no checkout.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"config.json", "entropy.safetensors", "blt.safetensors", "report.json"}
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
    assert {f"{MODEL_DIR}/{f}" for f in MODEL} | {"bltlab/app.py"} <= names
    entry_points, = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "bltlab = bltlab.cli:main" in scripts and "bltlab-app = bltlab.cli:main_app" in scripts
    assert not any("__pycache__" in n for n in names)
    top = sdist.name[:-len(".tar.gz")]
    with tarfile.open(sdist) as t:
        assert {f"{top}/{MODEL_DIR}/{f}" for f in MODEL} <= set(t.getnames())
    assert wheel.stat().st_size <= 40e6  # the issue's bound on the shipped files, compressed or not

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

    # the app: built (not launched) from the installed package, its model card quoting the installed report
    card = ("import json, bltlab.app as a; demo = a.build_demo(device='cpu'); wb = demo.workbench; "
            "print(json.dumps([a.__file__, str(wb.model_dir), a.model_card(wb)]))")
    where, model_dir, text = json.loads(run([sys.executable, "-c", card], elsewhere, env).stdout.splitlines()[-1])
    assert Path(where).is_relative_to(site) and Path(model_dir).is_relative_to(site), (where, model_dir)
    report = json.loads((ROOT / "bltlab" / "checkpoints" / "small" / "report.json").read_text())
    tr = report["translation_fr"]
    assert "### Measured quality" in text and f"| chrF / BLEU, greedy EN→FR ({tr['pairs']} pairs) | " \
        f"{tr['chrf']:.1f} / {tr['bleu']:.1f} |" in text, text
    script, = (p for p in site.rglob("bltlab-app*") if p.parent.name.lower() in ("bin", "scripts"))
    r = run([str(script), "--help"], elsewhere, env)
    assert "GRADIO_SERVER_PORT" in r.stdout and "--device" in r.stdout, r.stdout
