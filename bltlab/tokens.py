"""Byte ids (docs/model.md, "Bytes"): PAD 0, BOS 1, EOS 2, id 3 reserved, byte b -> b + 4, MASK 260."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

PAD, BOS, EOS, RESERVED = 0, 1, 2, 3
OFFSET = 4  # byte b has id b + OFFSET
N_IDS = 260  # ids the model can emit
MASK = 260  # extra decoder input id for block diffusion
N_INPUT_IDS = 261


def to_bytes(text: str | bytes | bytearray) -> bytes:
    """Text is UTF-8 encoded; bytes pass through untouched (so any binary works)."""
    if isinstance(text, str):
        return text.encode("utf-8", errors="surrogatepass")
    return bytes(text)


def encode(text: str | bytes, bos: bool = True, eos: bool = False) -> list[int]:
    """Bytes (or UTF-8 text) to ids."""
    ids = [b + OFFSET for b in to_bytes(text)]
    return ([BOS] if bos else []) + ids + ([EOS] if eos else [])


def ids_to_bytes(ids: Iterable[int]) -> bytes:
    """Drop special ids, keep bytes."""
    return bytes(i - OFFSET for i in ids if OFFSET <= i < N_IDS)


def decode(ids: Iterable[int]) -> str:
    """Ids to text; never raises (invalid UTF-8 becomes U+FFFD)."""
    return ids_to_bytes(ids).decode("utf-8", errors="replace")


def encode_tensor(texts: Sequence[str | bytes], bos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch of ids and its lengths: ([B, T] long, [B] long)."""
    rows = [encode(t, bos=bos) for t in texts]
    lens = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), int(lens.max()) if rows else 0), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lens


def is_byte(ids: torch.Tensor) -> torch.Tensor:
    """True where an id is a real byte."""
    return (ids >= OFFSET) & (ids < N_IDS)
