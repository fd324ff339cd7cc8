"""The speed benchmark's harness (structure and bookkeeping only: nothing here is timed)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bltlab import speed
from bltlab.checkpoint import load_model
from bltlab.cli import main
from bltlab.cost import cost_stats, new_counters
from bltlab.speed import format_table, hf_blt_config, run_speed, static_steps

PROMPTS = [b"EN: Save\nFR:", b"def f(x):", b"import os"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir)[0]


def test_rows_roofline_and_hf_baselines(tiny):
    res = run_speed(tiny, PROMPTS, ["blt", "blt-s8", "blt-d4"], max_bytes=5, batch=2, hf=True, hf_bytes=3,
                    progress=False)
    json.dumps(res)  # JSON-serialisable as written by --json
    got = [(r["mode"], r["batch"]) for r in res["rows"]]
    assert got == [("blt", 1), ("blt-s8", 1), ("blt-d4", 1), ("blt", 2), ("blt-s8", 2), ("blt-d4", 2)]
    for r in res["rows"]:
        assert 0 < r["bytes"] <= 5 * 3 and r["bytes_per_s"] > 0
        assert r["counters"]["n_dec"] >= 1 and r["read_bytes_per_byte"] > 0
        assert r["roofline_bytes_per_s"] == pytest.approx(res["copy_GBps"] * 1e9 / r["read_bytes_per_byte"])
        assert r["x_hf_blt"] > 0 and r["x_hf_llama"] > 0
    batch1, batch2 = res["rows"][0], res["rows"][3]
    assert batch2["counters"]["n_dec"] < batch1["counters"]["n_dec"]  # one batched pass serves both rows
    # a batch counts its passes' weights once (the local encoder's: one per pushed pass) and every
    # row's own KV-cache and hash reads: those of its prompt alone
    assert batch2["counters"]["n_loc"] == batch2["counters"]["n_ent"] >= 1
    assert all(batch2["counters"][k] == batch1["counters"][k] > 0 for k in ("kv_read", "hash_rows"))
    assert res["hf"]["hf_blt"]["use_cache"] is False and res["hf"]["hf_blt"]["params"] > 0
    assert res["threads"] == torch.get_num_threads()  # no --threads: PyTorch's default, recorded
    assert "× HF BLT" in format_table(res)


def test_compiled_jobs_warm_up_on_the_whole_job(tiny, monkeypatch):
    """Eager ops warm up on the first prompt; compiled steps on every prompt, whose new pass lengths each
    compile a variant that would otherwise be timed."""
    calls = []

    def fake_time_mode(model, group, mode, max_bytes, batch, device, compiled=False):
        calls.append((len(group), compiled))
        return {"mode": mode, "steps": speed.steps_kind(device, compiled), "batch": batch, "prompts": len(group),
                "bytes": 1, "seconds": 1.0, "bytes_per_s": 1.0, "counters": new_counters() | cost_stats()}

    monkeypatch.setattr(speed, "time_mode", fake_time_mode)
    monkeypatch.setattr(speed, "static_steps", lambda *a, **k: [])
    run_speed(tiny, PROMPTS, ["blt"], max_bytes=3, batch=1, compiled=True, progress=False)
    assert calls == [(1, False), (3, False), (3, True), (3, True)]  # (warm-up, timed) per variant


def test_every_mode_at_both_batch_sizes(tiny):
    modes = ["blt", "blt-d4", "blt-s8"]
    res = run_speed(tiny, PROMPTS, modes, max_bytes=3, batch=2, progress=False)
    assert [(r["steps"], r["mode"], r["batch"]) for r in res["rows"]] == [
        ("eager ops", m, b) for b in (1, 2) for m in modes]
    for r in res["rows"]:  # a batch counts its shared passes once: fewer than its rows alone
        alone = next(x for x in res["rows"] if x["mode"] == r["mode"] and x["batch"] == 1)
        assert r["counters"]["n_dec"] <= alone["counters"]["n_dec"]
    assert [r["steps"] for r in res["static_steps"]] == ["eager ops"] * 4


def test_static_steps_rows(tiny):
    rows = static_steps(tiny, [1, 2], b"abc", steps=3)  # eager steps on a CPU, graph replays on a GPU
    assert [(r["steps"], r["batch"], r["with_global"]) for r in rows] == [
        ("eager ops", 1, True), ("eager ops", 1, False), ("eager ops", 2, True), ("eager ops", 2, False)]
    assert all(r["us_per_step"] > 0 and r["bytes_per_s"] == pytest.approx(r["batch"] * 1e6 / r["us_per_step"])
               for r in rows)
    table = format_table({"model": "tiny", "device": "cpu", "dtype": "float32", "copy_GBps": 1.0, "rows": [],
                          "static_steps": rows})
    assert "| eager ops | 2 | no |" in table


def test_hf_config_has_our_shapes(tiny):
    d = hf_blt_config(tiny.cfg)
    assert d["encoder_config"]["hidden_size"] == tiny.cfg.d_local
    assert d["global_config"]["num_hidden_layers"] == tiny.cfg.n_global_layers
    assert d["encoder_hash_byte_group_vocab"] == tiny.cfg.hash_vocab


def test_cli_speed(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.decode()}) + "\n" for p in PROMPTS))
    threads = torch.get_num_threads()
    main(["speed", "--model", str(tiny_dir), "--prompts", str(prompts), "--modes", "blt", "--max-bytes", "3",
          "--batch", "1", "--threads", "1", "--json", str(tmp_path / "s.json")])
    res = json.loads((tmp_path / "s.json").read_text())
    assert [r["mode"] for r in res["rows"]] == ["blt"] and "hf" not in res
    assert res["threads"] == 1 and torch.get_num_threads() == threads  # the run's count, restored after it
    out = capsys.readouterr().out
    assert "| blt | eager ops | 1 |" in out and "1 CPU threads" in out
    with pytest.raises(SystemExit, match="batch"):
        main(["speed", "--model", str(tiny_dir), "--prompts", str(prompts), "--batch", "0"])
    with pytest.raises(SystemExit, match="--threads must be >= 0"):
        main(["speed", "--model", str(tiny_dir), "--prompts", str(prompts), "--threads", "-1"])


def test_profile_static_script_on_cpu(tmp_path):
    """benchmarks/profile_static.py (the GPU profile of each static step kind) runs its CPU check:
    every step kind profiled, the busiest operations named, the JSON written; a CUDA request
    without a GPU is refused with a message."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = tmp_path / "profile.json"
    r = subprocess.run([sys.executable, "benchmarks/profile_static.py", "--device", "cpu", "--replays", "2", "--json",
                        str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [row["step"] for row in res["rows"]] == ["advance(1), global step", "advance(1)", "advance(8)",
                                                    "advance(8), closing", "draft", "close", "begin block",
                                                    "denoise(8)", "advance(8), closing, first pass of a block of 8"]
    for row in res["rows"]:
        assert row["wall_us"] > 0 and 0 < row["device_us"] and row["top"][0]["name"].startswith("aten::")
    assert "| denoise(8) |" in r.stdout
    bad = subprocess.run([sys.executable, "benchmarks/profile_static.py", "--device", "cpu", "--replays", "1000"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--replays must be between 1 and" in bad.stderr
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, "benchmarks/profile_static.py"], cwd=root, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode != 0 and "no CUDA device here" in r.stderr
