"""`python -m bltlab diagnose` (bltlab/diagnose.py): the masks each condition uses, the autoregressive
head against the model's plain forward, the teacher-forced rule and calibration on hand-made
inputs, and the JSON the command writes (tiny random model: fast, checks the plumbing, not the numbers)."""
import json

import pytest
import torch

from bltlab.config import get_config
from bltlab.data import load_documents, validation_windows
from bltlab.decode.common import allowed
from bltlab.diagnose import (Triangle, calibration, figure, format_report, label, mode_grid, modes_figure, run_diagnose,
                             run_rule, run_rule_fallback, score_blocks)
from bltlab.model import BLT
from bltlab.tokens import MASK


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return BLT(get_config("tiny")).eval()


@pytest.fixture(scope="module")
def scored(tiny):
    ids = validation_windows(load_documents("code", "val"), 96, 3)  # [3, 96]
    return ids, score_blocks(tiny, ids, 4, torch.Generator().manual_seed(0), rows=2, max_noisy=32)


@torch.no_grad()
def test_each_copy_reveals_its_prefix_and_nothing_else(tiny, scored):
    """Copy j of a block, scored among many copies and blocks in one forward (split by max_noisy), equals
    the training forward on that block alone with slots < j revealed and the rest masked; so slot 0
    with its (empty) prefix revealed is slot 0 with nothing revealed, and slot k of copy 0 is the first
    denoising pass's view."""
    ids, tri = scored
    assert len(tri.target) > 8 and tri.conf.shape[1:] == (4, 4)
    for n in range(0, len(tri.target), len(tri.target) // 3):  # a few blocks, some from the second forward
        x = ids[int(tri.row[n])][None]
        s = int(tri.start[n])
        assert torch.equal(x[0, s:s + 4], tri.target[n])  # targets are the block's true bytes
        starts = tiny.patch(x)
        assert bool(starts[0, s])  # blocks begin at the model's own patch starts
        for j in range(4):
            noisy = tri.target[n].clone()
            noisy[j:] = MASK
            probs = allowed(tiny(x, starts, torch.tensor([[s]]), noisy.view(1, 1, 4))[1][0, 0].float()).softmax(-1)
            # the same top probability, and the byte picked has it (argmax itself may flip on a float tie)
            torch.testing.assert_close(probs.max(-1).values, tri.conf[n, j], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(probs[torch.arange(4), tri.pred[n, j]], tri.conf[n, j], rtol=1e-4, atol=1e-6)
    assert torch.equal(tri.diag[0][:, 0], tri.conf[:, 0, 0])


@torch.no_grad()
def test_the_ar_head_is_the_plain_forward_at_the_same_bytes(tiny, scored):
    """The autoregressive head read from the hybrid forward's clean stream equals the plain forward
    (what evaluate_bpb and bench.generated_bpb run) at the row before each slot's byte: the noisy
    copies appended to the sequence change nothing for it, and the indexing is right."""
    ids, tri = scored
    probs = allowed(tiny(ids, tiny.patch(ids)).float()).softmax(-1)  # [W, T, V]
    at = tri.start[:, None] + torch.arange(4) - 1  # [N, 4]
    probs = probs[tri.row[:, None], at]  # [N, 4, V]
    torch.testing.assert_close(probs.max(-1).values, tri.ar_conf, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(probs.gather(-1, tri.ar_pred[..., None])[..., 0], tri.ar_conf, rtol=1e-4, atol=1e-6)
    assert (probs.argmax(-1) == tri.ar_pred).float().mean() > 0.95


def _triangle(conf: list, ok: list, ar_ok: list) -> Triangle:
    """One block of B = 3 whose right answers are id 10: `ok[j][k]` says whether copy j's slot k is."""
    target = torch.full((1, 3), 10)
    pred = torch.where(torch.tensor([ok]), 10, 11)
    ar_pred = torch.where(torch.tensor([ar_ok]), 10, 12)
    one = torch.ones(1, dtype=torch.long)
    return Triangle(torch.tensor([conf]), pred, torch.full((1, 3), 0.5), ar_pred, target, one - 1, one)


def test_the_left_to_right_rule_by_hand():
    conf = [[0.9, 0.9, 0.2], [0.9, 0.95, 0.6], [0.9, 0.9, 0.3]]
    ok = [[True, False, False], [True, True, False], [True, True, True]]
    tri = _triangle(conf, ok, [True, True, True])
    rule = {r["tau"]: r for r in run_rule(tri, (0.0, 0.5, 0.7, 1.0))}
    # τ = 1: one byte per pass, copies 1 and 2 (the prefix-revealed diagonal), + 1 push: 3 passes / 3 bytes
    assert rule[1.0]["passes_per_byte"] == 1.0 and rule[1.0]["acc"] == 1.0
    # τ = 0: one pass of copy 1 commits slots 1 and 2 (slot 2 wrong there), + 1 push
    assert rule[0.0]["passes_per_byte"] == pytest.approx(2 / 3) and rule[0.0]["acc"] == pytest.approx(2 / 3)
    # τ = 0.5: copy 1 commits slot 1 (always) and slot 2 (0.6 > 0.5)
    assert rule[0.5]["passes_per_byte"] == pytest.approx(2 / 3) and rule[0.5]["acc"] == pytest.approx(2 / 3)
    # τ = 0.7: copy 1 commits slot 1 only, copy 2 slot 2
    assert rule[0.7]["passes_per_byte"] == 1.0 and rule[0.7]["acc"] == 1.0
    assert all(r["acc_ar"] == 1.0 and r["agree_ar"] == r["acc"] for r in rule.values())


def test_the_fallback_rule_by_hand():
    conf = [[0.9, 0.9, 0.2], [0.9, 0.95, 0.6], [0.9, 0.9, 0.3]]
    ok = [[True, False, False], [True, True, False], [True, True, True]]
    tri = _triangle(conf, ok, [True, True, True])
    rule = {r["tau"]: r for r in run_rule_fallback(tri, (0.0, 0.5, 0.7, 1.0))}
    # τ = 1: every byte exact, one round each: blt
    assert rule[1.0]["fused_passes_per_byte"] == 1.0 and rule[1.0]["acc"] == 1.0 and rule[1.0]["masked_share"] == 0
    # τ = 0.5 (and 0): exact slot 0, then copy 1 fills slots 1 and 2 (slot 2 wrong there): one round
    for tau in (0.0, 0.5):
        assert rule[tau]["fused_passes_per_byte"] == pytest.approx(1 / 3)
        assert rule[tau]["passes_per_byte"] == pytest.approx(2 / 3)
        assert rule[tau]["acc"] == pytest.approx(2 / 3) and rule[tau]["masked_share"] == pytest.approx(2 / 3)
    # τ = 0.7: copy 1 fills slot 1 only (0.6 is unsure), slot 2 comes exact in a second round
    assert rule[0.7]["fused_passes_per_byte"] == pytest.approx(2 / 3) and rule[0.7]["acc"] == 1.0
    assert rule[0.7]["masked_share"] == pytest.approx(1 / 3)


def test_calibration_by_hand():
    good = calibration(torch.full((8,), 0.75), torch.tensor([1, 1, 1, 0, 1, 1, 1, 0]).bool())
    assert good["ece"] == pytest.approx(0.0) and good["bins"][7]["n"] == 8 and good["acc"] == 0.75
    bad = calibration(torch.tensor([1.0, 0.95, 0.05]), torch.tensor([False, False, True]))
    assert bad["ece"] == pytest.approx((1.0 + 0.95 + 0.95) / 3)
    assert bad["bins"][9]["n"] == 2 and bad["bins"][0]["n"] == 1 and bad["bins"][5]["conf"] is None


def test_the_json(tiny):
    grid = mode_grid(("blt", "blt-d4", "blt-dv4", "blt-h"), (0.9,), (0.3,))
    assert [m for m, _ in grid] == ["blt", "blt-d4", "blt-d4", "blt-dv4", "blt-h", "blt-h"]
    assert grid[1][1] == {"alpha": 0.9, "in_order": False, "exact_first": False}
    assert grid[2][1] == {"alpha": 0.9, "in_order": True, "exact_first": True}
    assert label(*grid[1]) == "blt-d4 α=0.9 any-order" and label(*grid[4]) == "blt-h η=0.3 any-order"
    assert label(*grid[2]) == "blt-d4 α=0.9 in-order exact-first" and label(*grid[5]) == "blt-h η=0.3 in-order"
    res = json.loads(json.dumps(run_diagnose(tiny, ("code",), (4, 8), 2, ("translation",), 2, 4, grid,
                                             progress=False)))
    per = res["heads"]["results"]["code"]
    assert per["windows"] == 2 and set(per) == {"windows", "4", "8"}
    for b in ("4", "8"):
        r = per[b]
        assert len(r["slots"]) == int(b) and r["blocks"] > 0
        for s in r["slots"]:
            for key in ("acc_prefix", "acc_masked", "acc_ar", "conf_prefix", "conf_ar", "agree_prefix_ar"):
                assert 0.0 <= s[key] <= 1.0, (b, s)
        assert r["slots"][0]["acc_prefix"] == r["slots"][0]["acc_masked"] and r["slots"][0]["acc_first"] is None
        for head in ("prefix", "masked", "first", "ar"):
            c = r["calibration"][head]
            assert 0.0 <= c["ece"] <= 1.0 and sum(x["n"] for x in c["bins"]) == c["n"]
        assert [u["tau"] for u in r["run_rule"]] == res["heads"]["taus"]
        assert r["run_rule"][-1]["passes_per_byte"] == 1.0  # τ = 1: one byte per pass
    assert "| code | 4 |" in format_report(res)  # the summary table
    fig = figure(res, "code", 4)  # 3 lines per block size, 4 heads' reliability curves, the diagonal
    assert len(fig.data) == 3 * 2 + 4 + 1 and len(modes_figure(res).data) == 1
    rows = res["modes"]["rows"]
    assert [r["label"] for r in rows] == [label(*g) for g in grid]
    assert rows[0]["identical_to_blt"] == 1.0 and all(0.0 <= r["identical_to_blt"] <= 1.0 for r in rows)
    assert all("chrf" in r and "gen_bpb" in r and "passes_per_byte" in r for r in rows)


def test_cli_help_and_bad_flags(tiny_dir, capsys):
    from bltlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--windows", "--sources", "--blocks", "--prompts", "--tasks", "--modes", "--alphas", "--etas",
                 "--max-bytes", "--seed", "--skip-heads", "--skip-modes", "--json", "--model", "--device"):
        assert flag in out, flag
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--model", str(tiny_dir), "--modes", "blt-x", "--skip-heads"])
    assert "unknown modes" in str(e.value.code)


def test_cli_writes_the_json(tiny_dir, tmp_path, capsys):
    from bltlab.cli import main

    out = tmp_path / "d_{model}.json"
    main(["diagnose", "--model", str(tiny_dir), "--device", "cpu", "--skip-modes", "--windows", "1", "--blocks", "4",
          "--sources", "fr", "--json", str(out)])
    res = json.loads((tmp_path / "d_tiny.json").read_text())
    assert set(res["heads"]["results"]["fr"]) == {"windows", "4"} and "modes" not in res
    assert res["args"]["windows"] == 1
    assert "heads: fr, B = 4" in capsys.readouterr().out
