"""RMSNorm (+ residual) fused into the projection that reads it, for decoding.

    s = x (+ residual);  n = RMSNorm(s) (rms_norm's rounding);  y = n @ W.T
and with `swiglu`, W = [gate; up] ([2F, D]) and y = silu(n @ gate.T) * (n @ up.T) ([.., F]).
Returns (s, y). In a decoding step every norm feeds one projection (query|key|value, the
SwiGLU's gate|up, the cross-attention's query, the output head), and at a few rows per step
each of those is a kernel launch of a few microseconds: one kernel here replaces two (three
with the SwiGLU). Each program takes BLOCK_R rows x BLOCK_O outputs: it recomputes its rows'
norm (two passes over D: sum of squares, then the normalised chunks into the dot), and the
programs of output block 0 store s. The residual may also be given as a projection not yet
computed, (h, P) for h @ P.T (an attention's or a SwiGLU's output projection): each program
then computes the rows of it that it reads, so that a layer's output projection runs inside
the next norm's kernel instead of as a launch of its own. Each program reads P whole in both
passes, which pays only for a small P (layers.LATER_MAX_BYTES).

`norm_qkv` is the same for self-attention's query|key|value, with RoPE and the KV-cache write
as its epilogue: each program takes output pairs (2j, 2j + 1), the pairs RoPE rotates, rotates
the queries' and keys', stores the queries laid out [B, L, H, hd] (attention's output follows
the queries' layout, and so reads as [B, L, D] without a copy) and the keys and values straight
into the static cache (one kernel where there were three or more).

Forward only: the static decoding engine runs these under no_grad, and `kernels.norm_linear`
/ `kernels.norm_qkv` send anything that needs a gradient to the reference.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..positions import rotate
from ._triton import tl, triton
from .attention import _dot
from .norm_ffn import rms_norm_reference, swiglu_reference

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---- references ------------------------------------------------------------------------------
def norm_linear_reference(x, norm_weight, eps: float, weight, residual=None, swiglu: bool = False):
    """(x + residual or x, the projection of its RMSNorm): what the unfused layers compute. residual:
    None, a tensor, or (h, P) for the projection h @ P.T."""
    if isinstance(residual, tuple):
        residual = F.linear(*residual)
    s, n = rms_norm_reference(x, norm_weight, eps, residual) if residual is not None \
        else (x, rms_norm_reference(x, norm_weight, eps))
    y = F.linear(n, weight)
    return s, swiglu_reference(*y.chunk(2, -1)) if swiglu else y


def norm_qkv_reference(x, norm_weight, eps: float, weight, residual, rot, pos, kv, rows):
    """norm_linear_reference's (s, q|k|v) for x [B, L, D], weight [3D, D]; then RoPE on the queries
    and keys at positions pos [B, L] (rot [T, hd/2, 2]: cos, sin of each position's angles, as
    layers.rope computes them), the keys and values written to kv [2, B', H, S, hd] at cache row
    rows[b] [B], positions pos. Returns (s, queries [B, H, L, hd], laid out [B, L, H, hd])."""
    s, y = norm_linear_reference(x, norm_weight, eps, weight, residual)
    rot = rot[pos]  # [B, L, hd/2, 2]
    B, L, D = x.shape
    qkv = y.view(B, L, 3, kv.shape[2], kv.shape[-1])
    if torch.compiler.is_compiling():  # the real form, which the compiler fuses
        qk = rotate(qkv[:, :, :2], rot[:, :, None, None, :, 0], rot[:, :, None, None, :, 1])
    else:  # the same products as one complex multiplication: one kernel where the real form takes seven
        c = torch.view_as_complex(qkv[:, :, :2].float().unflatten(-1, (-1, 2)))
        qk = torch.view_as_real(c * torch.view_as_complex(rot)[:, :, None, None]).flatten(-2).type_as(y)
    kv[0][rows[:, None], :, pos] = qk[:, :, 1]
    kv[1][rows[:, None], :, pos] = qkv[:, :, 2]
    return s, qk[:, :, 0].transpose(1, 2)


# ---- kernels ---------------------------------------------------------------------------------
@triton.jit
def _mm(a, b, DOT_FP32: tl.constexpr):
    """a @ b.T with an fp32 accumulator; with DOT_FP32, both operands in fp32 first."""
    if DOT_FP32:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return _dot(a, tl.trans(b), DOT_FP32)


@triton.jit
def _sum(x_ptr, r_ptr, p_ptr, rows, ks, rm, D, FP, HAS_RES: tl.constexpr, PRE: tl.constexpr, BLOCK_R: tl.constexpr,
         BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    """s = x + r on a [BLOCK_R, BLOCK_K] tile (columns ks), rounded to x's dtype as the unfused add
    is; fp32. With PRE, r = h @ P.T (h = r_ptr [N, FP], P [D, FP]) rounded as the unfused projection."""
    m = rm[:, None] & (ks < D)[None, :]
    s = tl.load(x_ptr + rows[:, None] * D + ks[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        if PRE:
            r = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
            for f0 in range(0, FP, BLOCK_K):
                fs = f0 + tl.arange(0, BLOCK_K)
                fm = (fs < FP)[None, :]
                h = tl.load(r_ptr + rows[:, None] * FP + fs[None, :], mask=rm[:, None] & fm, other=0.0)
                pw = tl.load(p_ptr + ks[:, None] * FP + fs[None, :], mask=(ks < D)[:, None] & fm, other=0.0)
                r += _mm(h, pw, DOT_FP32)
            r = r.to(x_ptr.dtype.element_ty).to(tl.float32)
        else:
            r = tl.load(r_ptr + rows[:, None] * D + ks[None, :], mask=m, other=0.0).to(tl.float32)
        s = (s + r).to(x_ptr.dtype.element_ty).to(tl.float32)
    return s


@triton.jit
def _norm_proj2(x_ptr, r_ptr, p_ptr, s_ptr, g_ptr, w_ptr, rows, outs_a, outs_b, om, N, D, FP, eps,
                HAS_RES: tl.constexpr, PRE: tl.constexpr, TWO: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    """fp32 [BLOCK_R, BLOCK_O] accumulators n @ W[outs_a].T and (with TWO) n @ W[outs_b].T, n the
    RMSNorm of x + r on `rows`; the programs of output block 0 store x + r."""
    rm = rows < N
    ss = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        s = _sum(x_ptr, r_ptr, p_ptr, rows, ks, rm, D, FP, HAS_RES, PRE, BLOCK_R, BLOCK_K, DOT_FP32)
        if HAS_RES:
            if tl.program_id(1) == 0:
                m = rm[:, None] & (ks < D)[None, :]
                tl.store(s_ptr + rows[:, None] * D + ks[None, :], s.to(s_ptr.dtype.element_ty), mask=m)
        ss += tl.sum(s * s, 1)
    rstd = 1.0 / tl.sqrt(ss / D + eps)
    acc_a = tl.zeros([BLOCK_R, BLOCK_O], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_R, BLOCK_O], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        km = (ks < D)[None, :]
        s = _sum(x_ptr, r_ptr, p_ptr, rows, ks, rm, D, FP, HAS_RES, PRE, BLOCK_R, BLOCK_K, DOT_FP32)
        g = tl.load(g_ptr + ks, mask=ks < D, other=0.0).to(tl.float32)
        n = ((s * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32) * g[None, :]).to(w_ptr.dtype.element_ty)
        wm = om[:, None] & km
        w = tl.load(w_ptr + outs_a[:, None] * D + ks[None, :], mask=wm, other=0.0)
        acc_a += _mm(n, w, DOT_FP32)
        if TWO:
            acc_b += _mm(n, tl.load(w_ptr + outs_b[:, None] * D + ks[None, :], mask=wm, other=0.0), DOT_FP32)
    return acc_a, acc_b


@triton.jit
def _norm_linear_fwd(x_ptr, r_ptr, p_ptr, s_ptr, g_ptr, w_ptr, y_ptr, N, D, FP, OUT, eps,
                     HAS_RES: tl.constexpr, PRE: tl.constexpr, SWIGLU: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    """y[rows, outs] for OUT outputs (with SWIGLU, gate rows outs and up rows OUT + outs of W)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    om = outs < OUT
    y, up = _norm_proj2(x_ptr, r_ptr, p_ptr, s_ptr, g_ptr, w_ptr, rows, outs, OUT + outs, om, N, D, FP, eps, HAS_RES,
                        PRE, SWIGLU, BLOCK_R, BLOCK_O, BLOCK_K, DOT_FP32)
    if SWIGLU:  # silu(a) * b on the projections rounded to their dtype, as the unfused ops see them
        a = y.to(y_ptr.dtype.element_ty).to(tl.float32)
        y = a * tl.sigmoid(a) * up.to(y_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + rows[:, None] * OUT + outs[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(rows < N)[:, None] & om[None, :])


@triton.jit
def _norm_qkv_fwd(x_ptr, r_ptr, p_ptr, s_ptr, g_ptr, w_ptr, rot_ptr, pos_ptr, crow_ptr, q_ptr, kv_ptr, N, L, D, FP,
                  HD, eps, s_kv, s_b, s_h, s_s, HAS_RES: tl.constexpr, PRE: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    """Output pairs j (columns 2j, 2j + 1 of q|k|v) of rows n = b L + l: rotated (queries, keys) by
    rot[pos[n], (2j mod hd) / 2], stored to q[b, l, h] or the cache kv[part - 1, crow[b], h, pos[n]]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    pairs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    pm = pairs < 3 * D // 2
    a, b = _norm_proj2(x_ptr, r_ptr, p_ptr, s_ptr, g_ptr, w_ptr, rows, 2 * pairs, 2 * pairs + 1, pm, N, D, FP, eps,
                       HAS_RES, PRE, True, BLOCK_R, BLOCK_O, BLOCK_K, DOT_FP32)
    a = a.to(w_ptr.dtype.element_ty).to(tl.float32)  # the projection's rounding, as RoPE reads it
    b = b.to(w_ptr.dtype.element_ty).to(tl.float32)
    rm = rows < N
    m = rm[:, None] & pm[None, :]
    col = 2 * pairs
    part, h, d = col // D, (col % D) // HD, col % HD  # [BLOCK_O]: 0 query, 1 key, 2 value
    pos = tl.load(pos_ptr + rows, mask=rm, other=0)
    ang = rot_ptr + (pos[:, None] * (HD // 2) + (d // 2)[None, :]) * 2
    c = tl.load(ang, mask=m, other=1.0)
    sn = tl.load(ang + 1, mask=m, other=0.0)
    turn = (part < 2)[None, :]  # values are not rotated
    ye = tl.where(turn, a * c - b * sn, a)
    yo = tl.where(turn, a * sn + b * c, b)
    q = q_ptr + rows[:, None] * D + (h * HD + d)[None, :]  # laid out [B, L, H, hd]
    qm = m & (part == 0)[None, :]
    tl.store(q, ye.to(q_ptr.dtype.element_ty), mask=qm)
    tl.store(q + 1, yo.to(q_ptr.dtype.element_ty), mask=qm)
    crow = tl.load(crow_ptr + rows // L, mask=rm, other=0)
    c = kv_ptr + (tl.maximum(part - 1, 0) * s_kv + h * s_h + d)[None, :] + (crow * s_b + pos * s_s)[:, None]
    cm = m & (part > 0)[None, :]
    tl.store(c, ye.to(kv_ptr.dtype.element_ty), mask=cm)
    tl.store(c + 1, yo.to(kv_ptr.dtype.element_ty), mask=cm)


# ---- launchers -------------------------------------------------------------------------------
def _inputs(name: str, x, norm_weight, weight, residual, out: int):
    """Checked flat inputs and outputs: x2 [N, D], the residual's (r2 [N, D] or h [N, FP], P [D, FP]
    or None), s, the kernel's keyword arguments (flags, blocks) and the grid for `out` outputs."""
    D = x.shape[-1]
    h, P = residual if isinstance(residual, tuple) else (residual, None)
    want = x.shape if P is None else (*x.shape[:-1], P.shape[1])
    if weight.shape[1] != D or (h is not None and h.shape != want) or (P is not None and P.shape[0] != D):
        shapes = [tuple(t.shape) for t in (h, P) if t is not None]
        raise ValueError(f"{name}: x {tuple(x.shape)}, residual {shapes} and weight {tuple(weight.shape)} do not fit")
    if torch.result_type(x, norm_weight) != weight.dtype or any(t.dtype != x.dtype for t in (h, P) if t is not None):
        raise ValueError(f"{name} needs the norm's output dtype to be the weight's ({weight.dtype}) and x, "
                         "residual of one dtype")
    x2 = x.reshape(-1, D).contiguous()
    r2 = x2 if h is None else h.reshape(-1, h.shape[-1]).contiguous()
    s = x if h is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    interp = not x.is_cuda  # the interpreter: small blocks for the tests' small widths (chunk edges),
    small = interp and max(D, r2.shape[1]) <= 64  # the GPU's for a real model's (its time is per block)
    kw = dict(HAS_RES=h is not None, PRE=P is not None, BLOCK_R=16, BLOCK_O=16 if interp else 32,
              BLOCK_K=16 if small else 64, DOT_FP32=interp or weight.dtype == torch.float32)
    grid = (triton.cdiv(x2.shape[0], kw["BLOCK_R"]), triton.cdiv(out, kw["BLOCK_O"]))
    return x2, (r2, x2 if P is None else P.contiguous(), r2.shape[1]), s, kw, grid


def norm_linear_triton(x, norm_weight, eps: float, weight, residual=None, swiglu: bool = False):
    """Like norm_linear_reference (forward only); x [..., D], residual: None, a tensor like x or (h, P)
    (h [..., FP], P [D, FP]), weight [OUT or 2F, D]."""
    out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    x2, (r2, p, fp), s, kw, grid = _inputs("norm_linear", x, norm_weight, weight, residual, out)
    y = torch.empty(*x.shape[:-1], out, dtype=weight.dtype, device=x.device)
    if x2.shape[0] and out:
        _norm_linear_fwd[grid](x2, r2, p, s, norm_weight.contiguous(), weight.contiguous(), y, x2.shape[0],
                               x2.shape[1], fp, out, eps, SWIGLU=swiglu, **kw)
    return s, y


def norm_qkv_triton(x, norm_weight, eps: float, weight, residual, rot, pos, kv, rows):
    """Like norm_qkv_reference (forward only): writes kv in place, returns (s, queries)."""
    B, L, D = x.shape
    H, hd = kv.shape[2], kv.shape[4]
    if (weight.shape[0] != 3 * D or H * hd != D or hd % 2 or rot.shape[1:] != (hd // 2, 2)
            or pos.shape != (B, L) or rows.shape != (B,)):
        raise ValueError(f"norm_qkv: x {tuple(x.shape)}, weight {tuple(weight.shape)}, cache {tuple(kv.shape)}, "
                         f"angles {tuple(rot.shape)}, positions {tuple(pos.shape)} and rows {tuple(rows.shape)} "
                         "do not fit")
    if kv.dtype != weight.dtype or kv.stride(-1) != 1 or rot.dtype != torch.float32:
        raise ValueError("norm_qkv needs a cache of the weight's dtype with unit stride per head dim, fp32 angles")
    x2, (r2, p, fp), s, kw, grid = _inputs("norm_qkv", x, norm_weight, weight, residual, 3 * D // 2)
    q = torch.empty(B, L, H, hd, dtype=weight.dtype, device=x.device).transpose(1, 2)
    if x2.shape[0]:
        _norm_qkv_fwd[grid](x2, r2, p, s, norm_weight.contiguous(), weight.contiguous(), rot.contiguous(),
                            pos.contiguous(), rows.contiguous(), q, kv, B * L, L, D, fp, hd, eps, kv.stride(0),
                            kv.stride(1), kv.stride(2), kv.stride(3), **kw)
    return s, q
