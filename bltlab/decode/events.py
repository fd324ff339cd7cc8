"""What a generation reports as it goes: one small dataclass per kind of event, which `stream()`
yields as it happens and `generate()` collects (as JSON) into `Generation.trace`.

Byte values are real bytes, 0-255. EOS, which ends a generation, is no byte: it is its own field
(`eos`: the event's bytes end with EOS; `rejected_eos` / `correction_eos` in a verification).
Every event carries the row's running `counters` (docs/model.md, "The trace").
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from ..tokens import EOS, OFFSET


def split_eos(ids: list[int]) -> tuple[bytes, bool]:
    """Ids (bytes + OFFSET, or EOS) -> (the bytes before the first EOS, whether there is one): a
    generation ends at its first EOS."""
    eos = EOS in ids
    return bytes(i - OFFSET for i in (ids[:ids.index(EOS)] if eos else ids)), eos


@dataclass
class Event:
    """A step of a generation at byte position `pos`, with the running counters after it."""

    type: ClassVar[str] = "event"
    pos: int
    counters: dict

    def to_json(self) -> dict:
        """{"type": ..., every field}; bytes as lists of ints."""
        out = {"type": self.type}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, bytes) else v
        return out


@dataclass
class Prefill(Event):
    """The prompt, read in one pass: its length in bytes, where its patches start, H_t of each byte."""

    type: ClassVar[str] = "prefill"
    bytes: int
    patch_starts: list[int]
    entropy: list[float]


@dataclass
class Byte(Event):
    """`blt`: one byte, its entropy H_pos and whether it opened a patch (None: the last byte, never
    pushed, whose patch is not decided)."""

    type: ClassVar[str] = "byte"
    byte: int
    entropy: float
    patch_start: bool | None


@dataclass
class Verify(Event):
    """`blt-s*`, `blt-dv*`: a draft after byte `pos` and its verification: `accepted` draft ids were
    kept (EOS counts one), the next was rejected and replaced by the exact `correction`."""

    type: ClassVar[str] = "verify"
    draft: bytes
    eos: bool
    accepted: int
    rejected: int | None
    rejected_eos: bool
    correction: int | None
    correction_eos: bool
    patch_starts: list[int]

    @classmethod
    def of(cls, pos: int, counters: dict, draft: list[int], accepted: int, correction: int | None,
           patch_starts: list[int]) -> "Verify":
        """From ids (bytes + OFFSET, or EOS): the draft, how many of its ids were kept, and the
        exact id that replaced the next one (None: every id was kept)."""
        rejected = None if correction is None else draft[accepted]
        byte = lambda i: None if i in (None, EOS) else i - OFFSET  # noqa: E731
        return cls(pos, counters, *split_eos(draft), accepted, byte(rejected), rejected == EOS, byte(correction),
                   correction == EOS, patch_starts)


@dataclass
class Block(Event):
    """`blt-d*`, `blt-h`: a diffusion block at `pos` of `size` slots, its denoising `steps` (per
    pass: the slots unmasked, their bytes (None for EOS), confidence and entropy) and its bytes (up to
    an EOS)."""

    type: ClassVar[str] = "block"
    size: int
    steps: list[dict]
    bytes: bytes
    eos: bool
    patch_starts: list[int] | None = None  # None: the generation ended in the block
    entropy: float | None = None  # blt-h: H of the exact next-byte distribution that chose it


@dataclass
class Switch(Event):
    """`blt-h`: from here on autoregressive ("ar") or diffusion steps, by the entropy of the exact
    next-byte distribution."""

    type: ClassVar[str] = "switch"
    to: str
    entropy: float


@dataclass
class Step(Event):
    """One autoregressive byte (or EOS) in a diffusion mode: `blt-h`'s where the entropy (of the
    decoder's prediction) was above η, `blt-d*`'s after a block cut short, until a patch opens (the
    entropy model's H_pos)."""

    type: ClassVar[str] = "ar"
    byte: int | None
    eos: bool
    entropy: float
    patch_starts: list[int] | None = None


@dataclass
class Done(Event):
    """The end: the whole Generation (bytes, stop reason, counters, trace)."""

    type: ClassVar[str] = "done"
    generation: object = None

    def to_json(self) -> dict:
        return {"type": self.type, "pos": self.pos, "counters": self.counters, "generation": self.generation.to_json()}
