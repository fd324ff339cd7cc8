import pytest
import torch

from bltlab.config import PatchConfig, get_config
from bltlab.hashing import ngram_hashes
from bltlab.model import BLT, patch_index
from bltlab.tokens import MASK, OFFSET


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = BLT(get_config("tiny")).eval()
    # a random entropy model gives entropies in a narrow band: put θ inside it so patches vary
    ids = torch.randint(OFFSET, 260, (4, 64))
    m.cfg.patch.threshold = float(m.entropy.entropies(ids)[:, 1:].median())
    return m


def rand_ids(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(OFFSET, 260, (B, T), generator=g)
    ids[:, 0] = 1
    return ids


def test_tiny_is_small_and_parts_counted():
    m = BLT(get_config("tiny"))
    counts = m.param_counts()
    assert sum(counts.values()) == sum(p.numel() for p in m.parameters())
    assert sum(counts.values()) < 2_000_000
    assert set(counts) == {"entropy", "encoder", "global", "decoder"}


def test_hash_determinism_and_locality():
    ids = rand_ids(2, 40)
    for n in (3, 5, 8):
        h = ngram_hashes(ids, n, 97)
        assert torch.equal(h, ngram_hashes(ids.clone(), n, 97))
        assert h.min() >= 0 and h.max() < 97
        # the hash at t depends only on ids[t-n+1 .. t]
        changed = ids.clone()
        changed[:, 20] = (changed[:, 20] + 1 - OFFSET) % 256 + OFFSET
        h2 = ngram_hashes(changed, n, 97)
        diff = (h != h2).any(0).nonzero()[:, 0]
        assert diff.min() >= 20 and diff.max() <= 20 + n - 1
    # same n-gram at two places hashes the same
    a = torch.tensor([[1, 10, 11, 12, 13, 50, 10, 11, 12, 13]])
    h = ngram_hashes(a, 4, 1 << 20)
    assert h[0, 4] == h[0, 9]


def naive_pool(m, h, pids):
    """Loop over patches one by one: max-pool then cross-attend to the patch's bytes."""
    P = int(pids.max()) + 1
    d, k = m.cfg.d_local, m.cfg.cross_k
    out = []
    for b in range(h.shape[0]):
        rows = []
        for p in range(P):
            sel = h[b, pids[b] == p]
            if len(sel) == 0:  # batch padding: nothing reads it (PatchPooling.bias)
                rows.append(torch.full((k * d,), float("nan")))
                continue
            q0 = m.pool.q_proj(sel.amax(0)).view(k, d)
            q = m.pool.wq(m.pool.q_norm(q0)).view(k, m.pool.heads, -1).transpose(0, 1)
            kv = m.pool.kv_norm(sel)
            kk = m.pool.wk(kv).view(len(sel), m.pool.heads, -1).transpose(0, 1)
            vv = m.pool.wv(kv).view(len(sel), m.pool.heads, -1).transpose(0, 1)
            o = torch.softmax(q @ kk.transpose(1, 2) / kk.shape[-1] ** 0.5, -1) @ vv
            rows.append((q0 + m.pool.wo(o.transpose(0, 1).reshape(k, d))).reshape(-1))
        out.append(torch.stack(rows))
    return m.pool.out(torch.stack(out))


def test_patch_pooling_matches_naive(model):
    ids = rand_ids(3, 50, seed=1)
    starts = model.patch(ids)
    pids = patch_index(starts)
    h = torch.randn(3, 50, model.cfg.d_local)
    fast = model.pool(h, pids, int(pids.max()) + 1)
    want = naive_pool(model, h, pids)
    real = ~want.isnan().any(-1)  # [B, P]: the patches that hold bytes
    assert not real.all() and fast.isfinite().all()  # the rows part, and padded patches stay finite
    torch.testing.assert_close(fast[real], want[real], atol=1e-5, rtol=1e-5)


def test_bos_alone_and_patches_used(model):
    ids = rand_ids(2, 60, seed=2)
    starts = model.patch(ids)
    assert starts[:, 0].all() and starts[:, 1].all()
    assert 2 < int(starts[0].sum()) < 59  # the fixture's threshold makes real patches


@pytest.mark.parametrize("rule", ["global", "relative", "fixed", "space"])
def test_no_leakage_clean_path(model, rule):
    """Changing byte t never changes the predictions of bytes <= t (logits[:, :t])."""
    cfg = PatchConfig(rule=rule, threshold=model.cfg.patch.threshold if rule == "global" else 0.01)
    ids = rand_ids(1, 48, seed=3)
    ids[0, 5::7] = ord(" ") + OFFSET  # spaces for the space rule
    base = model(ids, model.patch(ids, cfg=cfg))
    for t in (1, 2, 9, 20, 33, 47):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] - OFFSET + 101) % 256 + OFFSET
        out = model(changed, model.patch(changed, cfg=cfg))
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out[:, t:], base[:, t:])  # and the change is seen later


def test_block_diffusion_mask(model):
    """A noisy block at s reads clean bytes < s and its own block only; clean logits ignore
    the noisy stream entirely."""
    torch.manual_seed(0)
    ids = rand_ids(1, 48, seed=4)
    starts = model.patch(ids)
    cand = [int(i) for i in starts[0].nonzero()[:, 0] if 1 <= i <= 40]
    s1, s2 = cand[len(cand) // 3], cand[-1]
    bs = torch.tensor([[s1, s2]])
    noisy = torch.full((1, 2, 4), MASK)
    noisy[0, :, 1] = 70
    clean, blocks = model(ids, starts, bs, noisy)
    torch.testing.assert_close(clean, model(ids, starts), atol=1e-5, rtol=1e-5)
    # changing a clean byte at or after s1 leaves block 1 alone (patches after s1 may change)
    for t in (s1, s1 + 2, 47):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] - OFFSET + 77) % 256 + OFFSET
        _, b2 = model(changed, model.patch(changed), bs, noisy)
        torch.testing.assert_close(b2[:, 0], blocks[:, 0], atol=1e-5, rtol=1e-5)
    # changing a clean byte before s1 does reach block 1
    changed = ids.clone()
    changed[0, s1 - 1] = (changed[0, s1 - 1] - OFFSET + 77) % 256 + OFFSET
    _, b2 = model(changed, model.patch(changed), bs, noisy)
    assert not torch.allclose(b2[:, 0], blocks[:, 0])
    # blocks do not see each other; inside a block attention is bidirectional
    n2 = noisy.clone()
    n2[0, 1, 3] = 99
    _, b3 = model(ids, starts, bs, n2)
    torch.testing.assert_close(b3[:, 0], blocks[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(b3[0, 1, 0], blocks[0, 1, 0])  # slot 0 sees slot 3


def test_peek_is_off_by_default_and_leaks_the_answers_when_on(model):
    """forward_hybrid's teaching toggle (notebook 10): peek=0 is the training mask exactly; with peek=k a block
    at s reads clean bytes s .. s + k - 1, its answers, which the training mask hides."""
    ids = rand_ids(1, 48, seed=7)
    starts = model.patch(ids)
    s = [int(i) for i in starts[0].nonzero()[:, 0] if 4 <= i <= 36][0]
    bs, noisy = torch.tensor([[s]]), torch.full((1, 1, 4), MASK)
    clean, blocks = model(ids, starts, bs, noisy)
    clean0, blocks0 = model.forward_hybrid(ids, starts, bs, noisy, peek=0)
    assert torch.equal(clean0, clean) and torch.equal(blocks0, blocks)
    clean2, _ = model.forward_hybrid(ids, starts, bs, noisy, peek=2)
    torch.testing.assert_close(clean2, clean, atol=1e-5, rtol=1e-5)  # the clean stream never sees the toggle
    for j, peek, leaks in ((0, 0, False), (0, 1, True), (1, 1, False), (1, 2, True), (3, 4, True)):
        changed = ids.clone()
        changed[0, s + j] = (changed[0, s + j] - OFFSET + 77) % 256 + OFFSET
        _, before = model.forward_hybrid(ids, starts, bs, noisy, peek=peek)
        _, after = model.forward_hybrid(changed, model.patch(changed), bs, noisy, peek=peek)
        assert (not torch.allclose(after, before, atol=1e-5, rtol=1e-5)) == leaks, (j, peek)


def test_unused_blocks_do_not_break_batch(model):
    ids = rand_ids(2, 30, seed=5)
    starts = model.patch(ids)
    bs = torch.tensor([[3, -1], [-1, -1]])
    clean, blocks = model(ids, starts, bs, torch.full((2, 2, 8), MASK))
    assert torch.isfinite(clean).all() and torch.isfinite(blocks).all()


def test_backward_reaches_every_trained_part(model):
    ids = rand_ids(2, 40, seed=6)
    starts = model.patch(ids)
    clean, blocks = model(ids, starts, torch.tensor([[3], [5]]), torch.full((2, 1, 4), MASK))
    (clean.sum() + blocks.sum()).backward()
    for name, p in model.named_parameters():
        if not name.startswith("entropy."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad()
