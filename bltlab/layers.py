"""Transformer building blocks shared by the entropy model and the three BLT parts.

Attention takes explicit positions and a mask (None = plain causal, a dense bool mask, or an
`AttnMask` described by positions and block ids) so that the same code serves causal byte
streams, sliding windows and the block-diffusion mask. RMSNorm, SwiGLU and attention go
through bltlab.kernels: PyTorch by default on CPU, Triton kernels on CUDA (attention: PyTorch
there too unless asked for, see docs/kernels.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .hashing import HF_PRIMES, ngram_hashes, prime_hashes
from .positions import rope, rope_angles


def ffn_hidden(dim: int, mult: float) -> int:
    return 32 * math.ceil(dim * mult / 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """RMSNorm(x); with `residual`, the fused pair (x + residual, RMSNorm(x + residual))."""
        return kernels.rms_norm(x, self.weight, self.eps, residual)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, residual=None, swiglu: bool = False):
        """(x + residual, the projection `weight` of their norm) in one kernel on the Triton path;
        residual None (0), a tensor, or (h, W) meaning h @ W.T (`project_later`); with swiglu,
        weight = [gate; up] and the projection is silu(gate) * up. Decoding's fused form of
        `forward` followed by a linear layer."""
        return kernels.norm_linear(x, self.weight, self.eps, weight, residual, swiglu)


# A projection left to the next norm's kernel (`kernels.norm_linear`'s residual (h, W)) is read
# whole, twice, by every program of that kernel, from L2 at about 110 GB/s per SM on an H100: worth
# it while that costs less than the ~3 us launch it saves. A first estimate, not a measurement:
# bench-kernels' norm_linear_proj case times the fused kernel against the two launches.
LATER_MAX_BYTES = 128 * 1024


def project_later(h: torch.Tensor, W: torch.Tensor):
    """h @ W.T, as (h, W) for the next norm's kernel to compute when W is small enough, else now."""
    return (h, W) if W.numel() * W.element_size() <= LATER_MAX_BYTES else F.linear(h, W)


def computed(r):
    """A residual as `project_later` may leave it, as a tensor: (h, W) -> h @ W.T now; else r itself."""
    return F.linear(*r) if isinstance(r, tuple) else r


def norm_proj(norm: nn.Module, x: torch.Tensor, r, weight: torch.Tensor) -> torch.Tensor:
    """The projection `weight` of norm(x + r) (`RMSNorm.linear`; r as there): a head, or the slots,
    after a stack of decoding-form blocks. `norm` may be nn.Identity (the "hf" global model has none)."""
    if isinstance(norm, nn.Identity):
        return F.linear(x if r is None else x + computed(r), weight)
    return norm.linear(x, weight, r)[1]


@dataclass(eq=False)
class KVCache:
    """One attention layer's keys and values for B rows, preallocated at a fixed length and indexed
    by position: kv [2, B, H, S, hd], written at each row's positions. A row's length is its
    position (the masks hide what lies past it), so rolling back is moving the position. With it
    a layer runs its decoding form, which also needs RoPE's angles by position, rot [T, hd/2, 2]
    (cos, sin), and the layer's projections that read one input as one matrix each (one product
    where there were two or three): qkv [3 D, D] and gate_up [2 F, D], copies that their owner
    keeps current."""

    kv: torch.Tensor
    rot: torch.Tensor
    qkv: torch.Tensor
    gate_up: torch.Tensor
    rows: torch.Tensor  # [B]: arange, the cache row of each batch row

    @classmethod
    def for_layers(cls, layers, B: int, S: int, period: int, fused: dict, rows: torch.Tensor) -> list["KVCache"]:
        """A cache of S keys per block of `layers` (keys and values in one tensor: one write per pass),
        RoPE's angles of position u % period (a second half past `period` repeats the first) and each
        block's fused projections (`fused`: BLT.fused_projections())."""
        a, p = layers[0].attn, layers[0].attn.wq.weight
        hd = a.wq.out_features // a.heads
        ang = rope_angles(torch.arange(S, device=p.device) % period, hd, a.theta)  # [S, hd/2]
        rot = torch.stack((ang.cos(), ang.sin()), -1)
        return [cls(p.new_zeros(2, B, a.heads, S, hd), rot, *fused[id(layer)], rows) for layer in layers]


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mult: float, hidden: int = 0):
        super().__init__()
        hidden = hidden or ffn_hidden(dim, mult)
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(kernels.swiglu(self.w1(x), self.w3(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE (decoding: `Block.decode` over a KVCache)."""

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
                is_causal: bool = False) -> torch.Tensor:
        """x: [B, L, D]; mask: AttnMask, or bool [B or 1, 1, L, L] (True = may attend), or None
        (all keys, or causal with is_causal)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x, pos)
        o = kernels.attend(q, k, v, mask, is_causal)
        return self.wo(o.transpose(1, 2).reshape(B, L, D))


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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """forward on projected queries q [B, L, D] and slots whose keys and values are projected
        already, [B', H, k, hd]: one slot set per query (B' = B L) or one per row for the whole pass
        (B' = B). Returns the output as `project_later` does."""
        B, L, D = q.shape
        o = F.scaled_dot_product_attention(q.view(k.shape[0], -1, self.heads, D // self.heads).transpose(1, 2), k, v)
        return project_later(o.transpose(1, 2).reshape(B, L, D), self.wo.weight)


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

    def forward(self, x, pos, mask, slots=None, is_causal=False, cache: KVCache | None = None, r=None):
        """Returns (x, None); with `cache`, the decoding form's (x, r)."""
        if cache is not None:
            return self.decode(x, r, pos, mask, cache, slots)
        if self.cross is not None:
            c = self.cross(self.cross_norm(x), slots)
            x = x + (c + x if self.hf else c)
        a = self.attn(self.attn_norm(x), pos, mask, is_causal)
        x, hn = self.ffn_norm(x, a)  # x + a, then its norm (one fused kernel on the Triton path)
        return x + self.ffn(hn), None

    def decode(self, x, r, pos, mask, cache: KVCache, slots=None):
        """The same layer over L new positions per row on the residual stream x + r, with its keys
        and values written to `cache` at pos [B, L] and the queries reading the whole cache under
        `mask` ([B, 1, L, S] additive: 0 or -inf). r is the previous layer's last branch (None, a
        tensor, or (h, W) for h @ W.T, `project_later`), which this layer's first norm adds in its
        kernel; returns its own output the same way, as (x, r). Each norm and the projection after
        it are one kernel on the Triton path (q|k|v with RoPE and the cache write too), and a small
        output projection is left to the next norm's kernel: a decoding step is launch-bound.
        slots: the slots' cross-attention keys and values, projected once per patch
        (`SlotCrossAttention.attend`; for the "hf" layout, of the normed slots)."""
        B, L, D = x.shape
        if self.cross is not None:
            x, q = self.cross_norm.linear(x, self.cross.wq.weight, r)
            r = self.cross.attend(q, *slots)
            if self.hf:  # x + (c + x), summed in forward's order
                r = computed(r) + x
        norm = self.attn_norm
        x, q = kernels.norm_qkv(x, norm.weight, norm.eps, cache.qkv, r, cache.rot, pos, cache.kv, cache.rows)
        o = F.scaled_dot_product_attention(q, cache.kv[0], cache.kv[1], attn_mask=mask)  # q: [B, H, L, hd]
        o = o.transpose(1, 2).reshape(B, L, D)  # a view: q's layout is [B, L, H, hd], and so is o's
        x, h = self.ffn_norm.linear(x, cache.gate_up, project_later(o, self.attn.wo.weight), swiglu=True)
        return x, project_later(h, self.ffn.w2.weight)  # h: silu(gate) * up, [B, L, F]


class HashEmbedding(nn.Module):
    """Byte embedding plus hashed n-gram tables (one per hash function and n), summed.

    scheme "bltlab" uses `ngram_hashes`; scheme "hf" uses `prime_hashes` with one prime per
    function, tables ordered function-major like transformers' fused table."""

    def __init__(self, n_ids: int, dim: int, sizes: tuple[int, ...], vocab: int, functions: int = 1,
                 scheme: str = "bltlab"):
        super().__init__()
        self.sizes, self.vocab, self.scheme = tuple(sizes), vocab, scheme
        self.keys = [(f, n) for f in range(functions) for n in self.sizes]
        self.byte = nn.Embedding(n_ids, dim)
        self.tables = nn.ModuleList(nn.Embedding(vocab, dim) for _ in self.keys)

    def hashes(self, ids: torch.Tensor, f: int, n: int) -> torch.Tensor:
        if self.scheme == "hf":
            return prime_hashes(ids, n, self.vocab, HF_PRIMES[f % len(HF_PRIMES)])
        return ngram_hashes(ids, n, self.vocab)

    def forward(self, ids: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """ids: [B, L] -> [B, L, dim]. `context` ([B, C] ids before `ids`) feeds the n-grams
        that reach back past the first position (used by cached decoding)."""
        return self.last(ids if context is None else torch.cat((context, ids), 1), ids.shape[1])

    def last(self, full: torch.Tensor, n_new: int) -> torch.Tensor:
        """The embeddings [B, n_new, dim] of the last n_new ids of `full` [B, C + n_new], whose
        n-grams reach back into the C ids before them (PAD there counts as the sequence start)."""
        if self.scheme == "bltlab":  # PyTorch or one Triton kernel: kernels/hash_embed.py
            return kernels.hash_embedding(full, n_new, [n for _, n in self.keys], self.vocab, self.byte.weight,
                                          [t.weight for t in self.tables])
        x = self.byte(full[:, full.shape[1] - n_new:])
        for (f, n), table in zip(self.keys, self.tables):
            x = x + table(self.hashes(full, f, n)[:, full.shape[1] - n_new:])
        return x
