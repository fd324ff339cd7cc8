"""The notebook series (notebooks/NN_*.ipynb): what is stored is current, and it re-runs to the same outputs.

Two kinds of test per notebook:

* static (fast, in-process): the stored outputs come from one clean top-to-bottom run (code cells numbered
  1..n), carry no error, no stderr and no traceback, and the checkpoint stamp in the notebook's metadata
  (metadata["bltlab"]["weights_sha256"], written by notebooks/stamp.py right after `make notebooks`
  re-executes the series) is the sha256 of the shipped weight files as they are now, so a retrained
  checkpoint makes every notebook stale until it is re-executed; plus the series' own rules (imports bltlab,
  calls bltlab.lab.setup() first, an ipywidgets control, every figure stored with a PNG beside its plotly JSON,
  "Try this" exercises, no pip);
* nbval (slow, one subprocess per notebook): strict `pytest --nbval` re-executes the notebook in the current
  environment and compares every output with the stored one, after notebooks/nbval_sanitize.cfg.

A subprocess keeps nbval's kernel and plugin options out of the main test session (whose addopts and
conftest stay as they are) and gives one test, with its own duration, per notebook.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bltlab.checkpoint import SHIPPED

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
SANITIZE = NB_DIR / "nbval_sanitize.cfg"
SERIES = ["00_bytes", "01_entropy_patching", "02_blt_model", "03_training", "04_block_diffusion",
          "05_self_speculation", "06_dv_and_hybrid", "07_bandwidth", "08_triton_kernels", "09_decoding_state",
          "10_one_generation"]
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
WEIGHTS = ("blt.safetensors", "entropy.safetensors")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _weights_sha256() -> dict[str, str]:
    return {name: hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() for name in WEIGHTS}


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        t = output["text"]
    elif output["output_type"] == "error":
        t = "\n".join(output.get("traceback", []))
    else:
        t = output.get("data", {}).get("text/plain", "")
    return "".join(t) if isinstance(t, list) else t


def test_series_is_complete():
    names = [p.stem for p in NOTEBOOKS]
    missing = [n for n in SERIES if n not in names]
    unknown = [n for n in names if n not in SERIES]
    assert not missing and not unknown, f"missing {missing}, unexpected {unknown}"
    assert SANITIZE.is_file()
    index = (NB_DIR / "README.md").read_text(encoding="utf-8")
    for n in names:
        assert f"{n}.ipynb" in index, f"notebooks/README.md does not list {n}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_are_current_and_clean(path):
    nb = _load(path)
    cells = _code_cells(nb)
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), \
        f"{path.name}: not one clean top-to-bottom run (execution counts {counts}); re-execute it"
    for i, cell in enumerate(cells, 1):
        for out in cell["outputs"]:
            assert out["output_type"] != "error", f"{path.name} cell {i}: stored error {out.get('ename')}"
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), \
                f"{path.name} cell {i}: stderr output: {_text(out)[:300]!r}"
            assert "Traceback (most recent call last)" not in _text(out), f"{path.name} cell {i}: traceback"
    stamped = nb["metadata"].get("bltlab", {}).get("weights_sha256")
    assert stamped, (f"{path.name} carries no checkpoint stamp (metadata bltlab.weights_sha256): "
                     "re-execute and stamp the series with `make notebooks`")
    now = _weights_sha256()
    stale = sorted(n for n in set(stamped) | set(now) if stamped.get(n) != now.get(n))
    assert not stale, (f"{path.name}: its stored outputs were made with other weights than the shipped checkpoint holds "
                       f"now ({', '.join(stale)}: stamped {[stamped.get(n) for n in stale]}, current "
                       f"{[now.get(n) for n in stale]}); re-execute and stamp the series with `make notebooks`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_follows_the_series_rules(path):
    nb = _load(path)
    source = "\n".join("".join(c["source"]) for c in _code_cells(nb))
    assert re.search(r"^\s*(from|import) bltlab", source, re.M), f"{path.name} does not import bltlab"
    assert "widgets." in source, f"{path.name} has no ipywidgets control"
    first = "".join(_code_cells(nb)[0]["source"])
    assert "from bltlab.lab import setup" in first and re.search(r"^setup\(\)", first, re.M), \
        f"{path.name}: the first cell calls bltlab.lab.setup() (seeds, threads, renderer)"
    assert not re.search(r"^\s*[!%]+\s*pip", source, re.M), f"{path.name} installs packages"
    assert not re.search(r"^class \w+\((nn|torch\.nn)\.Module\)", source, re.M), f"{path.name} defines model code"
    assert "assert " in source, f"{path.name} asserts none of its numbers"
    last = "".join(nb["cells"][-1]["source"])
    exercises = re.findall(r"^\d\. ", last, re.M)
    assert last.startswith("## Try this") and 2 <= len(exercises) <= 3, f"{path.name}: end with 2-3 exercises"
    for i, exercise in enumerate(re.split(r"^\d\. ", last, flags=re.M)[1:], 1):  # each with its help, collapsed
        for part in ("Hint", "Solution"):
            assert f"<details><summary>{part}</summary>" in exercise, f"{path.name}: exercise {i} has no {part.lower()}"
    plotly = [o for c in _code_cells(nb) for o in c["outputs"] if "application/vnd.plotly.v1+json" in o.get("data", {})]
    html_plotly = [o for c in _code_cells(nb) for o in c["outputs"] if "plotly" in str(o.get("data", {}).get("text/html", ""))]
    assert not html_plotly, f"{path.name} embeds plotly HTML (renderer UUIDs, plotly.js); use the mimetype renderer"
    assert plotly, f"{path.name} draws no plotly picture"
    no_png = [i for i, o in enumerate(plotly) if "image/png" not in o["data"]]
    assert not no_png, (f"{path.name}: figures {no_png} have no stored PNG (GitHub and nbviewer draw none without it); "
                        "re-execute with `make notebooks`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_reruns_identically_under_nbval(path):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE),
           "--nbval-cell-timeout", "300", str(path)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert r.returncode == 0, f"nbval failed for {path.name}:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
