"""Hash n-gram embeddings (DESIGN §1.2).

For each n in `hash_sizes`, the n ids ending at position t are folded into one integer
with a rolling polynomial hash (mod a Mersenne prime, so it never overflows int64),
then taken modulo the table size V. Positions before the sequence start count as PAD.
"""
from __future__ import annotations

import torch
import torch.nn as nn

HASH_BASE = 257  # > every id, so distinct n-grams give distinct pre-modulo values
HASH_MOD = (1 << 31) - 1  # Mersenne prime; h * HASH_BASE stays far inside int64


def ngram_hashes(ids: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """ids: [B, T] long -> [B, T] long in [0, vocab): hash of ids[t-n+1 .. t]."""
    h = torch.zeros_like(ids)
    for i in range(n - 1, -1, -1):  # oldest id first
        shifted = torch.nn.functional.pad(ids, (i, 0))[:, : ids.shape[1]]  # ids[t - i], PAD before start
        h = (h * HASH_BASE + shifted) % HASH_MOD
    return h % vocab


class HashEmbedding(nn.Module):
    """Byte embedding plus one hashed n-gram table per n, summed."""

    def __init__(self, n_ids: int, dim: int, sizes: tuple[int, ...], vocab: int):
        super().__init__()
        self.sizes, self.vocab = tuple(sizes), vocab
        self.byte = nn.Embedding(n_ids, dim)
        self.tables = nn.ModuleList(nn.Embedding(vocab, dim) for _ in self.sizes)

    def forward(self, ids: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """ids: [B, L] -> [B, L, dim]. `context` ([B, C] ids before `ids`) feeds the n-grams
        that reach back past the first position (used by cached decoding)."""
        full = ids if context is None else torch.cat((context, ids), 1)
        x = self.byte(ids)
        for n, table in zip(self.sizes, self.tables):
            x = x + table(ngram_hashes(full, n, self.vocab)[:, full.shape[1] - ids.shape[1]:])
        return x
