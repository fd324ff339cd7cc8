"""Tests for bltlab.patching: invariants as properties, rules against slow per-row references."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bltlab.config import PatchConfig
from bltlab.patching import (calibrate_threshold, enforce_max_patch, mean_patch_length, num_patches,
                             patch_ids, patch_lengths, patch_starts, starts_to_spans)
from bltlab.tokens import BOS, PAD, encode_tensor

FAST = settings(max_examples=60, deadline=None)
RULES = ("global", "relative", "fixed", "space")


def make_batch(seed: int, B: int, T: int, grid: bool):
    """Random right-padded ids (bytes from 'ab \\n.'), lengths, entropies (garbage in the padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # the batch is as long as its longest row
    alphabet = torch.tensor(list(b"ab \n.")) + 4
    ids = alphabet[torch.randint(0, len(alphabet), (B, T), generator=g)]
    ids[:, 0] = BOS
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    ids[pad] = PAD
    # a coarse grid makes exact ties with θ likely, which checks ">" versus ">="
    ent = torch.randint(0, 13, (B, T), generator=g) / 4 if grid else torch.rand(B, T, generator=g) * 5.5
    ent[pad] = float("nan")
    return ids, lengths, ent


def reference(ent_row: list[float], ids_row: list[int], n: int, cfg: PatchConfig) -> list[bool]:
    """Slow per-row reference of the rules, with the sequential greedy max_patch loop."""
    ws = {b + 4 for b in b" \t\n\v\f\r"}
    out, cur = [], 0
    for t in range(n):
        if t <= 1:
            s = True
        elif cfg.rule == "global":
            s = ent_row[t] > cfg.threshold
        elif cfg.rule == "relative":
            s = ent_row[t] - ent_row[t - 1] > cfg.threshold
        elif cfg.rule == "fixed":
            s = (t - 1) % cfg.stride == 0
        else:
            s = ids_row[t - 1] in ws and ids_row[t] not in ws
        if cfg.max_patch and cur >= cfg.max_patch:
            s = True
        cur = 1 if s else cur + 1
        out.append(s)
    return out + [False] * (len(ids_row) - n)


batches = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 24), st.booleans())
cfgs = st.builds(PatchConfig, rule=st.sampled_from(RULES), threshold=st.sampled_from([0.0, 0.5, 1.25, 2.0, -0.5]),
                 max_patch=st.integers(0, 6), stride=st.integers(1, 7))


@FAST
@given(batches, cfgs)
def test_invariants_and_reference(batch, cfg):
    ids, lengths, ent = make_batch(*batch)
    starts = patch_starts(ent, ids, cfg, lengths)
    assert starts.dtype == torch.bool and starts.shape == ids.shape
    want = [reference(e, i, int(n), cfg) for e, i, n in zip(ent.tolist(), ids.tolist(), lengths)]
    assert starts.tolist() == want
    assert starts[:, 0].all()
    assert ids.shape[1] < 2 or starts[lengths > 1, 1].all()  # BOS alone
    assert not starts[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]].any()
    pl = patch_lengths(starts, lengths)
    for row, n in zip(pl, lengths.tolist()):
        assert sum(row) == n and row[0] == 1 and min(row) >= 1
        if cfg.max_patch:
            assert max(row) <= cfg.max_patch
    assert num_patches(starts, lengths).tolist() == [len(r) for r in pl]
    # lengths default to the non-PAD count, so omitting them changes nothing
    assert torch.equal(patch_starts(ent, ids, cfg), starts)


@FAST
@given(batches, st.integers(0, 6))
def test_enforce_max_patch_matches_loop(batch, m):
    ids, lengths, ent = make_batch(*batch)
    natural = torch.rand(ids.shape, generator=torch.Generator().manual_seed(batch[0])) < 0.2
    natural[:, 0] = True
    got = enforce_max_patch(natural, m, lengths)
    for row, nat, n in zip(got.tolist(), natural.tolist(), lengths.tolist()):
        want, cur = [], 0
        for t in range(n):
            s = nat[t] or (m > 0 and cur >= m)
            cur = 1 if s else cur + 1
            want.append(s)
        assert row == want + [False] * (len(row) - n)


def test_fixed_hand_example():
    ids, lens = encode_tensor(["abcdefghij", "abc"])
    s = patch_starts(None, ids, PatchConfig(rule="fixed", stride=4, max_patch=8), lens)
    assert patch_lengths(s, lens) == [[1, 4, 4, 2], [1, 3]]
    assert starts_to_spans(s[0], 11) == [(0, 1), (1, 5), (5, 9), (9, 11)]
    # max_patch wins over a longer stride
    s = patch_starts(None, ids, PatchConfig(rule="fixed", stride=6, max_patch=4), lens)
    assert patch_lengths(s, lens)[0] == [1, 4, 2, 4]


def test_space_hand_example():
    ids, lens = encode_tensor(["hi  there you", " x\ny", "solid"])
    s = patch_starts(None, ids, PatchConfig(rule="space", max_patch=0), lens)
    got = [[bytes(i - 4 for i in ids[r, a:b].tolist() if i >= 4) for a, b in starts_to_spans(s[r], int(lens[r]))]
           for r in range(3)]
    assert got == [[b"", b"hi  ", b"there ", b"you"], [b"", b" ", b"x\n", b"y"], [b"", b"solid"]]
    s = patch_starts(None, ids, PatchConfig(rule="space", max_patch=3), lens)
    assert patch_lengths(s, lens)[2] == [1, 3, 2]


def test_global_and_relative_hand_example():
    ids, lens = encode_tensor(["abcdef"])
    ent = torch.tensor([[9.0, 3.0, 0.5, 2.0, 2.0, 0.1, 1.5]])
    g = patch_starts(ent, ids, PatchConfig(rule="global", threshold=1.0, max_patch=0))
    assert g[0].tolist() == [True, True, False, True, True, False, True]
    r = patch_starts(ent, ids, PatchConfig(rule="relative", threshold=1.0, max_patch=0))
    assert r[0].tolist() == [True, True, False, True, False, False, True]


def test_patch_ids_and_means():
    ids, lens = encode_tensor(["abcdef", "ab"])
    s = patch_starts(None, ids, PatchConfig(rule="fixed", stride=3), lens)
    assert patch_ids(s, lens).tolist() == [[0, 1, 1, 1, 2, 2, 2], [0, 1, 1, -1, -1, -1, -1]]
    assert patch_ids(s)[1].tolist() == [0, 1, 1, 1, 1, 1, 1]
    assert mean_patch_length(s, lens) == pytest.approx((6 + 2) / 3)
    assert mean_patch_length(s, lens, skip_bos=False) == pytest.approx((7 + 3) / 5)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["global", "relative"]), st.floats(1.5, 6.0))
def test_calibrate_hits_target(seed, rule, target):
    ids, lengths, _ = make_batch(seed, 8, 200, grid=False)
    ent = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed + 1)) * 5.5
    theta = calibrate_threshold(ent, ids, lengths, target_mean=target, rule=rule, max_patch=8)
    s = patch_starts(ent, ids, PatchConfig(rule=rule, threshold=theta, max_patch=8), lengths)
    assert abs(mean_patch_length(s, lengths) - target) < 0.05


def test_mean_length_monotone_in_theta():
    ids, lengths, ent = make_batch(7, 4, 64, grid=False)
    for rule in ("global", "relative"):
        means = [mean_patch_length(patch_starts(ent, ids, PatchConfig(rule=rule, threshold=th, max_patch=5), lengths),
                                   lengths) for th in torch.linspace(-6, 6, 49).tolist()]
        assert all(a <= b for a, b in zip(means, means[1:])) and means[0] == 1.0


def test_errors():
    ids, lens = encode_tensor(["abc"])
    ent = torch.zeros(ids.shape)
    for cfg, msg in [(PatchConfig(rule="bpe"), "unknown patching rule"),
                     (PatchConfig(threshold=math.nan), "finite"), (PatchConfig(threshold=math.inf), "finite"),
                     (PatchConfig(max_patch=-1), "max_patch"), (PatchConfig(rule="fixed", stride=0), "stride")]:
        with pytest.raises(ValueError, match=msg):
            patch_starts(ent, ids, cfg, lens)
    for rule in ("global", "relative"):
        with pytest.raises(ValueError, match="needs per-byte entropies"):
            patch_starts(None, ids, PatchConfig(rule=rule), lens)
    with pytest.raises(ValueError, match="shape"):
        patch_starts(ent[:, :2], ids, PatchConfig(), lens)
    with pytest.raises(ValueError, match="max_patch"):
        enforce_max_patch(torch.ones(1, 3, dtype=torch.bool), -2)
    for kw in ({"target_mean": 9.0}, {"target_mean": 0.5}, {"rule": "fixed"}):
        with pytest.raises(ValueError):
            calibrate_threshold(ent, ids, lens, **kw)
    with pytest.raises(ValueError, match="unreachable on this data"):  # 3 bytes can't average 3.5
        calibrate_threshold(ent, ids, lens, target_mean=3.5, max_patch=0)
