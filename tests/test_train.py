import json
import os
import subprocess
import sys

import torch

from bltlab.checkpoint import load_model
from bltlab.config import get_config
from bltlab.data import load_documents, validation_windows
from bltlab.entropy import EntropyModel
from bltlab.model import BLT
from bltlab.tokens import MASK, is_byte
from bltlab.train import TrainConfig, evaluate_bpb, lr_at, sample_blocks, train

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
