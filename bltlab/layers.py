"""Transformer building blocks shared by the entropy model and the three BLT parts.

Pure PyTorch. Attention takes explicit positions and a boolean mask so that the same
code serves causal byte streams, sliding windows and the block-diffusion mask.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def ffn_hidden(dim: int, mult: float) -> int:
    return 32 * math.ceil(dim * mult / 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mult: float, hidden: int = 0):
        super().__init__()
        hidden = hidden or ffn_hidden(dim, mult)
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding. x: [B, H, L, hd], pos: [B, L] (any integer positions)."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    ang = pos.float()[:, None, :, None] * inv  # [B, 1, L, hd/2]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE.

    `prefix` optionally holds already computed (k, v) [B, H, S, hd] (a KV cache) that the
    queries may also attend to; the mask then covers [prefix keys | new keys].
    """

    def __init__(self, dim: int, heads: int, theta: float):
        super().__init__()
        self.heads, self.theta = heads, theta
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def qkv(self, x: torch.Tensor, pos: torch.Tensor):
        B, L, D = x.shape
        split = lambda t: t.view(B, L, self.heads, D // self.heads).transpose(1, 2)  # [B, H, L, hd]
        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        return rope(q, pos, self.theta), rope(k, pos, self.theta), v

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                prefix: tuple[torch.Tensor, torch.Tensor] | None = None, is_causal: bool = False):
        """x: [B, L, D]; mask: bool [B or 1, 1, L, S+L] (True = may attend). Returns (out, (k, v))."""
        B, L, D = x.shape
        q, k, v = self.qkv(x, pos)
        if prefix is not None:
            k, v = torch.cat((prefix[0], k), 2), torch.cat((prefix[1], v), 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        return self.wo(o.transpose(1, 2).reshape(B, L, D)), (k, v)


class SlotCrossAttention(nn.Module):
    """Each query attends to its own small set of k slot vectors (no mask needed).

    Used by the decoder: byte t reads the k slots of patch p(t) - 1. With `kv_norm` the slots
    are RMS-normed before the key/value projections (the "hf" layout).
    """

    def __init__(self, dim: int, heads: int, kv_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.kv_norm = RMSNorm(dim, eps) if kv_norm else None
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D]; slots: [B, L, k, D] (already gathered per query)."""
        B, L, D = x.shape
        hd = D // self.heads
        if self.kv_norm is not None:
            slots = self.kv_norm(slots)
        q = self.wq(x).view(B, L, self.heads, hd)
        k = self.wk(slots).view(B, L, -1, self.heads, hd)
        v = self.wv(slots).view(B, L, -1, self.heads, hd)
        att = torch.einsum("blhd,blkhd->blhk", q, k) / math.sqrt(hd)
        o = torch.einsum("blhk,blkhd->blhd", att.softmax(-1), v)
        return self.wo(o.reshape(B, L, D))


class Block(nn.Module):
    """Pre-norm transformer layer: [cross-attention to slots] + self-attention + SwiGLU.

    `hf=True` gives transformers' BLT cross-attention: normed slots, and the residual added
    twice (its attention module already returns output + input)."""

    def __init__(self, dim: int, heads: int, mult: float, theta: float, eps: float, cross: bool = False,
                 ffn: int = 0, hf: bool = False):
        super().__init__()
        self.hf = hf
        self.cross = SlotCrossAttention(dim, heads, kv_norm=hf, eps=eps) if cross else None
        self.cross_norm = RMSNorm(dim, eps) if cross else None
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = SelfAttention(dim, heads, theta)
        self.ffn_norm = RMSNorm(dim, eps)
        self.ffn = SwiGLU(dim, mult, ffn)

    def forward(self, x, pos, mask, slots=None, prefix=None, is_causal=False):
        """Returns (x, (k, v)) so callers can keep a KV cache."""
        if self.cross is not None:
            c = self.cross(self.cross_norm(x), slots)
            x = x + (c + x if self.hf else c)
        a, kv = self.attn(self.attn_norm(x), pos, mask, prefix, is_causal)
        x = x + a
        return x + self.ffn(self.ffn_norm(x)), kv


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int = 0) -> torch.Tensor:
    """[B, 1, Lq, Lk] bool: key position <= query position (and within `window` if > 0)."""
    d = q_pos[:, None, :, None] - k_pos[:, None, None, :]
    m = d >= 0
    if window > 0:
        m &= d < window
    return m
