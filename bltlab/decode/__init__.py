"""Decoding modes behind one entry point: `generate(model, prompt, mode, **knobs)`."""
from __future__ import annotations

from ..model import BLT
from .common import Generation, Sampler
from .reference import generate_reference

MODES = ("blt",)  # the fast modes arrive with the decoders issue; "blt" is autoregressive


def generate(model: BLT, prompt: str | bytes, mode: str = "blt", max_bytes: int = 64,
             stop: str | bytes | None = None, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> Generation:
    """Generate up to `max_bytes` bytes after `prompt` with decoding `mode`."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    g = generate_reference(model, prompt, max_bytes, stop, Sampler(temperature, top_p, seed))
    g.mode = mode
    return g


__all__ = ["MODES", "Generation", "Sampler", "generate", "generate_reference"]
