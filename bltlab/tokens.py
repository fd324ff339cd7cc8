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


# ---- how bytes are printed (the notebooks, the app): one rule, here ------------------------
DRAWN = {"\n": "⏎", "\t": "⇥", "\r": "␍"}  # drawn so that a line of output stays one line
NAMES = {PAD: "⟨PAD⟩", BOS: "⟨BOS⟩", EOS: "⟨EOS⟩", RESERVED: "⟨id 3⟩", MASK: "▒"}


def pieces(x: bytes | bytearray | Iterable[int], lines: bool = False) -> list[tuple[int, int, str]]:
    """`x` (raw bytes, or ids) cut into what a reader sees: [(position, width, text)].

    - a whole UTF-8 character that prints is itself, `width` its bytes; newline, tab and carriage
      return are drawn as ⏎ ⇥ ␍ (with `lines`, newline and tab stay themselves);
    - a byte that starts no printable character there (a stray continuation byte, a cut
      character, a control byte) is `\\xNN`, width 1;
    - a special id is its name: ⟨PAD⟩ ⟨BOS⟩ ⟨EOS⟩, ▒ for MASK (raw bytes have none).
    """
    ids = encode(x, bos=False) if isinstance(x, (bytes, bytearray)) else list(x)
    out, i = [], 0
    while i < len(ids):
        if not OFFSET <= ids[i] < N_IDS:
            out.append((i, 1, NAMES.get(ids[i], f"⟨id {ids[i]}⟩")))
            i += 1
            continue
        k, ch = _char_at(ids, i)
        kept = lines and ch in ("\n", "\t")
        if k and (kept or ch in DRAWN or ch.isprintable()):
            out.append((i, k, ch if kept else DRAWN.get(ch, ch)))
            i += k
        else:
            out.append((i, 1, f"\\x{ids[i] - OFFSET:02x}"))
            i += 1
    return out


def _char_at(ids: list[int], i: int) -> tuple[int, str]:
    """(width, text) of the UTF-8 character that starts at ids[i], or (0, "") if none does."""
    for k in range(1, 5):  # UTF-8 characters are 1 to 4 bytes
        chunk = ids[i:i + k]
        if len(chunk) < k or not all(OFFSET <= j < N_IDS for j in chunk):
            break
        try:
            return k, ids_to_bytes(chunk).decode("utf-8")
        except UnicodeDecodeError:
            pass
    return 0, ""


def readable(x: bytes | bytearray | Iterable[int], lines: bool = False) -> str:
    """`x` (raw bytes, or ids) as one readable string (`pieces`): `readable(encode("ok\\n", eos=True))`
    is `⟨BOS⟩ok⏎⟨EOS⟩`; `readable(b"caf\\xc3")` is `caf\\xc3` (a cut character)."""
    return "".join(text for _, _, text in pieces(x, lines))


def labels(x: bytes | bytearray | Iterable[int]) -> list[str]:
    """One label per position of `x` (raw bytes, or ids), for charts and grids: a character on
    its first byte, `\\xNN` on the bytes that continue it, ␣ for a space, as `pieces` otherwise."""
    ids = encode(x, bos=False) if isinstance(x, (bytes, bytearray)) else list(x)
    out = []
    for i, k, text in pieces(ids):
        out.append("␣" if text == " " else text)
        out += [f"\\x{j - OFFSET:02x}" for j in ids[i + 1:i + k]]
    return out


def glyph(b: int | None) -> str:
    """One byte value (0-255) as its label (`labels`); None, the end of a text, as ⟨EOS⟩."""
    return labels([EOS] if b is None else bytes([b]))[0]
