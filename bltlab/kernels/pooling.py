"""Patch max-pooling: the max of each patch's byte states, the query seed of PatchPooling.

Patches are contiguous runs of bytes, so a patch is (first byte, size). One program per
(row, patch, block of channels) walks the patch's bytes and keeps the running max and the
byte it came from; empty patches (padding) give 0, bytes with pid < 0 belong to no patch.
Backward sends each output gradient to the byte that won (ties: the first such byte; the
reference amax splits a tie evenly, which only matters for exactly equal states).
"""
from __future__ import annotations

import os

import torch

from ..patching import patch_bounds, patch_layout
from ._triton import tl, triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---- reference -------------------------------------------------------------------------------

def layout_max(bytes_: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Max over each patch's gathered bytes ([B, P, L, d], valid [B, P, L]) -> [B, P, d]; empty 0."""
    pooled = bytes_.masked_fill(~valid[..., None], float("-inf")).amax(2)
    return pooled.masked_fill(~valid[:, :, :1], 0.0)

def patch_max_reference(h, pids, n_patches: int, gathered=None):
    """h: [B, T, d] -> [B, P, d] max over each patch's bytes (0 for empty patches)."""
    return layout_max(*(gathered if gathered is not None else patch_layout(h, pids, n_patches)))


# ---- kernels ---------------------------------------------------------------------------------
@triton.jit
def _pool_fwd(h_ptr, first_ptr, size_ptr, out_ptr, arg_ptr, T, D, P, BLOCK: tl.constexpr):
    bp = tl.program_id(0).to(tl.int64)  # b * P + p
    b = bp // P
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    first = tl.load(first_ptr + bp)
    size = tl.load(size_ptr + bp)
    acc = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    arg = tl.full([BLOCK], -1, dtype=tl.int64)
    for j in range(0, size):
        t = first + j
        x = tl.load(h_ptr + (b * T + t) * D + cols, mask=m, other=float("-inf")).to(tl.float32)
        win = x > acc
        acc = tl.where(win, x, acc)
        arg = tl.where(win, t, arg)
    acc = tl.where(arg >= 0, acc, 0.0)  # empty patch (or all -inf: the reference keeps -inf there)
    tl.store(out_ptr + bp * D + cols, acc.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(arg_ptr + bp * D + cols, arg, mask=m)


@triton.jit
def _pool_bwd(g_ptr, arg_ptr, gh_ptr, T, D, P, BLOCK: tl.constexpr):
    bp = tl.program_id(0).to(tl.int64)
    b = bp // P
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    arg = tl.load(arg_ptr + bp * D + cols, mask=m, other=-1)
    g = tl.load(g_ptr + bp * D + cols, mask=m, other=0.0)
    # every (byte, channel) wins in at most one patch: plain stores, no atomics
    tl.store(gh_ptr + (b * T + tl.maximum(arg, 0)) * D + cols, g.to(gh_ptr.dtype.element_ty), mask=m & (arg >= 0))


class _PatchMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, pids, n_patches):
        B, T, D = h.shape
        h = h.contiguous()
        first, size = patch_bounds(pids, n_patches)
        out = torch.empty(B, n_patches, D, dtype=h.dtype, device=h.device)
        arg = torch.empty(B, n_patches, D, dtype=torch.int64, device=h.device)
        block = min(triton.next_power_of_2(D), 1024)
        grid = (B * n_patches, triton.cdiv(D, block))
        if B * n_patches:
            _pool_fwd[grid](h, first.contiguous(), size.contiguous(), out, arg, T, D, n_patches, BLOCK=block)
        ctx.save_for_backward(arg)
        ctx.meta = (h.shape, h.dtype, grid, block)
        return out

    @staticmethod
    def backward(ctx, g):
        (arg,) = ctx.saved_tensors
        shape, dtype, grid, block = ctx.meta
        gh = torch.zeros(shape, dtype=dtype, device=g.device)
        if grid[0]:
            _pool_bwd[grid](g.contiguous(), arg, gh, shape[1], shape[2], arg.shape[1], BLOCK=block)
        return gh, None, None


def patch_max_triton(h, pids, n_patches: int):
    return _PatchMax.apply(h, pids, n_patches)
