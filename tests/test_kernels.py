"""Parity of every Triton kernel with its PyTorch reference (bltlab/kernels/), forward and backward.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
bltlab is imported), so shapes stay small; with a GPU the same tests run on CUDA tensors.
Tolerances: fp32 results agree to ~1e-5 of the largest value (hashing and pooling exactly); bf16
results may differ by one bf16 rounding (3e-2 forward, 5e-2 gradients, relative to the largest value).
"""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bltlab import kernels
from bltlab.config import get_config
from bltlab.positions import AttnMask, causal_mask
from bltlab.model import BLT
from bltlab.train import diffusion_loss, next_byte_loss, sample_blocks

DEVICES = (["cpu"] if kernels.interpreting() else []) + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.skipif(not DEVICES, reason="no GPU and TRITON_INTERPRET is not 1")
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 5e-2)}  # (forward, backward), relative to max|ref|


@pytest.fixture(params=DEVICES)
def dev(request):
    return request.param


def close(a, b, tol, what=""):
    a, b = a.detach().float(), b.detach().float()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, float(b.abs().max()) if b.numel() else 1.0)
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} * {scale:.3g}"


def grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


# ---- dispatch ------------------------------------------------------------------------------
def test_backend_switch_and_errors(monkeypatch):
    assert kernels.get_backend() == "auto"
    with kernels.backend("reference"):
        assert kernels.get_backend() == "reference" and not kernels.use_triton(torch.zeros(1))
    assert kernels.get_backend() == "auto"
    assert not kernels.use_triton(torch.zeros(1))  # auto: PyTorch for CPU tensors
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.set_backend("cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with kernels.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.use_triton(torch.zeros(1))


def test_auto_leaves_slower_kernels_to_pytorch(monkeypatch):
    monkeypatch.setattr(kernels, "use_triton", lambda *t: True)  # as for CUDA tensors
    monkeypatch.setattr(kernels, "_module", lambda name, on_cpu: name)
    x = torch.zeros(1)
    assert kernels._pick("attention", x) == ("attention", False)  # auto: PyTorch's fused attention
    assert kernels._pick("norm_ffn", x) == ("norm_ffn", True)
    with kernels.backend("triton"):
        assert kernels._pick("attention", x) == ("attention", True)


def test_without_triton_auto_runs_the_references_and_triton_refuses(monkeypatch):
    """Triton is Linux-only: on a CUDA tensor elsewhere (Windows), 'auto' runs the reference and
    'triton' stops with one clear error (tests/test_no_triton.py runs the whole library so)."""
    assert kernels.has_triton()  # this machine has it: the test patches its absence
    monkeypatch.setattr(kernels, "has_triton", lambda: False)
    on_gpu = type("CudaTensor", (), {"is_cuda": True})()  # what use_triton reads of a tensor
    assert not kernels.use_triton(on_gpu)
    with kernels.backend("triton"), pytest.raises(RuntimeError, match="Triton is not installed; it has Linux wheels"):
        kernels.use_triton(on_gpu)


def test_env_variable_sets_the_backend():
    env = {**os.environ, "BLTLAB_KERNELS": "reference"}
    out = subprocess.run([sys.executable, "-c", "import bltlab.kernels as k; print(k.get_backend())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "reference", out.stderr[-500:]


# ---- entropy / confidence --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,V", [(1, 260), (7, 33), (33, 260), (3, 5000)])
def test_confidence(dev, dtype, rows, V):
    from bltlab.kernels import entropy as K

    torch.manual_seed(rows)
    x = (torch.randn(rows, V) * 4).to(dtype)
    x[:, :4] = float("-inf")  # forbidden ids, as decode.common.allowed makes them
    if rows > 1:
        x[1] = float("-inf")
        x[1, V // 2] = 0.5  # one allowed id: entropy 0, confidence 1
    x = x.to(dev)
    ent, conf, arg = K.confidence_triton(x)
    rent, rconf, rarg = K.confidence_reference(x)
    assert not ent.isnan().any()
    close(ent, rent, 1e-5, "entropy")
    close(conf, rconf, 1e-5, "confidence")
    assert torch.equal(arg, rarg)
    from bltlab.entropy import entropy_of_logits

    with kernels.backend("triton"):
        close(entropy_of_logits(x.view(1, rows, V)), rent.view(1, rows), 1e-5, "entropy_of_logits")


# ---- hash n-gram embedding -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,C,L,sizes", [(1, 0, 1, (3, 4, 5, 6, 7, 8)), (2, 0, 7, (3, 4, 5, 6, 7, 8)),
                                         (3, 5, 4, (1, 2, 5)), (1, 8, 1, (3, 8))])
def test_hash_embedding(dev, dtype, B, C, L, sizes):
    from bltlab.kernels import hash_embed as K

    torch.manual_seed(L + C)
    V, D = 37, 20
    full = torch.randint(0, 260, (B, C + L), device=dev)
    full[:, 0] = 1
    bw = torch.randn(260, D, device=dev, dtype=dtype, requires_grad=True)
    tabs = [torch.randn(V, D, device=dev, dtype=dtype, requires_grad=True) for _ in sizes]
    out = K.hash_embed_triton(full, L, sizes, V, bw, tabs)
    ref = K.hash_embed_reference(full, L, sizes, V, bw, tabs)
    fwd, bwd = TOL[dtype]
    close(out, ref, 0.0 if dtype == torch.float32 else fwd, "hash forward")  # fp32: same sums, same order
    g = torch.randn_like(ref)
    for a, b in zip(grads(out, [bw, *tabs], g), grads(ref, [bw, *tabs], g)):
        close(a, b, 1e-6 if dtype == torch.float32 else bwd, "hash grad")


def test_hash_reference_is_the_rolling_hash():
    """The reference (every n-gram hash at once, kernels/hash_embed.py) equals the definition,
    hashing.ngram_hashes, bit for bit: the table rows it reads (a one-wide table holding each row's
    index, so the output is the row) for n = 1 .. 16 and vocabularies up to 2^20, and its sums on
    random tables in the same order; random ids with PAD contexts (the decoding state's, before
    byte 0) and without, new ids 0 .. 9."""
    from bltlab.hashing import ngram_hashes
    from bltlab.kernels import hash_embed as K

    torch.manual_seed(0)
    for B, C, L in [(1, 8, 1), (2, 0, 7), (3, 5, 4), (2, 3, 0), (2, 12, 9), (1, 0, 1)]:
        full = torch.randint(0, 261, (B, C + L))
        full[0, :min(C, 5)] = 0  # PAD context before the start
        full[-1, :1] = 260  # the largest id
        for vocab in (37, 4096, 1 << 20):
            index = torch.arange(vocab, dtype=torch.float64)[:, None]
            for n in range(1, 17):
                got = K.hash_embed_reference(full, L, (n,), vocab, torch.zeros(261, 1, dtype=torch.float64), [index])
                assert torch.equal(got[..., 0].long(), ngram_hashes(full, n, vocab)[:, C:]), (B, C, L, vocab, n)
        sizes = (3, 4, 5, 6, 7, 8)
        bw, tabs = torch.randn(261, 16), [torch.randn(97, 16) for _ in sizes]
        want = F.embedding(full[:, C:], bw)
        for n, table in zip(sizes, tabs):
            want = want + F.embedding(ngram_hashes(full, n, 97)[:, C:], table)
        assert torch.equal(K.hash_embed_reference(full, L, sizes, 97, bw, tabs), want)


@pytest.mark.parametrize("functions", [1, 2])
def test_hash_embedding_module_with_context(dev, functions):
    """The HashEmbedding module under the Triton backend, with cached decoding's context ids
    (two hash functions: 12 tables, more than one kernel takes, so the reference serves them)."""
    from bltlab.layers import HashEmbedding

    torch.manual_seed(0)
    emb = HashEmbedding(260, 16, (3, 4, 5, 6, 7, 8), 64, functions=functions).to(dev)
    ids = torch.randint(4, 260, (2, 5), device=dev)
    ctx = torch.randint(4, 260, (2, 8), device=dev)
    ref = emb(ids, ctx)
    with kernels.backend("triton"):
        assert torch.equal(emb(ids, ctx), ref)


# ---- patch pooling ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,D", [(1, 1, 8), (2, 13, 33), (3, 33, 20)])
def test_patch_max(dev, dtype, B, T, D):
    from bltlab.kernels import pooling as K

    torch.manual_seed(T)
    starts = torch.rand(B, T) < 0.4
    starts[:, 0] = True
    pids = starts.long().cumsum(1) - 1
    if T > 3:
        pids[0, -2:] = -1  # ignored bytes (state._global's trailing bytes)
    P = int(pids.max()) + 2  # the last patch is empty (padding)
    # distinct values along each patch (no ties: the reference splits a tie's gradient, the kernel does not)
    h = torch.argsort(torch.rand(B, D, T), -1).transpose(1, 2).float() - T / 2
    h = h.to(dtype).to(dev).requires_grad_()
    pids = pids.to(dev)
    out, ref = K.patch_max_triton(h, pids, P), K.patch_max_reference(h, pids, P)
    assert torch.equal(out, ref)  # a max is exact
    assert torch.equal(out[:, -1], torch.zeros_like(out[:, -1]))
    g = torch.randn_like(ref)
    assert torch.equal(grads(out, [h], g)[0], grads(ref, [h], g)[0])


# ---- RMSNorm (+ residual) and SwiGLU ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,D", [(1, 32), (7, 33), (33, 100)])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm(dev, dtype, N, D, residual):
    from bltlab.kernels import norm_ffn as K

    torch.manual_seed(N * D)
    x = torch.randn(N, D, device=dev, dtype=dtype, requires_grad=True)
    r = torch.randn(N, D, device=dev, dtype=dtype, requires_grad=True) if residual else None
    w = (1 + 0.3 * torch.randn(D, device=dev)).requires_grad_()  # fp32 weight, as in the model
    out, ref = K.rms_norm_triton(x, w, 1e-5, r), K.rms_norm_reference(x, w, 1e-5, r)
    out, ref = (out, ref) if residual else ((out,), (ref,))
    fwd, bwd = TOL[dtype]
    for a, b in zip(out, ref):
        assert a.dtype == b.dtype
        close(a, b, fwd, "rms forward")
    gs = [torch.randn_like(b) for b in ref]
    inputs = [x, w] + ([r] if residual else [])
    for a, b in zip(grads(out, inputs, gs), grads(ref, inputs, gs)):
        close(a, b, bwd if dtype == torch.bfloat16 else 1e-5, "rms grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("wdtype", ["same", torch.float32])
def test_rms_norm_reference_is_the_written_out_norm(dtype, wdtype):
    """The reference's F.rms_norm on the fp32 copy gives what the norm written out gives (fp32 sums,
    float64 inputs too; the cast back before the weight), bit for bit forward; gradients as close
    as two orders of fp32 sums allow."""
    from bltlab.kernels import norm_ffn as K

    def written_out(x, w, eps, r=None):
        s = x if r is None else x + r
        sf = s.float()
        y = (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)).type_as(s) * w
        return y if r is None else (s, y)

    torch.manual_seed(1)
    for shape in [(1, 1, 128), (2, 9, 256), (33, 100), (3, 5, 7)]:
        x = (3 * torch.randn(shape, dtype=dtype)).requires_grad_()
        r = torch.randn(shape, dtype=dtype, requires_grad=True)
        w = (1 + 0.3 * torch.randn(shape[-1], dtype=dtype if wdtype == "same" else wdtype)).requires_grad_()
        for res in (None, r):
            got, want = K.rms_norm_reference(x, w, 1e-5, res), written_out(x, w, 1e-5, res)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            inputs = [x, w] + ([r] if res is not None else [])
            outs = (got,) if res is None else got
            gs = [torch.randn_like(o) for o in outs]
            torch.testing.assert_close(grads(outs, inputs, gs),
                                       grads((want,) if res is None else want, inputs, gs))


def residual_of(x, kind):
    """None, a residual like x, or ("projected") one as (h, P) for h @ P.T, h 7 wider than x."""
    if not kind:
        return None
    if kind is True:
        return torch.randn_like(x)
    D = x.shape[-1]
    h = torch.randn(*x.shape[:-1], D + 7, device=x.device, dtype=x.dtype)
    return h, (torch.randn(D, D + 7, device=x.device) / D ** 0.5).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead,D,out", [((1,), 32, 48), ((2, 9), 40, 33), ((17,), 24, 100), ((3,), 20, 8)])
@pytest.mark.parametrize("residual", [False, True, "projected"])
@pytest.mark.parametrize("swiglu", [False, True])
def test_norm_linear(dev, dtype, lead, D, out, residual, swiglu):
    """RMSNorm fused into its projection: rows past one block, outputs past several, D past one
    chunk and not a power of two; the residual given or as a projection (h, P) of a width past
    one chunk; both parts equal the unfused ops."""
    from bltlab.kernels import norm_proj as K

    torch.manual_seed(D * out)
    x = torch.randn(*lead, D, device=dev, dtype=dtype)
    r = residual_of(x, residual)
    g = (1 + 0.3 * torch.randn(D, device=dev)).to(dtype)
    w = (torch.randn(2 * out if swiglu else out, D, device=dev) / D ** 0.5).to(dtype)
    got, want = K.norm_linear_triton(x, g, 1e-5, w, r, swiglu), K.norm_linear_reference(x, g, 1e-5, w, r, swiglu)
    for a, b, what in zip(got, want, ("sum", "projection")):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        close(a, b, TOL[dtype][0], what)
    if not residual:
        assert got[0] is x


def test_norm_linear_dispatch(dev):
    """The op takes the kernel only where no gradient is needed; mismatched shapes are refused."""
    from bltlab.kernels import norm_proj as K

    x, g, w = torch.randn(3, 16, device=dev), torch.ones(16, device=dev), torch.randn(20, 16, device=dev)
    with kernels.backend("triton"):
        s, y = kernels.norm_linear(x, g, 1e-5, w)
        close(y, K.norm_linear_reference(x, g, 1e-5, w)[1], 1e-5, "dispatch")
        w.requires_grad_()
        _, y = kernels.norm_linear(x, g, 1e-5, w)
        assert y.requires_grad  # the reference ran: the kernel has no backward
        with pytest.raises(ValueError, match="do not fit"):
            K.norm_linear_triton(x, g, 1e-5, torch.randn(20, 15, device=dev))
        h = torch.randn(3, 9, device=dev, requires_grad=True)  # a projected residual needing a gradient
        _, y = kernels.norm_linear(x, g, 1e-5, w.detach(), (h, torch.randn(16, 9, device=dev)))
        assert y.requires_grad
        for P in (torch.randn(15, 9, device=dev), torch.randn(16, 8, device=dev)):  # P [D, FP] fits neither
            with pytest.raises(ValueError, match="do not fit"):
                K.norm_linear_triton(x, g, 1e-5, w.detach(), (h.detach(), P))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,L,H,hd", [(1, 1, 2, 8), (2, 9, 3, 6), (3, 2, 4, 10)])
@pytest.mark.parametrize("residual", [False, True, "projected"])
def test_norm_qkv(dev, dtype, B, L, H, hd, residual):
    """q|k|v with RoPE and the cache write in the epilogue: rows past one block, pairs past
    several, heads whose size is no power of two, cache rows out of order; the queries, the sum
    and the whole cache (entries not written included) equal the unfused ops."""
    from bltlab.kernels import norm_proj as K

    torch.manual_seed(B * L * H)
    D, S = H * hd, 24
    x = torch.randn(B, L, D, device=dev, dtype=dtype)
    g = (1 + 0.3 * torch.randn(D, device=dev)).to(dtype)
    w = (torch.randn(3 * D, D, device=dev) / D ** 0.5).to(dtype)
    pos = torch.randint(0, S - L, (B, 1), device=dev) + torch.arange(L, device=dev)
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd)
    ang = torch.arange(S, device=dev).float()[:, None] * inv  # as layers.rope
    rot = torch.stack((ang.cos(), ang.sin()), -1)  # [S, hd/2, 2]
    rows = torch.arange(B, device=dev).flip(0) + 1  # cache rows: B + 1 of them, the first unused
    kv = torch.randn(2, B + 1, H, S, hd, device=dev).to(dtype)
    kv_ref = kv.clone()
    r = residual_of(x, residual)
    got = K.norm_qkv_triton(x, g, 1e-5, w, r, rot, pos, kv, rows)
    want = K.norm_qkv_reference(x, g, 1e-5, w, r, rot, pos, kv_ref, rows)
    for a, b, what in zip((*got, kv), (*want, kv_ref), ("sum", "queries", "cache")):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        close(a, b, TOL[dtype][0], what)
    assert got[1].transpose(1, 2).is_contiguous()  # [B, L, H, hd] underneath, as attention's output is read
    assert not torch.equal(kv, kv_ref.new_zeros(kv.shape)) and torch.equal(kv[:, 0], kv_ref[:, 0])
    with pytest.raises(ValueError, match="do not fit"):
        K.norm_qkv_triton(x, g, 1e-5, w, r, rot, pos[:, :-1], kv, rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (2, 5, 96)])
@pytest.mark.parametrize("halves", [False, True])
def test_swiglu(dev, dtype, shape, halves):
    """halves: a and b are the two column halves of one matrix (strided rows, as the static
    engine's fused gate-and-up projection gives them), else two tensors."""
    from bltlab.kernels import norm_ffn as K

    torch.manual_seed(len(shape))
    both = (*shape[:-1], 2 * shape[-1])
    ab = (2 * torch.randn(both if halves else (2, *shape), device=dev)).to(dtype).requires_grad_()
    a, b = ab.chunk(2, -1) if halves else ab.unbind(0)
    out, ref = K.swiglu_triton(a, b), K.swiglu_reference(a, b)
    fwd, bwd = TOL[dtype]
    close(out, ref, fwd, "swiglu")
    g = torch.randn_like(ref)
    for x, y in zip(grads(out, [ab], g), grads(ref, [ab], g)):
        close(x, y, bwd, "swiglu grad")


# ---- the end of a static decoding step --------------------------------------------------------
@pytest.mark.parametrize("rule", ["global", "relative", "fixed", "space"])
@pytest.mark.parametrize("max_patch", [0, 4])
@pytest.mark.parametrize("L", [None, 1, 3, "draft"])  # None: the signal only; a pass of L bytes; a draft (L 1)
def test_step_end(dev, rule, max_patch, L):
    """Greedy bytes, kept logits, next ids, positions and the (byte, opens) signal equal the
    reference's exactly, on 16 rows whose positions, prompts, entropies, forced starts, open
    patches and logits (exact ties, forbidden ids, fp32 and bf16) differ."""
    from bltlab.decode.common import allowed
    from bltlab.kernels import step as K
    from bltlab.patching import WHITESPACE
    from bltlab.tokens import MASK, OFFSET

    draft = L == "draft"
    n = 1 if draft else L
    g = torch.Generator().manual_seed(sum(map(ord, rule)) + max_patch + (n or 0) + 7 * draft)
    B, T = 16, 40
    pids = torch.randint(0, MASK, (B, 8 + T), generator=g)
    pids[torch.rand(B, 8 + T, generator=g) < 0.3] = ord(" ") + OFFSET  # whitespace in every row
    t = torch.randint(0, T - 8, (B,), generator=g)
    t[0] = 0
    state = dict(t=t, signal=torch.zeros(B, 2, dtype=torch.long), ent=2 * torch.rand(B, T + 1, generator=g),
                 forced=torch.rand(B, T, generator=g) < 0.2, cur=(t - torch.randint(0, 4, (B,), generator=g)).clamp(0),
                 keep=torch.randn(B, MASK, generator=g), pred=torch.zeros(B, T, dtype=torch.long),
                 olog=torch.rand(B, T, generator=g) < 0.5)
    is_ws = torch.zeros(MASK + 1, dtype=torch.bool)
    is_ws[torch.tensor(list(WHITESPACE)) + OFFSET] = True
    dtype = torch.bfloat16 if max_patch else torch.float32
    logits = (torch.randn(B, 3, MASK, generator=g) * 3).to(dtype)[:, :n or 1]  # rows strided
    logits[1, :, 9] = logits[1, :, 5] = logits[1].float().max() + 1  # a tie: the first maximum wins
    logits[2, :, 1] = 1e4  # a forbidden id (BOS is never emitted)
    given = torch.randint(0, MASK, (B, T), generator=g)
    plen, move = torch.randint(1, T, (B,), generator=g), torch.rand(B, generator=g) < 0.7
    runs = []
    for fn in (K.step_end_triton, K.step_end_reference):
        p = pids.clone().to(dev)
        st = {k: v.clone().to(dev) for k, v in state.items()}
        st["keep"] = st["keep"].to(dtype)
        adv = None if n is None else (logits.to(dev), allowed(torch.zeros(MASK, device=dev)), st["keep"], st["pred"],
                                      given.to(dev), plen.to(dev), move.to(dev))
        fn(p[:, 8:], st["t"], None if draft else st["signal"], None if draft else st["olog"], st["ent"], st["forced"],
           st["cur"], is_ws.to(dev), rule, 1.0, 3, max_patch, adv)
        runs.append((p.cpu(), st["t"].cpu(), st["signal"].cpu(), st["pred"].cpu(), st["keep"].cpu(), st["olog"].cpu()))
    for x, y, what in zip(runs[0], runs[1], ("ids", "t", "signal", "pred", "keep", "olog")):
        assert torch.equal(x, y), what
    ids, t1, signal, pred, keep, olog = runs[1]
    if n is not None:
        assert not torch.equal(t1, t) and not torch.equal(ids, pids)
        assert int(pred[1, t[1]]) == 5 and int(pred[2, t[2]]) != 1
        assert torch.equal(keep[move], logits[move, -1].to(keep.dtype))
        assert torch.equal(keep[~move], state["keep"][~move].to(keep.dtype))
        assert torch.equal(ids[~move], pids[~move]) and not torch.equal(ids[move], pids[move])  # waiting rows keep theirs
    if draft:
        assert not signal.any() and torch.equal(olog, state["olog"])
    else:
        assert 0 < int(signal[:, 1].sum()) < B  # both outcomes occur
        assert torch.equal(olog[torch.arange(B), t1], signal[:, 1].bool())  # logged at byte t
        olog[torch.arange(B), t1] = state["olog"][torch.arange(B), t1]
        assert torch.equal(olog, state["olog"])  # and nowhere else
    with pytest.raises(ValueError, match="patch rule"):
        K.step_end_reference(pids[:, 8:], t, state["signal"], state["olog"], state["ent"], state["forced"],
                             state["cur"], is_ws, "entropy", 1.0, 3, max_patch)


def test_sum_less_max_rounds_once_per_prefix(dev):
    """γ's prefix sums come out the same on every device: accumulated in float64 and rounded once,
    where adding sixteen float32 0.1s one at a time in float32 (torch.cumsum on a GPU) drifts; and
    each prefix loses its largest term, wherever it lies."""
    from bltlab.kernels.step import sum_less_max

    x = torch.full((2, 16), 0.1)
    acc, drift = torch.zeros(2), []
    for j in range(16):
        acc = acc + x[:, j]
        drift.append(acc - x[:, j])
    sums = torch.tensor([sum([float(x[0, 0])] * (j + 1)) for j in range(16)])  # Python's float64 sums
    got = sum_less_max(x.to(dev)).cpu()
    assert torch.equal(got, (sums.float() - x[0]).expand(2, -1))
    assert not torch.equal(torch.stack(drift, 1), got)  # float32 accumulation gives other sums
    assert sum_less_max(torch.tensor([3.0, 1.0, 2.0, 5.0]).to(dev)).tolist() == [0.0, 1.0, 3.0, 6.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("by_entropy, in_order", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("L", [1, 5, 16])
def test_denoise_end(dev, dtype, by_entropy, in_order, L):
    """The unmasking rule and its bookkeeping equal the reference's: the same slots filled with the
    same ids, the same log and counts (exactly), the same scores (1e-5), on rows whose masked slots,
    knobs (α or γ, from nothing-passes to everything-passes) and sharpness differ."""
    from bltlab.decode.common import allowed
    from bltlab.kernels import step as K
    from bltlab.tokens import MASK

    g = torch.Generator().manual_seed(L + 2 * by_entropy)
    B, T = 8, 40
    scale = 10 ** (2 * torch.rand(B, L, 1, generator=g) - 0.5)  # sharp and flat slots
    logits = (torch.randn(B, L, 260, generator=g) * scale).to(dtype)
    noisy = torch.randint(4, 260, (B, 16), generator=g)
    noisy[torch.rand(B, 16, generator=g) < 0.6] = MASK
    noisy[0, :L], noisy[1, :L] = MASK, 7  # all masked; none masked
    ids, t = torch.randint(4, 260, (B, T), generator=g), torch.randint(0, T - 16, (B,), generator=g)
    move = torch.ones(B, dtype=torch.bool)
    move[2] = False  # a row that waits: nothing of it changes but its pass count
    knob = (torch.rand(B, generator=g, dtype=torch.float64) * (6 if by_entropy else 1))
    knob[3], knob[4] = (0.0, 100.0) if by_entropy else (2.0, -1.0)  # one slot; every slot
    if L > 1:  # an exact tie, of which the first slot goes first (a stable sort; the first maximum)
        logits[5, 1], noisy[5], noisy[5, :2], knob[5] = logits[5, 0], 7, MASK, knob[3]
    if in_order:  # "at least one" holds only in a block with no slot filled
        noisy[3, :L] = MASK
    state = dict(nstep=torch.randint(0, 4, (B,), generator=g), filled=torch.full((B, 2, 16), -1),
                 scores=torch.zeros(B, 2, 16), left=torch.zeros(B, dtype=torch.long))
    runs = []
    for fn in (K.denoise_end_triton, K.denoise_end_reference):
        nz, i = noisy.clone().to(dev), ids.clone().to(dev)
        st = {k: v.clone().to(dev) for k, v in state.items()}
        fn(logits.to(dev), allowed(torch.zeros(260)).to(dev), nz[:, :L], i, t.to(dev), move.to(dev), knob.to(dev),
           by_entropy, st["nstep"], st["filled"], st["scores"], st["left"], in_order)
        runs.append({"noisy": nz.cpu(), "ids": i.cpu(), **{k: v.cpu() for k, v in st.items()}})
    for k in ("noisy", "ids", "nstep", "filled", "left"):
        assert torch.equal(runs[0][k], runs[1][k]), k
    close(runs[0]["scores"], runs[1]["scores"], 1e-5, "scores")
    was = (noisy[:, :L] == MASK).sum(1)
    took = was - runs[1]["left"]
    assert took[2] == 0 and took[1] == 0 and torch.equal(runs[1]["nstep"] - state["nstep"], (was > 0).long())
    if L > 1:  # the rule really chose: one slot somewhere, several elsewhere, every one where the knob says
        assert took[3] == 1 and took[4] == was[4] > 1 and len(set(took[took > 0].tolist())) > 1
        if in_order:  # row 5 has filled slots and nothing passes: none is filled, the block may end
            assert took[5] == 0
        else:
            assert runs[1]["noisy"][5, 0] != MASK and runs[1]["noisy"][5, 1] == MASK


# ---- attention with the block-diffusion mask -------------------------------------------------
def hybrid_mask(B, T, starts, bs, window):
    """model.forward_hybrid's AttnMask and the dense mask it built before AttnMask existed."""
    nb = starts.shape[1]
    s = starts.clamp(min=0)
    cpos = torch.arange(T).expand(B, T)
    npos = (s[..., None] + torch.arange(bs)).reshape(B, nb * bs)
    pos = torch.cat((cpos, npos), 1)
    blk = torch.arange(nb).repeat_interleave(bs)
    nstart = s.gather(1, blk.expand(B, -1))
    blks = torch.cat((torch.full_like(cpos, -1), blk.expand(B, -1)), 1)
    mask = AttnMask(pos, torch.cat((cpos, nstart - 1), 1), blks, pos, blks, window)
    old = torch.zeros(B, 1, T + nb * bs, T + nb * bs, dtype=torch.bool)
    old[:, :, :T, :T] = causal_mask(cpos, cpos, window)
    old[:, 0, T:, :T] = (cpos[:, None, :] < nstart[..., None]) & (npos[:, :, None] - cpos[:, None, :] < window)
    old[:, 0, T:, T:] = blk[:, None] == blk[None, :]
    return mask, old


def decode_masks(n0, L, window):
    """decode.state's masks with a KV prefix of n0 keys: L causal new bytes, and a noisy block of L."""
    pos = torch.arange(n0, n0 + L)[None]
    kpos = torch.arange(n0 + L)[None]
    causal = AttnMask.causal(pos, kpos, window)
    blk = torch.cat((torch.full((1, n0), -1), torch.zeros(1, L, dtype=torch.long)), 1)
    block = AttnMask(pos, torch.full_like(pos, n0 - 1), torch.zeros_like(pos), kpos, blk, window)
    old_block = pos[:, None, :, None] - kpos[:, None, None, :] < window
    return (causal, causal_mask(pos, kpos, window)), (block, old_block)


def test_attn_masks_equal_the_dense_masks_they_replace():
    m, old = hybrid_mask(2, 21, torch.tensor([[3, 9, -1], [1, 5, 12]]), 4, 8)
    assert torch.equal(m.dense().expand_as(old), old)
    for n0, L in ((1, 1), (5, 4), (30, 8)):
        for new, old in decode_masks(n0, L, 16):
            assert torch.equal(new.dense(), old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["hybrid", "decode-causal", "decode-block", "causal", "full"])
def test_attention(dev, dtype, case, recompute=False):
    from bltlab.kernels import attention as K

    torch.manual_seed(len(case))
    B, H, hd = 2, 2, 16
    mask, is_causal = None, case == "causal"
    if case == "hybrid":
        mask, _ = hybrid_mask(B, 21, torch.tensor([[3, 9, -1], [1, 5, 12]]), 4, 8)
        Lq = Lk = mask.q_pos.shape[1]
    elif case.startswith("decode"):
        (c, _), (b, _) = decode_masks(19, 5, 16)
        mask = c if case == "decode-causal" else b
        B, Lq, Lk = 1, 5, 24
    else:
        Lq = Lk = 19
    mask = mask if mask is None else AttnMask(*(t.to(dev) for t in (mask.q_pos, mask.q_lim, mask.q_blk,
                                                                       mask.k_pos, mask.k_blk)), mask.window)
    q = torch.randn(B, H, Lq, hd, device=dev, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, H, Lk, hd, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    out = K.attention_triton(q, k, v, mask, is_causal, recompute_backward=recompute)
    ref = K.attention_reference(q, k, v, mask, is_causal)
    fwd, bwd = TOL[dtype]
    close(out, ref, fwd, "attention")
    g = torch.randn_like(ref)
    for a, b in zip(grads(out, [q, k, v], g), grads(ref, [q, k, v], g)):
        close(a, b, bwd, "attention grad")


def test_attention_recompute_backward(dev):
    """The cross-check path: Triton forward, the reference's backward."""
    test_attention(dev, torch.float32, "hybrid", recompute=True)


@pytest.mark.parametrize("case", ["causal-0", "causal-20", "causal-40", "hybrid"])
def test_attention_tiles_skipped_full_and_masked(dev, case):
    """Sequences of several 16 x 16 tiles (the interpreter's blocks): the kernels skip tiles the
    mask empties (above the diagonal, beyond the window, other noisy blocks), drop the mask on
    tiles it fills (below the diagonal, inside the window) and mask the rest; forward and backward
    must still equal the reference."""
    from bltlab.kernels import attention as K

    torch.manual_seed(2)
    if case == "hybrid":
        mask, _ = hybrid_mask(2, 50, torch.tensor([[3, 20, 35], [10, 30, -1]]), 8, 24)
    else:
        pos = torch.arange(70)[None]
        mask = AttnMask.causal(pos, pos, window=int(case.split("-")[1]))
    mask = AttnMask(*(t.to(dev) for t in (mask.q_pos, mask.q_lim, mask.q_blk, mask.k_pos, mask.k_blk)), mask.window)
    B, L = mask.q_blk.shape[0], mask.q_pos.shape[1]
    q, k, v = (torch.randn(B, 2, L, 16, device=dev, requires_grad=True) for _ in range(3))
    out, ref = K.attention_triton(q, k, v, mask), K.attention_reference(q, k, v, mask)
    close(out, ref, 1e-5, "attention")
    g = torch.randn_like(ref)
    for a, b in zip(grads(out, [q, k, v], g), grads(ref, [q, k, v], g)):
        close(a, b, 1e-5, "attention grad")


def test_attention_odd_head_dim_and_lengths(dev):
    from bltlab.kernels import attention as K

    torch.manual_seed(1)
    q = torch.randn(1, 3, 33, 24, device=dev)
    k, v = torch.randn(1, 3, 40, 24, device=dev), torch.randn(1, 3, 40, 24, device=dev)
    pos = torch.arange(7, 40, device=dev)[None]
    mask = AttnMask.causal(pos, torch.arange(40, device=dev)[None], window=9)
    close(K.attention_triton(q, k, v, mask), K.attention_reference(q, k, v, mask), 1e-5, "odd attention")


# ---- the whole model -------------------------------------------------------------------------
def test_model_training_step_triton_equals_reference(dev):
    """Loss and every gradient of a hybrid training step, tiny preset, Triton vs PyTorch."""
    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg.local_window = 12  # shorter than the sequence: the sliding window is exercised
    model = BLT(cfg).to(dev)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 260, (2, 20), generator=g)
    ids[:, 0] = 1
    ids = ids.to(dev)
    starts = model.patch(ids)
    bst, noisy, clean, masked, t = sample_blocks(ids.cpu(), starts.cpu(), 4, 3, g)
    bst, noisy, clean, masked, t = (x.to(dev) for x in (bst, noisy, clean, masked, t))

    def step():
        model.zero_grad()
        lc, ln = model(ids, starts, bst, noisy)
        loss = next_byte_loss(lc, ids) + diffusion_loss(ln, clean, masked, t, bst >= 0)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with kernels.backend("reference"):
        loss_ref, g_ref = step()
        ent_ref = model.entropy.entropies(ids)
    with kernels.backend("triton"):
        loss_tri, g_tri = step()
        ent_tri = model.entropy.entropies(ids)
    assert math.isclose(float(loss_tri), float(loss_ref), rel_tol=1e-5)
    close(ent_tri, ent_ref, 1e-5, "entropies")
    assert g_tri.keys() == g_ref.keys()
    for n in g_ref:
        close(g_tri[n], g_ref[n], 1e-4, n)
