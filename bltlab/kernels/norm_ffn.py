"""Fused RMSNorm (optionally after a residual add) and the SwiGLU activation silu(a) * b.

RMSNorm, as layers.RMSNorm computes it: s = x (+ residual); n = s * rsqrt(mean(s^2) + eps) in
fp32, cast back to s's dtype, times the weight. One program normalises rows of width D in one
block (D <= 64K). Backward (per row, fp32): with g_n = g_y * w and n = s * r,
    g_s = r * (g_n - n * mean(g_n * n)),   g_w = sum over rows of g_y * n,
plus the gradient arriving at s itself when the residual sum is returned too.
SwiGLU: y = silu(a) * b; g_a = g * b * sig(a) * (1 + a * (1 - sig(a))), g_b = g * silu(a).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ._triton import tl, triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # how the kernels below were defined


# ---- references (the model's own PyTorch code) ------------------------------------------------
def rms_norm_reference(x, weight, eps: float, residual=None):
    """x: [..., D] -> RMSNorm(x); with residual: (x + residual, RMSNorm(x + residual)).

    s * rsqrt(mean(s^2) + eps) in fp32 (a float64 s too), cast back to s's dtype, times the
    weight, which stays outside F.rms_norm so that the cast comes before it as it always did. On a
    CPU F.rms_norm runs the written-out form's five operations from C++ (one Python call per norm
    where there were six: decoding makes about 25 per byte), bit for bit the same in fp32, bf16 and
    fp64 (tests/test_kernels.py); on a GPU it is one fused kernel, whose sum may round otherwise in
    the last place (the Triton kernel, not this, is what a GPU runs unless asked)."""
    s = x if residual is None else x + residual
    y = F.rms_norm(s.float(), s.shape[-1:], eps=eps).type_as(s) * weight
    return y if residual is None else (s, y)


def swiglu_reference(a, b):
    return F.silu(a) * b


# ---- kernels -------------------------------------------------------------------------------
@triton.jit
def _rms_fwd(x_ptr, r_ptr, s_ptr, y_ptr, w_ptr, rstd_ptr, D, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    s = tl.load(x_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        s = s + tl.load(r_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
        s = s.to(s_ptr.dtype.element_ty)  # the sum is materialised in its dtype, as x + residual is
        tl.store(s_ptr + row * D + cols, s, mask=m)
        s = s.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, 0) / D + eps)
    n = (s * rstd).to(s_ptr.dtype.element_ty).to(tl.float32)  # .type_as(s)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + cols, (n * w).to(y_ptr.dtype.element_ty), mask=m)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_bwd(s_ptr, gy_ptr, gs_in_ptr, w_ptr, rstd_ptr, gs_ptr, gw_ptr, N, D, HAS_GS: tl.constexpr,
             BLOCK: tl.constexpr):
    """Each program walks rows pid, pid + P, ... and keeps a partial weight gradient [D]."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    gw = tl.zeros([BLOCK], dtype=tl.float32)
    for row in range(pid, N, P):
        r64 = tl.cast(row, tl.int64)
        s = tl.load(s_ptr + r64 * D + cols, mask=m, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + r64 * D + cols, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        n = s * rstd
        gw += gy * n
        gn = gy * w
        gs = rstd * (gn - n * (tl.sum(gn * n, 0) / D))
        if HAS_GS:
            gs += tl.load(gs_in_ptr + r64 * D + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(gs_ptr + r64 * D + cols, gs, mask=m)
    tl.store(gw_ptr + pid * D + cols, gw, mask=m)


# a and b are read as rows of width W at row strides sa, sb (the halves of one [N, 2W] matrix
# need no copy); y and the gradients are contiguous
@triton.jit
def _swiglu_fwd(a_ptr, b_ptr, y_ptr, n, W, sa, sb, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    row, col = offs // W, offs % W
    a = tl.load(a_ptr + row * sa + col, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * sb + col, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (a * tl.sigmoid(a) * b).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd(a_ptr, b_ptr, g_ptr, ga_ptr, gb_ptr, n, W, sa, sb, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    row, col = offs // W, offs % W
    a = tl.load(a_ptr + row * sa + col, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * sb + col, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    tl.store(ga_ptr + offs, (g * b * sig * (1.0 + a * (1.0 - sig))).to(ga_ptr.dtype.element_ty), mask=m)
    tl.store(gb_ptr + offs, (g * a * sig).to(gb_ptr.dtype.element_ty), mask=m)


# ---- launchers + autograd --------------------------------------------------------------------
def _block(D: int) -> int:
    if D > 65536:
        raise ValueError(f"rms_norm kernel handles rows up to 65536 wide, got {D}")
    return triton.next_power_of_2(D)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, residual):
        shape, D = x.shape, x.shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        r2 = x2 if residual is None else residual.reshape(-1, D).contiguous()
        sdt = x.dtype if residual is None else torch.result_type(x, residual)
        s = x2 if residual is None else torch.empty(x2.shape, dtype=sdt, device=x.device)
        y = torch.empty(x2.shape, dtype=torch.result_type(s, weight), device=x.device)
        rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
        if x2.shape[0]:
            _rms_fwd[(x2.shape[0],)](x2, r2, s, y, weight.contiguous(), rstd, D, eps,
                                     HAS_RES=residual is not None, BLOCK=_block(D))
        ctx.save_for_backward(s, weight, rstd)
        ctx.has_res, ctx.dtypes = residual is not None, (x.dtype, None if residual is None else residual.dtype)
        y = y.view(shape)
        return y if residual is None else (s.view(shape), y)

    @staticmethod
    def backward(ctx, *grads):
        s, weight, rstd = ctx.saved_tensors
        gs_in, gy = (None, grads[0]) if not ctx.has_res else grads
        N, D = s.shape
        gy = gy.reshape(N, D).contiguous()
        if gs_in is not None:
            gs_in = gs_in.reshape(N, D).contiguous()
        P = max(1, min(N, 256 if s.is_cuda else 8))
        gs = torch.empty(N, D, dtype=torch.float32, device=s.device)
        gw = torch.zeros(P, D, dtype=torch.float32, device=s.device)
        if N:
            _rms_bwd[(P,)](s, gy, gy if gs_in is None else gs_in, weight, rstd, gs, gw, N, D,
                           HAS_GS=gs_in is not None, BLOCK=_block(D))
        shape = grads[-1].shape
        gx = gs.to(ctx.dtypes[0]).view(shape)
        gr = None if not ctx.has_res else gs.to(ctx.dtypes[1]).view(shape)
        return gx, gw.sum(0).to(weight.dtype), None, gr


def rms_norm_triton(x, weight, eps: float, residual=None):
    return _RMSNorm.apply(x, weight, eps, residual)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [N, W] rows with unit column stride: a view where one exists (a column slice of a
    contiguous matrix, as swiglu's gate and up halves are), else a copy."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 and x2.shape[0] > 0 else x2.contiguous()


class _SwiGLU(torch.autograd.Function):
    BLOCK = 1024

    @staticmethod
    def forward(ctx, a, b):
        a2, b2 = _rows(a), _rows(b)
        y = torch.empty(a.shape, dtype=torch.result_type(a, b), device=a.device)
        n, W = a.numel(), a.shape[-1]
        if n:
            _swiglu_fwd[(triton.cdiv(n, _SwiGLU.BLOCK),)](a2, b2, y, n, W, a2.stride(0), b2.stride(0),
                                                         BLOCK=_SwiGLU.BLOCK)
        ctx.save_for_backward(a2, b2)
        ctx.shape = a.shape
        return y

    @staticmethod
    def backward(ctx, g):
        a2, b2 = ctx.saved_tensors
        ga = torch.empty(ctx.shape, dtype=a2.dtype, device=a2.device)
        gb = torch.empty(ctx.shape, dtype=b2.dtype, device=b2.device)
        n, W = ga.numel(), ga.shape[-1]
        if n:
            _swiglu_bwd[(triton.cdiv(n, _SwiGLU.BLOCK),)](a2, b2, g.contiguous(), ga, gb, n, W, a2.stride(0),
                                                         b2.stride(0), BLOCK=_SwiGLU.BLOCK)
        return ga, gb


def swiglu_triton(a, b):
    if a.shape != b.shape:
        raise ValueError(f"swiglu needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _SwiGLU.apply(a, b)
