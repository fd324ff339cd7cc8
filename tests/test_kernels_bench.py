"""The kernel benchmark harness (bltlab/bench_kernels.py) and its CLI: well-formed output only.

Nothing here judges a timing: on CPU the kernels run in Triton's interpreter, where times say
nothing about kernel speed. The harness runs its tiny shapes once (about ten seconds).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from bltlab import kernels
from bltlab.bench_kernels import KERNELS

needs_kernels = pytest.mark.skipif(not (kernels.interpreting() or torch.cuda.is_available()),
                                   reason="no GPU and TRITON_INTERPRET is not 1")


@needs_kernels
def test_bench_kernels_cli_writes_wellformed_json(tmp_path):
    out = tmp_path / "kernels.json"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    env = {**os.environ, "TRITON_INTERPRET": "1" if dev == "cpu" else os.environ.get("TRITON_INTERPRET", "0")}
    r = subprocess.run([sys.executable, "-m", "bltlab", "bench-kernels", "--tiny", "--device", dev,
                        "--json", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert {"device", "torch", "triton", "dtype", "copy_GBps", "shapes", "rows"} <= set(res)
    assert res["copy_GBps"] > 0 and list(res["shapes"]) == ["tiny"]
    seen = {(row["kernel"], row["pass"]) for row in res["rows"]}
    assert {k for k, _ in seen} == set(KERNELS)
    assert ("attention", "fwd+bwd") in seen and ("entropy", "fwd+bwd") not in seen  # entropy: inference only
    for row in res["rows"]:
        assert row["triton_ms"] > 0 and row["reference_ms"] > 0 and row["speedup"] > 0
        # memory-bound kernels report bandwidth; attention (compute-bound) and the step ends (latency) none
        if row["pass"] == "fwd" and row["kernel"] not in ("attention", "step_end", "denoise_end"):
            assert row["bytes"] > 0 and row["GBps"] >= 0 and row["pct_of_copy"] >= 0
        elif row["pass"] == "fwd":
            assert "GBps" not in row
    assert "copy bandwidth" in r.stdout and "hash_embed" in r.stdout  # the table


@needs_kernels
def test_training_step_timed_on_both_backends():
    from bltlab.config import get_config
    from bltlab.bench_kernels import format_table, train_steps
    from bltlab.model import BLT
    from bltlab.tokens import BOS, OFFSET

    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = BLT(get_config("tiny")).to(dev)
    ids = torch.randint(OFFSET, 260, (2, 20), device=dev)
    ids[:, 0] = BOS
    before = model.enc_layers[0].ffn.w1.weight.clone()
    rows = train_steps(model, ids, steps=1, block_size=4)
    assert [r["backend"] for r in rows] == ["reference", "triton", "auto"] and all(r["ms"] > 0 for r in rows)
    for r in rows[1:]:
        assert r["speedup"] == pytest.approx(rows[0]["ms"] / r["ms"], rel=1e-3)
    assert not torch.equal(before, model.enc_layers[0].ffn.w1.weight)  # real optimizer steps ran
    assert not model.entropy.head.weight.requires_grad  # frozen, as in training
    res = {"device": "x", "torch": "t", "triton": "t", "dtype": "fp32", "copy_GBps": 1.0, "rows": [],
           "train": {"shape": "tiny", "steps": 1, "rows": rows}}
    assert "training step (tiny)" in format_table(res) and "auto" in format_table(res)


def test_bench_kernels_help_explains_every_flag():
    r = subprocess.run([sys.executable, "-m", "bltlab", "bench-kernels", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ("--device", "--shapes", "--tiny", "--dtype", "--repeats", "--kernels", "--train-steps", "--json"):
        assert flag in r.stdout


def test_bench_kernels_refuses_cpu_without_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-m", "bltlab", "bench-kernels", "--tiny", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0 and "TRITON_INTERPRET=1" in r.stderr


def test_graph_speedups_get_their_own_column():
    """On a GPU each forward row also carries the graph-replayed times (not capturable: None)."""
    from bltlab.bench_kernels import format_table

    row = {"kernel": "swiglu", "shapes": "small", "pass": "fwd", "triton_ms": 0.08, "reference_ms": 0.04,
           "speedup": 0.5}
    res = {"device": "x", "torch": "t", "triton": "t", "dtype": "bf16", "copy_GBps": 1.0,
           "rows": [row | {"graph_triton_ms": 0.004, "graph_reference_ms": 0.01, "graph_speedup": 2.5},
                    row | {"kernel": "attention", "graph_triton_ms": None, "graph_reference_ms": None,
                           "graph_speedup": None}, row | {"pass": "fwd+bwd"}]}
    lines = format_table(res).splitlines()
    assert "graph speedup" in lines[2]
    assert lines[4].split()[-1] == "2.50x" and lines[5].split()[-1] == "0.50x" and lines[6].split()[-1] == "0.50x"
    assert "graph speedup" not in format_table(res | {"rows": [row]})
