"""Hash n-gram embedding in one kernel: rolling hashes for every n, table gathers, sum.

Same hash as bltlab.hashing: for the n ids ending at position t (PAD = 0 before the start),
h = (...((0 * 257 + id[t-n+1]) * 257 + ...) + id[t]) mod (2^31 - 1), row = h mod V. One
program per output byte row: it loads the byte row, computes each n's hash from at most 8
ids (int64, never overflows), adds the table rows in the reference's order (byte, n = 3, 4,
...) in fp32, and writes the row [D]. It also stores the row indices for the backward, which
scatters the output gradient back with atomic adds (fp32) into the byte table and into one
[n_tables, V, D] buffer whose slices are the tables' gradients. `full` = context + new ids:
only the last n_new positions are embedded, the context feeds their n-grams (cached decoding).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..hashing import HASH_BASE, HASH_MOD
from ._triton import tl, triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_TABLES = 8


# ---- reference ----------------------------------------------------------------------------------
# The rolling hash unrolled: every step of ngram_hashes' loop is taken mod HASH_MOD, so the hash of
# ids[t-n+1 .. t] equals sum_k ids[t-k] * (HASH_BASE^k mod HASH_MOD) over k < n, mod HASH_MOD: each
# n adds one term to the n - 1 before it. With ids < 2^20 (token ids are < 261) every product is
# < 2^51 and a sum of at most 16 < 2^55, so int64 never overflows. tests/test_kernels.py holds
# the reference to ngram_hashes (the definition) on random ids, PAD contexts included.
_COEFFS: dict = {}  # (sizes, device) -> [nmax, len(sizes)] int64: made once, so a CUDA graph may capture it


def _coeffs(sizes: tuple, device: torch.device) -> torch.Tensor:
    """[nmax, len(sizes)]: row j (of ids t-nmax+1 .. t, oldest first) holds HASH_BASE^(nmax-1-j) mod
    HASH_MOD in the columns of the n-grams that reach id j (n > nmax-1-j), else 0."""
    key = (sizes, device)
    c = _COEFFS.get(key)
    if c is None:
        nmax = max(sizes)
        c = _COEFFS[key] = torch.tensor([[pow(HASH_BASE, nmax - 1 - j, HASH_MOD) * (n > nmax - 1 - j) for n in sizes]
                                         for j in range(nmax)], dtype=torch.long, device=device)
    return c


def hash_embed_reference(full, n_new: int, sizes, vocab: int, byte_weight, tables):
    """full: [B, C + L] ids (C context ids, then L = n_new new ones) -> [B, L, D]: the byte row plus
    each table's row at ngram_hashes(full, n, vocab) for n in sizes, summed in that order. All the
    hashes come from one product of each position's last nmax ids with _coeffs (a handful of
    operations where the rolling loop took about 4 per n and step: this runs per decoded byte)."""
    start = full.shape[1] - n_new
    x = F.embedding(full[:, start:], byte_weight)
    if not tables:
        return x
    sizes = tuple(sizes)
    nmax = max(sizes)
    win = (F.pad(full, (nmax - 1, 0))[:, start:].unfold(1, nmax, 1) if n_new  # [B, L, nmax]: PAD before the start
           else full.new_zeros(full.shape[0], 0, nmax))  # (unfold wants nmax ids at least)
    rows = (win[..., None] * _coeffs(sizes, full.device)).sum(2) % HASH_MOD % vocab  # [B, L, len(sizes)]
    for k, table in enumerate(tables):
        x = x + F.embedding(rows[..., k], table)
    return x


# ---- kernels ---------------------------------------------------------------------------------
@triton.jit
def _row_of(ids_row, tf, N: tl.constexpr, VOCAB, BASE: tl.constexpr, MOD: tl.constexpr):
    """Table row of the n-gram ids[tf - N + 1 .. tf] (oldest first; PAD before the start)."""
    h = tl.zeros([], dtype=tl.int64)
    for i in tl.static_range(N):
        j = tf - (N - 1 - i)
        v = tl.load(ids_row + tl.maximum(j, 0), mask=j >= 0, other=0).to(tl.int64)
        h = (h * BASE + v) % MOD
    return h % VOCAB


@triton.jit
def _add_table(acc, tab_ptr, idx_ptr, k: tl.constexpr, ids_row, tf, r, NROWS, N: tl.constexpr, VOCAB, D, cols,
               BASE: tl.constexpr, MOD: tl.constexpr):
    row = _row_of(ids_row, tf, N, VOCAB, BASE, MOD)
    tl.store(idx_ptr + k * NROWS + r, row)
    return acc + tl.load(tab_ptr + row * D + cols, mask=cols < D, other=0.0).to(tl.float32)


@triton.jit
def _hash_fwd(ids_ptr, byte_ptr, t0, t1, t2, t3, t4, t5, t6, t7, out_ptr, idx_ptr, L, LF, D, VOCAB, NROWS,
              N0: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr, N4: tl.constexpr,
              N5: tl.constexpr, N6: tl.constexpr, N7: tl.constexpr, NT: tl.constexpr, BLOCK: tl.constexpr,
              BASE: tl.constexpr, MOD: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)  # output row b * L + t
    b, t = r // L, r % L
    tf = LF - L + t  # position in `full`
    ids_row = ids_ptr + b * LF
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tok = tl.load(ids_row + tf).to(tl.int64)
    acc = tl.load(byte_ptr + tok * D + cols, mask=cols < D, other=0.0).to(tl.float32)
    # one block per table, unrolled (triton takes no list of pointers); NT is constant
    if NT > 0:
        acc = _add_table(acc, t0, idx_ptr, 0, ids_row, tf, r, NROWS, N0, VOCAB, D, cols, BASE, MOD)
    if NT > 1:
        acc = _add_table(acc, t1, idx_ptr, 1, ids_row, tf, r, NROWS, N1, VOCAB, D, cols, BASE, MOD)
    if NT > 2:
        acc = _add_table(acc, t2, idx_ptr, 2, ids_row, tf, r, NROWS, N2, VOCAB, D, cols, BASE, MOD)
    if NT > 3:
        acc = _add_table(acc, t3, idx_ptr, 3, ids_row, tf, r, NROWS, N3, VOCAB, D, cols, BASE, MOD)
    if NT > 4:
        acc = _add_table(acc, t4, idx_ptr, 4, ids_row, tf, r, NROWS, N4, VOCAB, D, cols, BASE, MOD)
    if NT > 5:
        acc = _add_table(acc, t5, idx_ptr, 5, ids_row, tf, r, NROWS, N5, VOCAB, D, cols, BASE, MOD)
    if NT > 6:
        acc = _add_table(acc, t6, idx_ptr, 6, ids_row, tf, r, NROWS, N6, VOCAB, D, cols, BASE, MOD)
    if NT > 7:
        acc = _add_table(acc, t7, idx_ptr, 7, ids_row, tf, r, NROWS, N7, VOCAB, D, cols, BASE, MOD)
    tl.store(out_ptr + r * D + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < D)


@triton.jit
def _hash_bwd(ids_ptr, idx_ptr, g_ptr, gbyte_ptr, gtab_ptr, L, LF, D, VOCAB, NROWS, NT: tl.constexpr,
              BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    b, t = r // L, r % L
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    g = tl.load(g_ptr + r * D + cols, mask=m, other=0.0).to(tl.float32)
    tok = tl.load(ids_ptr + b * LF + LF - L + t).to(tl.int64)
    tl.atomic_add(gbyte_ptr + tok * D + cols, g, mask=m)
    for k in tl.static_range(NT):
        row = tl.load(idx_ptr + k * NROWS + r)
        tl.atomic_add(gtab_ptr + (k * VOCAB + row) * D + cols, g, mask=m)


# ---- launcher + autograd ---------------------------------------------------------------------
def _grid(rows: int, D: int):
    block = min(triton.next_power_of_2(D), 1024)
    return (rows, triton.cdiv(D, block)), block


class _HashEmbed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, full, n_new, sizes, vocab, byte_weight, *tables):
        B, LF = full.shape
        D, NT = byte_weight.shape[1], len(tables)
        full = full.contiguous()
        rows = B * n_new
        dtype = byte_weight.dtype
        for w in tables:
            dtype = torch.promote_types(dtype, w.dtype)
        out = torch.empty(B, n_new, D, dtype=dtype, device=full.device)
        idx = torch.empty(NT, rows, dtype=torch.int64, device=full.device)
        ts = [w.contiguous() for w in tables]
        ptrs = ts + [byte_weight] * (MAX_TABLES - NT)
        ns = list(sizes) + [1] * (MAX_TABLES - NT)
        if rows:
            grid, block = _grid(rows, D)
            _hash_fwd[grid](full, byte_weight.contiguous(), *ptrs, out, idx, n_new, LF, D, vocab, rows,
                            *ns, NT=NT, BLOCK=block, BASE=HASH_BASE, MOD=HASH_MOD)
        ctx.save_for_backward(full, idx)
        ctx.meta = (n_new, vocab, byte_weight.shape, byte_weight.dtype, [w.dtype for w in tables])
        return out

    @staticmethod
    def backward(ctx, g):
        full, idx = ctx.saved_tensors
        n_new, vocab, bshape, bdtype, tdtypes = ctx.meta
        NT, rows = idx.shape
        D = bshape[1]
        gbyte = torch.zeros(bshape, dtype=torch.float32, device=g.device)
        gtab = torch.zeros(NT, vocab, D, dtype=torch.float32, device=g.device)
        if rows:
            grid, block = _grid(rows, D)
            _hash_bwd[grid](full, idx, g.contiguous(), gbyte, gtab, n_new, full.shape[1], D, vocab, rows,
                            NT=NT, BLOCK=block)
        return (None, None, None, None, gbyte.to(bdtype), *(gtab[k].to(dt) for k, dt in enumerate(tdtypes)))


def hash_embed_triton(full, n_new: int, sizes, vocab: int, byte_weight, tables):
    """sizes[i] is the n of tables[i]. More than MAX_TABLES tables (or n > 16) take the reference."""
    if len(tables) != len(sizes):
        raise ValueError(f"one n per table: got {len(sizes)} sizes for {len(tables)} tables")
    if len(tables) > MAX_TABLES or any(not 1 <= n <= 16 for n in sizes):
        return hash_embed_reference(full, n_new, sizes, vocab, byte_weight, tables)
    return _HashEmbed.apply(full, n_new, tuple(sizes), vocab, byte_weight, *tables)
