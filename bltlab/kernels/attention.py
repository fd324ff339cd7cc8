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
blocks with an online softmax (running max m, sum l), keeping fp32 accumulators; it stores
the output and logsumexp. Rows with no allowed key give 0 (SDPA would give NaN; the model
never makes one). Dots run in fp32 under the interpreter (its bf16 tl.dot is wrong) and for
fp32 inputs; bf16/fp16 inputs use the tensor cores with fp32 accumulation on a GPU.

Backward: NOT a Triton kernel yet. The autograd Function's backward recomputes the reference
(PyTorch SDPA with the dense mask) and differentiates it, so training with the Triton forward
is correct but saves nothing in the backward pass.
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


# ---- kernel ----------------------------------------------------------------------------------
@triton.jit
def _attn_fwd(Q, K, V, O, LSE, QPOS, QLIM, QBLK, KPOS, KBLK,
              sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, smq, smk,
              H, LQ, LK, HD, WINDOW, scale,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mm, dm = offs_m < LQ, offs_d < HD
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=mm[:, None] & dm[None, :],
                other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    qpos = tl.load(QPOS + b * smq + offs_m, mask=mm, other=0)
    qlim = tl.load(QLIM + b * smq + offs_m, mask=mm, other=-1)
    qblk = tl.load(QBLK + b * smq + offs_m, mask=mm, other=-1)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nm = offs_n < LK
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=nm[:, None] & dm[None, :],
                    other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=nm[:, None] & dm[None, :],
                    other=0.0)
        if DOT_FP32:
            k, v = k.to(tl.float32), v.to(tl.float32)
        kpos = tl.load(KPOS + b * smk + offs_n, mask=nm, other=0)
        kblk = tl.load(KBLK + b * smk + offs_n, mask=nm, other=-2)
        # the mask, from positions and block ids
        near = (WINDOW <= 0) | (qpos[:, None] - kpos[None, :] < WINDOW)
        clean = (kblk[None, :] == -1) & (kpos[None, :] <= qlim[:, None]) & near
        own = (kblk[None, :] >= 0) & (kblk[None, :] == qblk[:, None])
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(clean | own, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=mm[:, None] & dm[None, :])
    lse = tl.where(seen, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh * LQ + offs_m, lse, mask=mm)


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


def attention_forward(q, k, v, mask: AttnMask):
    """Triton forward only: (out [B, H, Lq, hd], logsumexp [B, H, Lq] fp32)."""
    B, H, Lq, hd = q.shape
    Lk = k.shape[2]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    lse = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    qt = [t.to(torch.int64).expand(B, Lq).contiguous() for t in (mask.q_pos, mask.q_lim, mask.q_blk)]
    kt = [t.to(torch.int64).expand(B, Lk).contiguous() for t in (mask.k_pos, mask.k_blk)]
    interp = not q.is_cuda
    block_m = 16 if interp else 64
    block_n = 16 if interp else 64
    block_d = max(16, triton.next_power_of_2(hd))
    if B * H * Lq:
        grid = (triton.cdiv(Lq, block_m), B * H)
        _attn_fwd[grid](q, k, v, o, lse, *qt, *kt,
                        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), Lq, Lk,
                        H, Lq, Lk, hd, int(mask.window), 1.0 / math.sqrt(hd),
                        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                        DOT_FP32=interp or q.dtype == torch.float32)
    return o, lse


class _Attention(torch.autograd.Function):
    """Triton forward; backward = reference recompute (PyTorch SDPA on the dense mask)."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        o, _ = attention_forward(q, k, v, mask)
        ctx.save_for_backward(q, k, v)
        ctx.mask = mask
        return o

    @staticmethod
    def backward(ctx, g):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            o = attention_reference(*leaves, ctx.mask)
            grads = torch.autograd.grad(o, leaves, g)
        return (*grads, None)


def attention_triton(q, k, v, mask, is_causal: bool = False):
    """Like attention_reference; a dense bool mask cannot be computed in-kernel, so it goes to SDPA."""
    if mask is not None and not isinstance(mask, AttnMask):
        return attention_reference(q, k, v, mask, is_causal)
    B, H, Lq, hd = q.shape
    return _Attention.apply(q, k, v, as_mask(mask, is_causal, B, Lq, k.shape[2], q.device))
