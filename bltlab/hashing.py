"""Hash n-gram embeddings (docs/model.md, "BLT").

For each n in `hash_sizes`, the n ids ending at position t are folded into one integer
with a rolling polynomial hash (mod a Mersenne prime, so it never overflows int64),
then taken modulo the table size V. Positions before the sequence start count as PAD. The
embedding module that reads these tables is layers.HashEmbedding.
"""
from __future__ import annotations

import torch

HASH_BASE = 257  # > every id, so distinct n-grams give distinct pre-modulo values
HASH_MOD = (1 << 31) - 1  # Mersenne prime; h * HASH_BASE stays far inside int64


def ngram_hashes(ids: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """ids: [B, T] long -> [B, T] long in [0, vocab): hash of ids[t-n+1 .. t]."""
    h = torch.zeros_like(ids)
    for i in range(n - 1, -1, -1):  # oldest id first
        shifted = torch.nn.functional.pad(ids, (i, 0))[:, : ids.shape[1]]  # ids[t - i], PAD before start
        h = (h * HASH_BASE + shifted) % HASH_MOD
    return h % vocab


# transformers' BLT hashes: hash function f uses HF_PRIMES[f] (interop with its checkpoints)
HF_PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899,
             9576890767, 3628273133, 2860486313, 5463458053, 3367900313)


def _int64(x: int) -> int:
    """Python int -> the int64 that wrapping two's-complement arithmetic would hold."""
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x


def prime_hashes(ids: torch.Tensor, n: int, vocab: int, prime: int) -> torch.Tensor:
    """transformers' BLT n-gram hash: sum_i ids[t-n+1+i] * prime**i in wrapping int64, mod vocab
    (PAD before the start). ids: [B, T] long -> [B, T] long in [0, vocab)."""
    h = torch.zeros_like(ids)
    for i in range(n):  # i = 0: the oldest id of the n-gram
        shifted = torch.nn.functional.pad(ids, (n - 1 - i, 0))[:, : ids.shape[1]]
        h = h + shifted * _int64(prime ** i)
    return h % vocab
