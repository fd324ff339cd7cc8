"""Flash attention whose mask is computed in the kernel from positions and block ids.

The mask is a layers.AttnMask: query i may read key j when
    key j is clean (k_blk = -1), k_pos[j] <= q_lim[i] and (window = 0 or q_pos[i] - k_pos[j] < window), or
    key j lies in the query's own noisy block (k_blk[j] = q_blk[i] >= 0).
That one rule covers every pattern the BLT uses: causal and sliding-window byte streams
(q_lim = q_pos), the block-diffusion training mask of model.forward_hybrid (a noisy block
reads the clean prefix before its start, q_lim = start - 1, and its own block both ways),
and decoding with a KV prefix (keys = cached prefix + new keys, as in decode.state).
Keys with k_blk < -1 are padding and never read.

Forward (Triton): one program per (block of BLOCK_M queries, batch x head) streams over key
blocks (skipping tiles the mask leaves empty: above the diagonal, outside the window, other
noisy blocks) with an online softmax (running max m, sum l), keeping fp32 accumulators; it stores
the output and logsumexp. Rows with no allowed key give 0 (SDPA would give NaN; the model
never makes one). Dots run in fp32 under the interpreter (its bf16 tl.dot is wrong) and for
fp32 inputs; bf16/fp16 inputs use the tensor cores with fp32 accumulation on a GPU.

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
import triton
import triton.language as tl

from ..layers import AttnMask

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
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp(s - m)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kpos, kblk = _k_side(KPOS, KBLK, b, smk, offs_n, LK)
        allowed = _mask_tile(qpos, qlim, qblk, kpos, kblk, WINDOW)
        if tl.max(allowed.to(tl.int32)) > 0:  # skip tiles the mask empties (causal, window, other blocks)
            k = _rows(K, b, h, skb, skh, skn, offs_n, offs_d, LK, HD, DOT_FP32)
            v = _rows(V, b, h, svb, svh, svn, offs_n, offs_d, LK, HD, DOT_FP32)
            s = tl.where(allowed, _dot(q, tl.trans(k), DOT_FP32) * scale, float("-inf"))
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
def _probs(q, k, lse, allowed, scale, DOT_FP32: tl.constexpr):
    """P = exp(S - logsumexp) on one tile, 0 where the mask forbids."""
    return tl.where(allowed, tl.exp(_dot(q, tl.trans(k), DOT_FP32) * scale - lse[:, None]), 0.0)


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
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start in range(0, LQ, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        qpos, qlim, qblk = _q_side(QPOS, QLIM, QBLK, b, smq, offs_m, LQ)
        allowed = _mask_tile(qpos, qlim, qblk, kpos, kblk, WINDOW)
        if tl.max(allowed.to(tl.int32)) > 0:
            q = _rows(Q, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD, DOT_FP32)
            do = _rows(DO, b, h, sqb, sqh, sqm, offs_m, offs_d, LQ, HD, DOT_FP32)
            lse = tl.load(LSE + bh * LQ + offs_m, mask=offs_m < LQ, other=float("inf"))
            delta = tl.load(DELTA + bh * LQ + offs_m, mask=offs_m < LQ, other=0.0)
            p = _probs(q, k, lse, allowed, scale, DOT_FP32)  # [BLOCK_M, BLOCK_N]
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
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kpos, kblk = _k_side(KPOS, KBLK, b, smk, offs_n, LK)
        allowed = _mask_tile(qpos, qlim, qblk, kpos, kblk, WINDOW)
        if tl.max(allowed.to(tl.int32)) > 0:
            k = _rows(K, b, h, skb, skh, skn, offs_n, offs_d, LK, HD, DOT_FP32)
            v = _rows(V, b, h, svb, svh, svn, offs_n, offs_d, LK, HD, DOT_FP32)
            p = _probs(q, k, lse, allowed, scale, DOT_FP32)
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


def _setup(q, k, mask: AttnMask):
    """Mask tensors as [B, L] int64 rows, block sizes, and the kernels' shared trailing arguments."""
    B, H, Lq, hd = q.shape
    Lk = k.shape[2]
    qt = [t.to(torch.int64).expand(B, Lq).contiguous() for t in (mask.q_pos, mask.q_lim, mask.q_blk)]
    kt = [t.to(torch.int64).expand(B, Lk).contiguous() for t in (mask.k_pos, mask.k_blk)]
    interp = not q.is_cuda
    blocks = dict(BLOCK_M=16 if interp else 64, BLOCK_N=16 if interp else 64,
                  BLOCK_D=max(16, triton.next_power_of_2(hd)), DOT_FP32=interp or q.dtype == torch.float32)
    return qt + kt, (H, Lq, Lk, hd, int(mask.window), 1.0 / math.sqrt(hd)), blocks


def _strides(*ts):
    return [st for t in ts for st in t.stride()[:3]]


def attention_forward(q, k, v, mask: AttnMask):
    """Triton forward: (out [B, H, Lq, hd], logsumexp [B, H, Lq] fp32; +inf on rows with no key)."""
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, Lq, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    mt, dims, blocks = _setup(q, k, mask)
    if B * H * Lq:
        grid = (triton.cdiv(Lq, blocks["BLOCK_M"]), B * H)
        _attn_fwd[grid](q, k, v, o, lse, *mt, *_strides(q, k, v, o), Lq, k.shape[2], *dims, **blocks)
    return o, lse


def attention_backward(q, k, v, o, lse, do, mask: AttnMask):
    """Triton backward: (dq, dk, dv)."""
    q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    delta = (o.float() * do.float()).sum(-1)  # [B, H, Lq]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mt, dims, blocks = _setup(q, k, mask)
    if B * H * Lq and Lk:
        args = (*mt, *_strides(q, k, v), Lq, Lk, *dims)
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
