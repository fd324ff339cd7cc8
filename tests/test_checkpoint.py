import json

import pytest
import torch

from bltlab.checkpoint import CheckpointError, load_model, save_model
from bltlab.tokens import encode_tensor


def test_round_trip_gives_identical_outputs(tiny_dir, tmp_path):
    m, meta = load_model(tiny_dir)
    assert meta["note"].startswith("random")
    ids, _ = encode_tensor(["def f(x):\n    return x"])
    ref = m(ids, m.patch(ids))
    save_model(m, tmp_path / "copy", meta)
    m2, _ = load_model(tmp_path / "copy")
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    torch.testing.assert_close(m2(ids, m2.patch(ids)), ref, atol=0, rtol=0)


def test_bf16_export_loads_as_fp32(tiny_dir, tmp_path):
    m, meta = load_model(tiny_dir)
    save_model(m, tmp_path / "half", meta, dtype=torch.bfloat16)
    m2, _ = load_model(tmp_path / "half")
    p = next(m2.parameters())
    assert p.dtype == torch.float32
    assert (tmp_path / "half" / "blt.safetensors").stat().st_size < (tiny_dir / "blt.safetensors").stat().st_size


def test_missing_directory_and_files(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "empty")
    d = tmp_path / "nofile"
    d.mkdir()
    (d / "config.json").write_text((tiny_dir / "config.json").read_text())
    (d / "entropy.safetensors").write_bytes((tiny_dir / "entropy.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="blt.safetensors"):
        load_model(d)


def test_truncated_file_is_reported(tiny_dir, tmp_path):
    d = tmp_path / "trunc"
    d.mkdir()
    for f in ("config.json", "entropy.safetensors"):
        (d / f).write_bytes((tiny_dir / f).read_bytes())
    data = (tiny_dir / "blt.safetensors").read_bytes()
    (d / "blt.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(d)


def test_mismatched_config_is_reported(tiny_dir, tmp_path):
    d = tmp_path / "mismatch"
    d.mkdir()
    for f in ("entropy.safetensors", "blt.safetensors"):
        (d / f).write_bytes((tiny_dir / f).read_bytes())
    raw = json.loads((tiny_dir / "config.json").read_text())
    raw["config"]["hash_vocab"] = 100
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(d)
    raw["config"]["n_dec_layers"] = 3
    raw["config"]["hash_vocab"] = 64
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(d)
    raw["config"]["bogus"] = 1
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="bogus"):
        load_model(d)


def test_no_pickle_anywhere():
    from pathlib import Path

    src = "".join(p.read_text() for p in (Path(__file__).parent.parent / "bltlab").rglob("*.py"))
    assert "torch.load(" not in src and "import pickle" not in src
