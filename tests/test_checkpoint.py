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


def _config_error(tiny_dir, tmp_path, edit=None, text=None) -> str:
    """The CheckpointError of load_model on tiny_dir's weights with config.json edited (edit(raw)) or replaced."""
    d = tmp_path / "cfg"
    d.mkdir(exist_ok=True)
    for f in ("entropy.safetensors", "blt.safetensors"):
        (d / f).write_bytes((tiny_dir / f).read_bytes())
    if text is None:
        raw = json.loads((tiny_dir / "config.json").read_text())
        edit(raw)
        text = json.dumps(raw)
    (d / "config.json").write_text(text)
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)  # every message names the file
    return str(e.value)


def test_malformed_json_is_reported(tiny_dir, tmp_path):
    text = (tiny_dir / "config.json").read_text()
    msg = _config_error(tiny_dir, tmp_path, text=text.replace('"vocab": 260', '"vocab": 260,,'))
    assert "not valid JSON" in msg and "line" in msg
    assert "not a bltlab config" in _config_error(tiny_dir, tmp_path, text="[1, 2]")
    assert "not a bltlab config" in _config_error(tiny_dir, tmp_path, text='{"meta": {}}')


@pytest.mark.parametrize("edit, field, says", [
    (lambda c: c.update(d_local="32"), "d_local", 'must be an integer, got "32"'),  # was: "not all arguments converted"
    (lambda c: c.update(n_global_layers=2.5), "n_global_layers", "must be an integer, got 2.5"),
    (lambda c: c.update(dec_cross_all=1), "dec_cross_all", "must be true or false, got 1"),
    (lambda c: c.update(vocab=True), "vocab", "must be an integer, got true"),
    (lambda c: c.update(hash_sizes=[3, "4"]), "hash_sizes", "must be a list of integers"),
    (lambda c: c["entropy"].update(dim=None), "entropy.dim", "must be an integer, got null"),
    (lambda c: c["patch"].update(threshold="1.3"), "patch.threshold", "must be a number"),
    (lambda c: c.update(patch=4), "patch", "must be a JSON object"),
])
def test_wrong_types_name_the_field(tiny_dir, tmp_path, edit, field, says):
    msg = _config_error(tiny_dir, tmp_path, lambda raw: edit(raw["config"]))
    assert f"field {field} {says}" in msg, msg


def test_unknown_and_missing_fields_name_the_field(tiny_dir, tmp_path):
    msg = _config_error(tiny_dir, tmp_path, lambda raw: raw["config"]["patch"].update(treshold=1.0))
    assert "unknown field patch.treshold (did you mean patch.threshold?)" in msg, msg
    assert "unknown field bogus" in _config_error(tiny_dir, tmp_path, lambda raw: raw["config"].update(bogus=1))
    assert "missing field hash_vocab" in _config_error(tiny_dir, tmp_path, lambda raw: raw["config"].pop("hash_vocab"))
    msg = _config_error(tiny_dir, tmp_path, lambda raw: raw["config"]["entropy"].pop("n_heads"))
    assert "missing field entropy.n_heads" in msg, msg
    assert "field meta must be a JSON object" in _config_error(tiny_dir, tmp_path, lambda raw: raw.update(meta=[]))


def test_values_the_config_refuses_name_the_field(tiny_dir, tmp_path):
    msg = _config_error(tiny_dir, tmp_path, lambda raw: raw["config"].update(local_heads=0))
    assert "local_heads = 0" in msg and "d_local = 32" in msg, msg
    assert "unknown arch" in _config_error(tiny_dir, tmp_path, lambda raw: raw["config"].update(arch="gpt"))


def test_partial_dicts_still_make_configs():
    """from_dict without `complete` fills missing fields from the defaults (presets, notebooks),
    and still refuses a mistyped one."""
    from bltlab.config import BLTConfig

    assert BLTConfig.from_dict({"d_local": 64, "patch": {"rule": "space"}}).patch.rule == "space"
    with pytest.raises(ValueError, match="field d_local must be an integer"):
        BLTConfig.from_dict({"d_local": "64"})
