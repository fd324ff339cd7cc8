"""Flash attention whose mask is computed in the kernel from positions and block ids.

The mask is a layers.AttnMask: query i may read key j when
    key j is clean (k_blk = -1), k_pos[j] <= q_lim[i] and (window = 0 or q_pos[i] - k_pos[j] < window), or
    key j lies in the query's own noisy block (k_blk[j] = q_blk[i] >= 0).
That one rule covers every pattern the BLT uses: causal and sliding-window byte streams
(q_lim = q_pos), the block-diffusion training mask of model.forward_hybrid (a noisy block
reads the clean prefix before its start, q_lim = start - 1, and its own block both ways),
and attention over a KV prefix (keys = cached prefix + new keys).
Keys with k_blk < -1 are padding and never read.

Forward (Triton): one program per (block of BLOCK_M queries, batch x head) streams over key
blocks with an online softmax (running max m, sum l), keeping fp32 accumulators; it stores the
output and logsumexp. Each tile is first judged from a few bounds (the query block's least and
greatest position, clean limit and noisy block id; the same for the key block), O(BLOCK) work
instead of the O(BLOCK^2) mask: a tile the mask surely empties (above the diagonal, outside the
window, other noisy blocks) is skipped without loading keys, a tile it surely fills (clean keys
all visible to every query) is computed without a mask, and only the tiles in between build it.
Rows with no allowed key give 0 (SDPA would give NaN; the model never makes one). Dots run in
fp32 under the interpreter (its bf16 tl.dot is wrong) and for fp32 inputs; bf16/fp16 inputs use
the tensor cores with fp32 accumulation on a GPU.

Backward (Triton, FlashAttention-2 style): delta = rowsum(dO * O) (one PyTorch reduction),
then one kernel per block of keys accumulates dK, dV over all query blocks, and one kernel per
block of queries accumulates dQ over all key blocks; both recompute P = exp(S - logsumexp) with
the same in-kernel mask, so no [Lq, Lk] matrix is ever stored. `attention_triton(...,
recompute_backward=True)` instead differentiates the PyTorch reference (a cross-check).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ..positions import AttnMask
from ._triton import tl, triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---- reference -------------------------------------------------------------------------------
def attention_reference(q, k, v, mask, is_causal: bool = False):
    """q: [B, H, Lq, hd], k, v: [B, H, Lk, hd]; mask: None, bool [B or 1, 1, Lq, Lk] or AttnMask."""
    dense = mask.dense() if isinstance(mask, AttnMask) else mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, is_causal=is_causal and mask is None)


# ---- kernels ---------------------------------------------------------------------------------
@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    """a @ b with an fp32 accumulator; fp32 operands in full precision (no TF32 on a GPU)."""
    if DOT_FP32:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _mask_tile(qpos, qlim, qblk, kpos, kblk, WINDOW):
    """[BLOCK_M, BLOCK_N] bool: the AttnMask rule on one tile (True = may attend)."""
    near = (WINDOW <= 0) | (qpos[:, None] - kpos[None, :] < WINDOW)
    clean = (kblk[None, :] == -1) & (kpos[None, :] <= qlim[:, None]) & near
    return clean | ((kblk[None, :] >= 0) & (kblk[None, :] == qblk[:, None]))


# bounds of a tile's queries and keys; BIG stands in for "none" (no valid row, no noisy key)
BIG = tl.constexpr(1 << 40)


@triton.jit
def _q_bounds(qpos, qlim, qblk, offs_m, LQ):
    """(least position, greatest position, least clean limit, greatest clean limit, least and
    greatest noisy block id) over the block's queries before LQ (rows past it are never stored)."""
    ok = offs_m < LQ
    noisy = ok & (qblk >= 0)
    return (tl.min(tl.where(ok, qpos, BIG), 0), tl.max(tl.where(ok, qpos, -BIG), 0),
            tl.min(tl.where(ok, qlim, BIG), 0), tl.max(tl.where(ok, qlim, -BIG), 0),
            tl.min(tl.where(noisy, qblk, BIG), 0), tl.max(tl.where(noisy, qblk, -BIG), 0))


@triton.jit
def _k_bounds(kpos, kblk):
    """(least and greatest clean key position, number of clean keys, least and greatest noisy block
    id) over a block of keys (padding, k_blk < -1, is neither)."""
    clean = kblk == -1
    noisy = kblk >= 0
    return (tl.min(tl.where(clean, kpos, BIG), 0), tl.max(tl.where(clean, kpos, -BIG), 0),
            tl.sum(clean.to(tl.int32), 0), tl.min(tl.where(noisy, kblk, BIG), 0),
            tl.max(tl.where(noisy, kblk, -BIG), 0))


@triton.jit
def _tile_kind(qp_lo, qp_hi, ql_lo, ql_hi, qb_lo, qb_hi, kc_lo, kc_hi, n_clean, kb_lo, kb_hi, WINDOW,
               BLOCK_N: tl.constexpr):
    """(may any query read any key, may every query read every key) for one tile, from the bounds:
    the first is False only where the mask is surely empty, the second True only where it is
    surely full (every key clean, at or before every query's limit, inside every query's window)."""
    some_clean = (kc_lo <= ql_hi) & ((WINDOW <= 0) | (qp_lo - kc_hi < WINDOW))
    some_own = (kb_lo <= qb_hi) & (qb_lo <= kb_hi)
    full = (n_clean == BLOCK_N) & (kc_hi <= ql_lo) & ((WINDOW <= 0) | (qp_hi - kc_lo < WINDOW))
    return some_clean | some_own, full


@triton.jit
def _q_side(QPOS, QLIM, QBLK, b, smq, offs_m, LQ):
    """Positions, clean limits and block ids of queries offs_m (past LQ: a row that reads nothing)."""
    mm = offs_m < LQ
    return (tl.load(QPOS + b * smq + offs_m, mask=mm, other=0), tl.load(QLIM + b * smq + offs_m, mask=mm, other=-1),
            tl.load(QBLK + b * smq + offs_m, mask=mm, other=-1))


@triton.jit
def _k_side(KPOS, KBLK, b, smk, offs_n, LK):
    """Positions and block ids of keys offs_n (past LK: padding, never read)."""
    nm = offs_n < LK
    return tl.load(KPOS + b * smk + offs_n, mask=nm, other=0), tl.load(KBLK + b * smk + offs_n, mask=nm, other=-2)


@triton.jit
def _rows(X, b, h, sb, sh, sl, offs, offs_d, L, HD, DOT_FP32: tl.constexpr):
    """X[b, h, offs, :HD] as a [len(offs), BLOCK_D] tile, zero outside; fp32 when DOT_FP32."""
    x = tl.load(X + b * sb + h * sh + offs[:, None] * sl + offs_d[None, :],
                mask=(offs < L)[:, None] & (offs_d < HD)[None, :], other=0.0)
    if DOT_FP32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_rows(X, x, b, h, sb, sh, sl, offs, offs_d, L, HD):
    tl.store(X + b * sb + h * sh + offs[:, None] * sl + offs_d[None, :], x.to(X.dtype.element_ty),
             mask=(offs < L)[:, None] & (offs_d < HD)[None, :])


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, QPOS, QLIM, QBLK, KPOS, KBLK,
              sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, smq, smk,
              H, LQ, LK, HD, WINDOW, scale,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _rows(Q, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD, DOT_FP32)
    qpos, qlim, qblk = _q_side(QPOS, QLIM, QBLK, b, smq, offs_m, LQ)
    qp_lo, qp_hi, ql_lo, ql_hi, qb_lo, qb_hi = _q_bounds(qpos, qlim, qblk, offs_m, LQ)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp(s - m)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kpos, kblk = _k_side(KPOS, KBLK, b, smk, offs_n, LK)
        kc_lo, kc_hi, n_clean, kb_lo, kb_hi = _k_bounds(kpos, kblk)
        some, full = _tile_kind(qp_lo, qp_hi, ql_lo, ql_hi, qb_lo, qb_hi, kc_lo, kc_hi, n_clean, kb_lo, kb_hi,
                                WINDOW, BLOCK_N)
        if some:
            k = _rows(K, b, h, skb, skh, skn, offs_n, offs_d, LK, HD, DOT_FP32)
            v = _rows(V, b, h, svb, svh, svn, offs_n, offs_d, LK, HD, DOT_FP32)
            s = _dot(q, tl.trans(k), DOT_FP32) * scale
            if not full:
                s = tl.where(_mask_tile(qpos, qlim, qblk, kpos, kblk, WINDOW), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_FP32)
            m_i = m_new
    seen = l_i > 0
    _store_rows(O, acc / tl.where(seen, l_i, 1.0)[:, None], b, h, sob, soh, som, offs_m, offs_d, LQ, HD)
    lse = tl.where(seen, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh * LQ + offs_m, lse, mask=offs_m < LQ)


@triton.jit
def _probs(q, k, lse, full, qpos, qlim, qblk, kpos, kblk, WINDOW, scale, DOT_FP32: tl.constexpr):
    """P = exp(S - logsumexp) on one tile, 0 where the mask forbids (no mask on a full tile)."""
    p = tl.exp(_dot(q, tl.trans(k), DOT_FP32) * scale - lse[:, None])
    if not full:
        p = tl.where(_mask_tile(qpos, qlim, qblk, kpos, kblk, WINDOW), p, 0.0)
    return p


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, QPOS, QLIM, QBLK, KPOS, KBLK,
                   sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smq, smk,
                   H, LQ, LK, HD, WINDOW, scale,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr):
    """dK, dV of one block of keys; Q and dO share strides, and so do K, dK and V, dV."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _rows(K, b, h, skb, skh, skn, offs_n, offs_d, LK, HD, DOT_FP32)
    v = _rows(V, b, h, svb, svh, svn, offs_n, offs_d, LK, HD, DOT_FP32)
    kpos, kblk = _k_side(KPOS, KBLK, b, smk, offs_n, LK)
    kc_lo, kc_hi, n_clean, kb_lo, kb_hi = _k_bounds(kpos, kblk)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start in range(0, LQ, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        qpos, qlim, qblk = _q_side(QPOS, QLIM, QBLK, b, smq, offs_m, LQ)
        qp_lo, qp_hi, ql_lo, ql_hi, qb_lo, qb_hi = _q_bounds(qpos, qlim, qblk, offs_m, LQ)
        some, full = _tile_kind(qp_lo, qp_hi, ql_lo, ql_hi, qb_lo, qb_hi, kc_lo, kc_hi, n_clean, kb_lo, kb_hi,
                                WINDOW, BLOCK_N)
        if some:
            q = _rows(Q, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD, DOT_FP32)
            do = _rows(DO, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD, DOT_FP32)
            lse = tl.load(LSE + bh * LQ + offs_m, mask=offs_m < LQ, other=float("inf"))
            delta = tl.load(DELTA + bh * LQ + offs_m, mask=offs_m < LQ, other=0.0)
            p = _probs(q, k, lse, full, qpos, qlim, qblk, kpos, kblk, WINDOW, scale, DOT_FP32)  # [BLOCK_M, BLOCK_N]
            dv += _dot(tl.trans(p.to(do.dtype)), do, DOT_FP32)
            ds = p * (_dot(do, tl.trans(v), DOT_FP32) - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, DOT_FP32)
    _store_rows(DK, dk * scale, b, h, skb, skh, skn, offs_n, offs_d, LK, HD)
    _store_rows(DV, dv, b, h, svb, svh, svn, offs_n, offs_d, LK, HD)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, QPOS, QLIM, QBLK, KPOS, KBLK,
                 sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smq, smk,
                 H, LQ, LK, HD, WINDOW, scale,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr):
    """dQ of one block of queries (Q, dO and dQ share strides)."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _rows(Q, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD, DOT_FP32)
    do = _rows(DO, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD, DOT_FP32)
    lse = tl.load(LSE + bh * LQ + offs_m, mask=offs_m < LQ, other=float("inf"))
    delta = tl.load(DELTA + bh * LQ + offs_m, mask=offs_m < LQ, other=0.0)
    qpos, qlim, qblk = _q_side(QPOS, QLIM, QBLK, b, smq, offs_m, LQ)
    qp_lo, qp_hi, ql_lo, ql_hi, qb_lo, qb_hi = _q_bounds(qpos, qlim, qblk, offs_m, LQ)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kpos, kblk = _k_side(KPOS, KBLK, b, smk, offs_n, LK)
        kc_lo, kc_hi, n_clean, kb_lo, kb_hi = _k_bounds(kpos, kblk)
        some, full = _tile_kind(qp_lo, qp_hi, ql_lo, ql_hi, qb_lo, qb_hi, kc_lo, kc_hi, n_clean, kb_lo, kb_hi,
                                WINDOW, BLOCK_N)
        if some:
            k = _rows(K, b, h, skb, skh, skn, offs_n, offs_d, LK, HD, DOT_FP32)
            v = _rows(V, b, h, svb, svh, svn, offs_n, offs_d, LK, HD, DOT_FP32)
            p = _probs(q, k, lse, full, qpos, qlim, qblk, kpos, kblk, WINDOW, scale, DOT_FP32)
            ds = p * (_dot(do, tl.trans(v), DOT_FP32) - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, DOT_FP32)
    _store_rows(DQ, dq * scale, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD)


# ---- launcher + autograd ---------------------------------------------------------------------
def as_mask(mask, is_causal: bool, B: int, Lq: int, Lk: int, device) -> AttnMask:
    """The AttnMask equal to SDPA's (mask=None, is_causal) pair."""
    if isinstance(mask, AttnMask):
        return mask
    qpos = torch.arange(Lq, device=device)[None]
    kpos = torch.arange(Lk, device=device)[None]
    if is_causal:
        return AttnMask.causal(qpos, kpos)
    return AttnMask.causal(torch.full_like(qpos, Lk), kpos)  # every key visible


def _mask_rows(ts, B: int, L: int):
    """Mask tensors [B or 1, L] as int64 rows sharing one row stride (0: one row for the batch);
    a copy only where they are not already so laid out."""
    ts = [t.to(torch.int64) for t in ts]
    (rows, length), st = ts[0].shape, ts[0].stride()
    if length == L and rows in (1, B) and st[1] == 1 and all(t.shape == ts[0].shape and t.stride() == st for t in ts):
        return ts, st[0] if rows == B else 0
    return [t.expand(B, L).contiguous() for t in ts], L


def _setup(q, k, mask: AttnMask):
    """Mask tensors, their row strides, block sizes, and the kernels' shared trailing arguments."""
    B, H, Lq, hd = q.shape
    Lk = k.shape[2]
    qt, smq = _mask_rows((mask.q_pos, mask.q_lim, mask.q_blk), B, Lq)
    kt, smk = _mask_rows((mask.k_pos, mask.k_blk), B, Lk)
    interp = not q.is_cuda
    blocks = dict(BLOCK_M=16 if interp else 64, BLOCK_N=16 if interp else 64,
                  BLOCK_D=max(16, triton.next_power_of_2(hd)), DOT_FP32=interp or q.dtype == torch.float32)
    return qt + kt, (smq, smk), (H, Lq, Lk, hd, int(mask.window), 1.0 / math.sqrt(hd)), blocks


def _strides(*ts):
    return [st for t in ts for st in t.stride()[:3]]


def attention_forward(q, k, v, mask: AttnMask):
    """Triton forward: (out [B, H, Lq, hd], logsumexp [B, H, Lq] fp32; +inf on rows with no key)."""
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, Lq, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    mt, sm, dims, blocks = _setup(q, k, mask)
    if B * H * Lq:
        grid = (triton.cdiv(Lq, blocks["BLOCK_M"]), B * H)
        _attn_fwd[grid](q, k, v, o, lse, *mt, *_strides(q, k, v, o), *sm, *dims, **blocks)
    return o, lse


def attention_backward(q, k, v, o, lse, do, mask: AttnMask):
    """Triton backward: (dq, dk, dv)."""
    q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    delta = (o.float() * do.float()).sum(-1)  # [B, H, Lq]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mt, sm, dims, blocks = _setup(q, k, mask)
    if B * H * Lq and Lk:
        args = (*mt, *_strides(q, k, v), *sm, *dims)
        _attn_bwd_dkdv[(triton.cdiv(Lk, blocks["BLOCK_N"]), B * H)](q, k, v, do, lse, delta, dk, dv, *args, **blocks)
        _attn_bwd_dq[(triton.cdiv(Lq, blocks["BLOCK_M"]), B * H)](q, k, v, do, lse, delta, dq, *args, **blocks)
    return dq, dk, dv


class _Attention(torch.autograd.Function):
    """Triton forward and backward (or, with recompute, the reference's backward)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, recompute):
        o, lse = attention_forward(q, k, v, mask)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.mask, ctx.recompute = mask, recompute
        return o

    @staticmethod
    def backward(ctx, g):
        q, k, v, o, lse = ctx.saved_tensors
        if not ctx.recompute:
            return (*attention_backward(q, k, v, o, lse, g, ctx.mask), None, None)
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            grads = torch.autograd.grad(attention_reference(*leaves, ctx.mask), leaves, g)
        return (*grads, None, None)


def attention_triton(q, k, v, mask, is_causal: bool = False, recompute_backward: bool = False):
    """Like attention_reference; a dense bool mask cannot be computed in-kernel, so it goes to SDPA."""
    if mask is not None and not isinstance(mask, AttnMask):
        return attention_reference(q, k, v, mask, is_causal)
    B, H, Lq, hd = q.shape
    return _Attention.apply(q, k, v, as_mask(mask, is_causal, B, Lq, k.shape[2], q.device), recompute_backward)
