"""Without Triton (macOS and Windows: it has Linux wheels only) everything a student runs works.

One subprocess, whose `sitecustomize` sets sys.modules["triton"] = None before anything else runs
(so `import triton` fails there, in the CLI processes it starts and in the notebook's kernel
alike), runs `drive` below: the command line, every decoding mode on the shipped model, one
training step of each model, the app's build (not launched) and notebook 00 (executed in memory;
the stored file is left alone). It prints what ran as its last line, in JSON.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 'import sys\nsys.modules["triton"] = None  # `import triton` raises ImportError, as without the wheel\n'


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bltlab", *args], capture_output=True, text=True, timeout=300)


def drive(tmp: str) -> None:
    """What a student runs, in order; each item is appended to `ran` once it has worked."""
    import nbclient
    import nbformat

    import bltlab.kernels as kernels
    from bltlab.checkpoint import load_model
    from bltlab.decode import MODES, generate
    from bltlab.train import TrainConfig, train

    ran, seconds, t0 = [], [], time.perf_counter()

    def done(item: str) -> None:
        nonlocal t0
        ran.append(item)
        seconds.append(round(time.perf_counter() - t0, 1))
        t0 = time.perf_counter()

    r = _cli("generate", "--prompt", "def add(a, b):", "--max-bytes", "6")
    assert r.returncode == 0 and "[blt: 6 bytes" in r.stderr, r.stderr[-2000:]
    done("cli generate")
    text = Path(tmp) / "some.txt"
    text.write_text("EN: Open file\nFR: Ouvrir le fichier\n")
    r = _cli("eval", "--text", str(text), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["bits_per_byte"] > 0, r.stderr[-2000:]
    done("cli eval")
    r = _cli("bench-kernels", "--device", "cpu", "--tiny")  # the one command that needs Triton: a clear refusal
    assert r.returncode == 1 and "Triton is not installed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    done("cli bench-kernels refused")

    model, _ = load_model()
    assert not kernels.has_triton() and kernels.get_backend() == "auto"
    for mode in MODES:
        g = generate(model, "def add(a, b):", mode, max_bytes=6)
        assert 0 < len(g.output) <= 6, (mode, g.output)
        done(f"mode {mode}")
    try:
        with kernels.backend("triton"):
            generate(model, "x", "blt", max_bytes=2)
        raise AssertionError("backend 'triton' ran without Triton")
    except RuntimeError as e:
        assert "Triton is not installed" in str(e), e
    done("backend triton refused")

    tiny = dict(preset="tiny", steps=1, warmup=1, batch_size=2, seq_len=64, eval_every=1, eval_windows=1,
                mix={"de": 1.0}, threads=2, device="cpu", out=str(Path(tmp) / "m"))
    train(TrainConfig(what="entropy", **tiny))
    metrics = train(TrainConfig(what="blt", objective="hybrid", entropy_dir=tiny["out"], **tiny))
    assert metrics["step"] == 1 and "train_diff" in metrics, metrics
    done("train step entropy + hybrid blt")

    import gradio as gr

    from bltlab.app import build_demo

    assert isinstance(build_demo(), gr.Blocks)  # the shipped model, --device auto
    done("app build")

    nb = nbformat.read(ROOT / "notebooks" / "00_bytes.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel triton:', sys.modules.get('triton'))"))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    assert nb.cells[-1].outputs[0]["text"].strip() == "kernel triton: None", nb.cells[-1].outputs
    done("notebook 00_bytes")

    print(json.dumps({"ran": ran, "seconds": seconds, "triton": repr(sys.modules.get("triton"))}))


def test_everything_runs_without_triton(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "BLTLAB_KERNELS")}  # a laptop's
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), str(Path(__file__).parent)])
    code = "import sys, test_no_triton; test_no_triton.drive(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print("\n".join(f"{s:6.1f} s  {item}" for item, s in zip(out["ran"], out["seconds"])))  # pytest -s
    from bltlab.decode import MODES

    assert out["ran"] == ["cli generate", "cli eval", "cli bench-kernels refused", *[f"mode {m}" for m in MODES],
                          "backend triton refused", "train step entropy + hybrid blt", "app build",
                          "notebook 00_bytes"]
    assert out["triton"] == "None"  # never imported, not even by torch or gradio
