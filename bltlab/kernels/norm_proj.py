"""RMSNorm (+ residual) fused into the projection that reads it, for decoding.

    s = x (+ residual);  n = RMSNorm(s) (rms_norm's rounding);  y = n @ W.T
and with `swiglu`, W = [gate; up] ([2F, D]) and y = silu(n @ gate.T) * (n @ up.T) ([.., F]).
Returns (s, y). In a decoding step every norm feeds one projection (query|key|value, the
SwiGLU's gate|up, the cross-attention's query, the output head), and at a few rows per step
each of those is a kernel launch of a few microseconds: one kernel here replaces two (three
with the SwiGLU). Each program takes BLOCK_R rows x BLOCK_O outputs: it recomputes its rows'
norm (two passes over D: sum of squares, then the normalised chunks into the dot), and the
programs of output block 0 store s. Forward only: the static decoding engine runs it under
no_grad, and `kernels.norm_linear` sends anything that needs a gradient to the reference.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .attention import _dot
from .norm_ffn import rms_norm_reference, swiglu_reference

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---- reference -------------------------------------------------------------------------------
def norm_linear_reference(x, norm_weight, eps: float, weight, residual=None, swiglu: bool = False):
    """(x + residual or x, the projection of its RMSNorm): what the unfused layers compute."""
    s, n = rms_norm_reference(x, norm_weight, eps, residual) if residual is not None \
        else (x, rms_norm_reference(x, norm_weight, eps))
    y = F.linear(n, weight)
    return s, swiglu_reference(*y.chunk(2, -1)) if swiglu else y


# ---- kernel ----------------------------------------------------------------------------------
@triton.jit
def _sum(x_ptr, r_ptr, rows, ks, m, D, HAS_RES: tl.constexpr):
    """s = x + r on a [BLOCK_R, BLOCK_K] tile, rounded to x's dtype as the unfused add is; fp32."""
    s = tl.load(x_ptr + rows[:, None] * D + ks[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        s = s + tl.load(r_ptr + rows[:, None] * D + ks[None, :], mask=m, other=0.0).to(tl.float32)
        s = s.to(x_ptr.dtype.element_ty).to(tl.float32)
    return s


@triton.jit
def _norm_linear_fwd(x_ptr, r_ptr, s_ptr, g_ptr, w_ptr, y_ptr, N, D, OUT, eps,
                     HAS_RES: tl.constexpr, SWIGLU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    """y[rows, outs] for OUT outputs (with SWIGLU, gate rows outs and up rows OUT + outs of W)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    rm, om = rows < N, outs < OUT
    ss = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        m = rm[:, None] & (ks < D)[None, :]
        s = _sum(x_ptr, r_ptr, rows, ks, m, D, HAS_RES)
        if HAS_RES:
            if tl.program_id(1) == 0:
                tl.store(s_ptr + rows[:, None] * D + ks[None, :], s.to(s_ptr.dtype.element_ty), mask=m)
        ss += tl.sum(s * s, 1)
    rstd = 1.0 / tl.sqrt(ss / D + eps)
    acc = tl.zeros([BLOCK_R, BLOCK_O], dtype=tl.float32)
    up = tl.zeros([BLOCK_R, BLOCK_O], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        km = (ks < D)[None, :]
        s = _sum(x_ptr, r_ptr, rows, ks, rm[:, None] & km, D, HAS_RES)
        g = tl.load(g_ptr + ks, mask=ks < D, other=0.0).to(tl.float32)
        n = ((s * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32) * g[None, :]).to(w_ptr.dtype.element_ty)
        wm = om[:, None] & km
        w = tl.load(w_ptr + outs[:, None] * D + ks[None, :], mask=wm, other=0.0)
        if DOT_FP32:
            n, w = n.to(tl.float32), w.to(tl.float32)
        acc += _dot(n, tl.trans(w), DOT_FP32)
        if SWIGLU:
            u = tl.load(w_ptr + (OUT + outs)[:, None] * D + ks[None, :], mask=wm, other=0.0)
            if DOT_FP32:
                u = u.to(tl.float32)
            up += _dot(n, tl.trans(u), DOT_FP32)
    y = acc
    if SWIGLU:  # silu(a) * b on the projections rounded to their dtype, as the unfused ops see them
        a = acc.to(y_ptr.dtype.element_ty).to(tl.float32)
        y = a * tl.sigmoid(a) * up.to(y_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + rows[:, None] * OUT + outs[None, :], y.to(y_ptr.dtype.element_ty), mask=rm[:, None] & om[None, :])


# ---- launcher --------------------------------------------------------------------------------
def norm_linear_triton(x, norm_weight, eps: float, weight, residual=None, swiglu: bool = False):
    """Like norm_linear_reference (forward only); x, residual [..., D], weight [OUT or 2F, D]."""
    D = x.shape[-1]
    out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    if weight.shape[1] != D or (residual is not None and residual.shape != x.shape):
        rs = None if residual is None else tuple(residual.shape)
        raise ValueError(f"norm_linear: x {tuple(x.shape)}, residual {rs} and weight {tuple(weight.shape)} do not fit")
    if torch.result_type(x, norm_weight) != weight.dtype or (residual is not None and residual.dtype != x.dtype):
        raise ValueError(f"norm_linear needs the norm's output dtype to be the weight's ({weight.dtype}) and x, "
                         "residual of one dtype")
    x2 = x.reshape(-1, D).contiguous()
    r2 = x2 if residual is None else residual.reshape(-1, D).contiguous()
    s = x if residual is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y = torch.empty(*x.shape[:-1], out, dtype=weight.dtype, device=x.device)
    N = x2.shape[0]
    if N and out:
        interp = not x.is_cuda
        blocks = dict(BLOCK_R=16, BLOCK_O=16 if interp else 32, BLOCK_K=16 if interp else 64,
                      DOT_FP32=interp or weight.dtype == torch.float32)
        grid = (triton.cdiv(N, blocks["BLOCK_R"]), triton.cdiv(out, blocks["BLOCK_O"]))
        _norm_linear_fwd[grid](x2, r2, s, norm_weight.contiguous(), weight.contiguous(), y, N, D, out, eps,
                               HAS_RES=residual is not None, SWIGLU=swiglu, **blocks)
    return s, y
