import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bltlab.checkpoint import load_model
from bltlab.config import get_config
from bltlab.data import load_documents, validation_windows
from bltlab.entropy import EntropyModel
from bltlab.model import BLT
from bltlab.tokens import MASK, is_byte
from bltlab import train as train_mod
from bltlab.train import (TrainConfig, blt_loss, diffusion_loss, evaluate_bpb, lr_at, next_byte_loss, sample_blocks,
                          train)

TINY = dict(preset="tiny", batch_size=8, seq_len=128, eval_windows=4, mix={"de": 1.0}, threads=2)


def test_entropy_then_hybrid_blt_lower_the_loss_and_resume(tmp_path):
    out = str(tmp_path / "m")
    val = validation_windows(load_documents("de", "val"), 128, 4)
    torch.manual_seed(0)
    before = evaluate_bpb(EntropyModel(get_config("tiny").entropy), val, entropy_only=True)
    m = train(TrainConfig(what="entropy", steps=40, lr=3e-3, warmup=5, eval_every=40, out=out, **TINY))
    trained, _ = load_model(out, need_blt=False)
    after = evaluate_bpb(trained.entropy, val, entropy_only=True)
    assert after < before - 0.5, (before, after)
    assert 0 < trained.cfg.patch.threshold < 6  # calibrated, not the default

    torch.manual_seed(0)
    fresh = BLT(trained.cfg)
    fresh.entropy.load_state_dict(trained.entropy.state_dict())
    before = evaluate_bpb(fresh, val)
    m = train(TrainConfig(what="blt", steps=30, lr=3e-3, warmup=5, eval_every=30, out=out, entropy_dir=out, **TINY))
    assert "train_diff" in m  # the hybrid objective ran
    model, meta = load_model(out)
    after = evaluate_bpb(model, val)
    assert after < before - 0.5, (before, after)
    assert meta["metrics"]["step"] == 30
    # the entropy model was frozen during BLT training
    torch.testing.assert_close(model.entropy.state_dict(), trained.entropy.state_dict())

    m = train(TrainConfig(what="blt", steps=35, lr=3e-3, warmup=5, eval_every=5, out=out, resume=True, **TINY))
    assert m["step"] == 35
    assert json.loads((tmp_path / "m" / "state.json").read_text())["step"] == 35


def test_lr_schedule_warms_up_and_decays():
    tc = TrainConfig(steps=100, warmup=10, lr=1.0)
    assert lr_at(0, tc) < lr_at(9, tc) == 1.0
    assert abs(lr_at(99, tc) - 0.1) < 0.01
    timed = TrainConfig(steps=10_000, warmup=10, lr=1.0, minutes=1.0)
    assert abs(lr_at(20, timed, elapsed=60.0) - 0.1) < 1e-9  # time ran out: end of schedule


def test_sample_blocks_start_at_patch_starts():
    ids = torch.randint(4, 260, (3, 64))
    ids[:, 0] = 1
    ids[2, 40:] = 0  # padding
    starts = torch.zeros(3, 64, dtype=torch.bool)
    starts[:, [0, 1, 5, 9, 20, 30, 45, 60]] = True
    g = torch.Generator().manual_seed(0)
    bst, noisy, clean, masked, t = sample_blocks(ids, starts, 4, 6, g)
    for b in range(3):
        for j, s in enumerate(bst[b].tolist()):
            if s < 0:
                assert not masked[b, j].any()
                continue
            assert starts[b, s] and s >= 1 and is_byte(ids[b, s:s + 4]).all()
            assert torch.equal(clean[b, j], ids[b, s:s + 4])
            assert torch.equal(noisy[b, j][~masked[b, j]], clean[b, j][~masked[b, j]])
            assert (noisy[b, j][masked[b, j]] == MASK).all()
    assert (bst[2] < 40 - 3).all()  # blocks never reach the padding
    assert ((t > 0) & (t <= 1)).all()


def test_torchrun_ddp_two_cpu_processes(tiny_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bltlab", "train", "blt", "--preset", "tiny", "--steps", "3", "--batch-size", "2",
           "--seq-len", "64", "--eval-every", "3", "--device", "cpu", "--entropy-dir", str(tiny_dir),
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    model, meta = load_model(out)
    assert meta["metrics"]["step"] == 3
    assert meta["bytes_seen"] == 3 * 2 * 64 * 2  # both processes counted


# ---- the masked-block recipe knobs (issue 22, deliverable 3): mask_rate, t_weight_cap, diffusion_weight ----
def _rows(n: int = 8, T: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows of random bytes with patch starts every 4 bytes."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 260, (n, T), generator=g)
    ids[:, 0] = 1
    starts = torch.zeros(n, T, dtype=torch.bool)
    starts[:, ::4] = True
    return ids, starts


def test_default_recipe_samples_and_weighs_exactly_as_before():
    """Defaults = the shipped recipe, bit for bit: t = U(0, 1) clamped at 1e-3 from the same generator
    draws, and the masked CE weighted by 1/t, written out here independently of bltlab.train."""
    ids, starts = _rows()
    bst, noisy, clean, masked, t = sample_blocks(ids, starts, 4, 6, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    torch.rand(ids.shape, generator=g)  # the block starts' scores
    t_ref = torch.rand(bst.shape, generator=g).clamp(min=1e-3)
    masked_ref = (torch.rand(clean.shape, generator=g) < t_ref[..., None]) & (bst >= 0)[..., None]
    assert torch.equal(t, t_ref) and torch.equal(masked, masked_ref)
    assert TrainConfig().mask_rate == (0.0, 1.0) and TrainConfig().t_weight_cap == 0.0
    assert TrainConfig().diffusion_weight == 1.0

    t = t.clone()
    t[0, 0] = 1e-3  # a tiny t: a weight of 1000 without a cap
    masked[0, 0] = True
    logits = torch.randn(*clean.shape, 260, generator=torch.Generator().manual_seed(3))
    ce = F.cross_entropy(logits.flatten(0, 2), clean.flatten(), reduction="none").view(clean.shape)
    valid = bst >= 0
    ref = (ce * masked.float() / t[..., None]).sum() / (valid.sum() * 4)
    assert torch.equal(diffusion_loss(logits, clean, masked, t, valid), ref)


def test_blt_loss_defaults_are_ce_plus_the_unweighted_diffusion_loss():
    torch.manual_seed(0)
    model = BLT(get_config("tiny"))
    ids = validation_windows(load_documents("de", "val"), 128, 2)
    loss, parts = blt_loss(model, model, ids, "hybrid", 4, torch.Generator().manual_seed(5))
    starts = model.patch(ids)
    bst, noisy, clean, masked, t = sample_blocks(ids, starts, 4, 128 // 8, torch.Generator().manual_seed(5))
    lc, ln = model(ids, starts, bst, noisy)
    ce = next_byte_loss(lc, ids)
    per = F.cross_entropy(ln.flatten(0, 2).float(), clean.flatten(), reduction="none").view(clean.shape)
    dl = (per * masked.float() / t[..., None]).sum() / ((bst >= 0).sum() * 4)
    assert torch.equal(loss, ce + dl) and torch.equal(parts["diff"], dl)

    off, parts0 = blt_loss(model, model, ids, "hybrid", 4, torch.Generator().manual_seed(5), diffusion_weight=0.0)
    assert torch.equal(off, parts0["ce"]) and parts0["diff"] > 0  # weight 0: loss == ce (the blocks still scored)
    two, parts2 = blt_loss(model, model, ids, "hybrid", 4, torch.Generator().manual_seed(5), diffusion_weight=2.0)
    torch.testing.assert_close(two, ce + 2 * dl)
    assert two > loss


def test_clipped_mask_rate_draws_every_t_from_beta_to_omega():
    ids, starts = _rows(64)
    _, _, _, _, t0 = sample_blocks(ids, starts, 4, 6, torch.Generator().manual_seed(2))
    assert (t0 < 0.3).any() and (t0 > 0.8).any()  # U(0, 1) leaves the clip range: the check below can fail
    _, noisy, _, masked, t = sample_blocks(ids, starts, 4, 6, torch.Generator().manual_seed(2), mask_rate=(0.3, 0.8))
    assert ((t >= 0.3) & (t <= 0.8)).all()
    assert t.min() < 0.35 and t.max() > 0.75  # spread over the range, not pinned to one end
    g = torch.Generator().manual_seed(2)
    torch.rand(ids.shape, generator=g)  # the block starts' scores
    torch.testing.assert_close(t, 0.3 + 0.5 * torch.rand(t.shape, generator=g), atol=1e-6, rtol=0)  # same draws
    assert abs(float(masked.float().mean()) - 0.55) < 0.05  # a byte is masked with probability E[t]
    assert (noisy[masked] == MASK).all()


def test_t_weight_cap_bounds_the_weight_of_small_t():
    clean = torch.tensor([[[10, 20, 30]]]).expand(1, 3, 3).contiguous()  # 3 blocks of 3 bytes, all masked
    masked = torch.ones(1, 3, 3, dtype=torch.bool)
    t = torch.tensor([[1e-3, 0.05, 0.5]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    logits = torch.zeros(1, 3, 3, 260)  # uniform: every slot's CE is log 260
    per = math.log(260)
    uncapped = diffusion_loss(logits, clean, masked, t, valid)
    capped = diffusion_loss(logits, clean, masked, t, valid, t_weight_cap=5.0)
    assert abs(float(uncapped) - per * 3 * (1000 + 20 + 2) / 9) < 1e-2
    assert abs(float(capped) - per * 3 * (5 + 5 + 2) / 9) < 1e-4  # min(1/t, 5)
    assert float(diffusion_loss(logits, clean, masked, t, valid, t_weight_cap=100.0)) < float(uncapped)


@pytest.mark.parametrize("knobs", [
    {"mask_rate": (0.8, 0.3)}, {"mask_rate": (0.5, 0.5)}, {"mask_rate": (-0.1, 0.5)}, {"mask_rate": (0.2, 1.5)},
    {"mask_rate": (float("nan"), 0.5)}, {"mask_rate": (0.3,)}, {"mask_rate": "ab"},
    {"t_weight_cap": -1.0}, {"t_weight_cap": float("nan")}, {"t_weight_cap": float("inf")},
    {"diffusion_weight": -1.0}, {"diffusion_weight": float("nan")},
])
def test_bad_recipe_knobs_raise_one_clear_error(knobs):
    name = next(iter(knobs))
    with pytest.raises(ValueError, match=name):
        TrainConfig(**knobs)


def test_the_library_functions_check_their_knobs_too():
    ids, starts = _rows(2)
    with pytest.raises(ValueError, match="0 <= BETA < OMEGA <= 1"):
        sample_blocks(ids, starts, 4, 2, torch.Generator(), mask_rate=(0.9, 0.1))
    z = torch.zeros(1, 1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="t_weight_cap"):
        diffusion_loss(torch.zeros(1, 1, 2, 260), z, z.bool(), torch.ones(1, 1), torch.ones(1, 1).bool(), -2.0)
    model = BLT(get_config("tiny"))
    with pytest.raises(ValueError, match="diffusion_weight"):
        blt_loss(model, model, ids, "hybrid", 4, torch.Generator(), diffusion_weight=-1.0)


def test_train_passes_the_knobs_to_the_loss_and_records_them(tiny_dir, tmp_path, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(args[6:])
        return blt_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "blt_loss", spy)
    out = tmp_path / "knobs"
    train(TrainConfig(what="blt", preset="tiny", steps=2, batch_size=2, seq_len=64, eval_every=2, eval_windows=1,
                      mix={"de": 1.0}, entropy_dir=str(tiny_dir), out=str(out), device="cpu", threads=1,
                      mask_rate=(0.3, 0.8), t_weight_cap=5, diffusion_weight=2))
    assert seen == [((0.3, 0.8), 5.0, 2.0)] * 2
    _, meta = load_model(out)
    assert meta["trained"]["mask_rate"] == [0.3, 0.8]
    assert meta["trained"]["t_weight_cap"] == 5.0 and meta["trained"]["diffusion_weight"] == 2.0


def test_train_cli_flags_parse_into_the_train_config(tmp_path):
    from bltlab import cli

    parser = cli.build_parser()
    default = cli.train_config(parser.parse_args(["train", "blt"]))
    assert (default.mask_rate, default.t_weight_cap, default.diffusion_weight) == (
        TrainConfig().mask_rate, TrainConfig().t_weight_cap, TrainConfig().diffusion_weight)
    tc = cli.train_config(parser.parse_args(["train", "blt", "--mask-rate", "0.3", "0.8", "--t-weight-cap", "5",
                                             "--diffusion-weight", "2"]))
    assert (tc.mask_rate, tc.t_weight_cap, tc.diffusion_weight) == ((0.3, 0.8), 5.0, 2.0)
    sub = next(a for a in parser._actions if a.dest == "cmd").choices["train"]
    helps = {o: a.help for a in sub._actions for o in a.option_strings}
    for flag in ("--mask-rate", "--t-weight-cap", "--diffusion-weight"):
        assert helps[flag] and "hybrid" in helps[flag], flag
    for bad, msg in ((["--mask-rate", "0.8", "0.3"], "mask_rate"), (["--t-weight-cap", "-1"], "t_weight_cap"),
                     (["--diffusion-weight", "nan"], "diffusion_weight")):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "blt", "--device", "cpu", "--out", str(tmp_path / "run"), *bad])
        assert str(e.value.code).startswith("error: ") and msg in str(e.value.code), bad
    assert not (tmp_path / "run").exists()  # refused before any work
