import json
import subprocess
import sys

import pytest


def run(*args, ok=True):
    r = subprocess.run([sys.executable, "-m", "bltlab", *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_help_lists_commands_and_explains_flags():
    out = run("--help").stdout
    for cmd in ("data", "train", "eval", "generate", "report", "export"):
        assert cmd in out
    gen = run("generate", "--help").stdout
    for flag in ("--prompt", "--max-bytes", "--mode", "--stop", "--temperature", "--seed", "--json", "--model"):
        assert flag in gen


def test_data_stats():
    rows = json.loads(run("data", "--json").stdout)
    assert {r["source"] for r in rows} == {"code", "fr", "de"}
    assert all(r["bytes"] > 0 for r in rows)


def test_eval_any_file_including_binary(tiny_dir, tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(bytes(range(256)) * 3)
    out = json.loads(run("eval", "--text", str(f), "--json", "--model", str(tiny_dir)).stdout)
    assert out["bytes"] == 768 and 0 < out["bits_per_byte"] < 16


def test_generate_json(tiny_dir):
    out = json.loads(run("generate", "--prompt", "def ", "--max-bytes", "8", "--json", "--model", str(tiny_dir)).stdout)
    assert out["mode"] == "blt" and len(bytes.fromhex(out["output_hex"])) <= 8
    assert out["counters"]["n_dec"] >= 1


def test_generate_in_order(tiny_dir):
    """In order with an exact first byte by default: every denoising pass fills a run from slot 1;
    --no-in-order --no-exact-first (the paper's rule) lets the rule fill slot 0 itself."""
    def blocks(*flags):
        out = json.loads(run("generate", "--prompt", "def ", "--mode", "blt-d4", "--alpha", "0.3", *flags,
                             "--max-bytes", "12", "--json", "--model", str(tiny_dir)).stdout)
        return [e for e in out["trace"] if e["type"] == "block"]
    ordered = blocks()
    assert ordered and all(step["unmasked"][0] == 1 + sum(len(s["unmasked"]) for s in e["steps"][:i])
                           for e in ordered for i, step in enumerate(e["steps"]))
    assert any(0 in step["unmasked"] for e in blocks("--no-in-order", "--no-exact-first") for step in e["steps"])


@pytest.mark.parametrize("args,msg", [
    (["eval", "--text", "/nonexistent/file"], "no such file"),
    (["generate", "--prompt", "x", "--max-bytes", "0"], "positive"),
    (["generate", "--prompt", "x", "--mode", "warp"], "invalid choice"),
    (["generate", "--prompt", "x", "--temperature", "11"], "temperature"),
    (["generate", "--prompt", "x", "--model", "/nonexistent"], "not found"),
])
def test_clear_errors_without_tracebacks(tiny_dir, args, msg):
    if "--model" not in args:
        args = args + ["--model", str(tiny_dir)]
    r = run(*args, ok=False)
    assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr


def test_empty_file_is_a_clear_error(tiny_dir, tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    r = run("eval", "--text", str(tmp_path / "e.txt"), "--model", str(tiny_dir), ok=False)
    assert "empty" in r.stderr and "Traceback" not in r.stderr


def test_bench_json_has_every_documented_key(tiny_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "EN: Hi\\nFR: ", "reference": "Salut", "stop": "\\n"}\n{"prompt": "def f("}\n')
    run("bench", "--prompts", str(prompts), "--modes", "blt-s8,blt-d4", "--max-bytes", "6",
        "--model", str(tiny_dir), "--json", str(tmp_path / "b.json"))
    res = json.loads((tmp_path / "b.json").read_text())
    assert list(res["modes"]) == ["blt", "blt-s8", "blt-d4"]
    keys = {"prompts", "bytes", "n_dec", "n_enc", "n_ent", "bandwidth_gb_paper", "bandwidth_gb_full", "rel_bandwidth",
            "rel_bandwidth_3b", "rel_bandwidth_nocache_3b", "identical_to_blt", "gen_bpb", "seconds", "bytes_per_s"}
    for mode, r in res["modes"].items():
        assert keys <= set(r), mode
    assert res["modes"]["blt"]["rel_bandwidth"] == 1.0
    assert res["modes"]["blt-s8"]["identical_to_blt"] == 1.0
    assert "chrf" not in res["modes"]["blt"]  # one prompt has no reference: no corpus score


def test_bench_bad_prompt_file(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = run("bench", "--prompts", str(bad), "--model", str(tiny_dir), ok=False)
    assert "not JSON" in r.stderr and "Traceback" not in r.stderr


# ---- --device: auto (CUDA when present, else CPU) is every command's default ------------------
def _subcommands() -> dict:
    import argparse

    from bltlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_device_flag_defaults_to_auto():
    with_device = {name: p for name, p in _subcommands().items()
                   if any("--device" in a.option_strings for a in p._actions)}
    assert {"app", "generate", "eval", "bench", "speed", "report", "train", "bench-kernels"} <= set(with_device)
    for name, p in with_device.items():
        action = next(a for a in p._actions if "--device" in a.option_strings)
        assert action.default == "auto" and "auto" in action.help, name


def test_auto_resolves_to_cuda_when_present_else_cpu(monkeypatch):
    import torch

    from bltlab.checkpoint import resolve_device

    assert resolve_device("auto") == resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="no CUDA GPU is available .use --device cpu, or --device auto"):
            resolve_device(name)
    for name in ("mps", "gpu", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(name)


def _device_commands(tiny_dir, tmp_path) -> dict[str, list[str]]:
    """One call of each command that takes --device, arguments apart from --device."""
    prompts, text = tmp_path / "p.jsonl", tmp_path / "t.txt"
    prompts.write_text('{"prompt": "def f("}\n')
    text.write_text("x")
    model = ["--model", str(tiny_dir)]
    return {"generate": ["generate", "--prompt", "x", *model], "eval": ["eval", "--text", str(text), *model],
            "bench": ["bench", "--prompts", str(prompts), *model],
            "speed": ["speed", "--prompts", str(prompts), *model],
            "report": ["report", *model], "train": ["train", "entropy", "--out", str(tmp_path / "run")],
            "bench-kernels": ["bench-kernels", "--tiny"], "app": ["app", *model],
            "diagnose": ["diagnose", *model, "--skip-modes", "--windows", "1", "--json", str(tmp_path / "d.json")]}


def test_unknown_or_missing_devices_get_one_clear_error(tiny_dir, tmp_path, monkeypatch):
    """Every command: an unknown device, and a GPU where none is (simulated), stop before any work."""
    import torch

    from bltlab import cli

    commands = _device_commands(tiny_dir, tmp_path)
    assert set(commands) >= {n for n, p in _subcommands().items() if any("--device" in a.option_strings
                                                                         for a in p._actions)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, args in commands.items():
        for device, msg in (("mps", "unknown device 'mps'"), ("cuda", "no CUDA GPU is available")):
            with pytest.raises(SystemExit) as e:
                cli.main([*args, "--device", device])
            assert str(e.value.code).startswith("error: --device: ") and msg in str(e.value.code), (name, device)
    assert not (tmp_path / "run").exists()  # train stopped before writing anything


def test_a_missing_gpu_is_one_line_not_a_traceback(tiny_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for the subprocess, whatever this machine has
    r = run("generate", "--prompt", "x", "--model", str(tiny_dir), "--device", "cuda", ok=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --device: device 'cuda' was asked for but no CUDA GPU is available"), r.stderr
