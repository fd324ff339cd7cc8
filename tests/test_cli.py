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


@pytest.mark.parametrize("args,msg", [
    (["eval", "--text", "/nonexistent/file"], "no such file"),
    (["generate", "--prompt", "x", "--max-bytes", "0"], "positive"),
    (["generate", "--prompt", "x", "--mode", "warp"], "invalid choice"),
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
