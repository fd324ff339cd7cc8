"""Decoding modes behind one entry point: `generate(model, prompt, mode, **knobs)`.

Modes: `blt` (autoregressive, KV-cached), `blt-s8` / `blt-s16` (self-speculation, draft
window k), `blt-d4` / `blt-d8` / `blt-d16` (block diffusion, unmasking by confidence α or
entropy bound γ), `blt-dv4` / `blt-dv8` / `blt-dv16` (one-step diffusion draft + autoregressive
verification), `blt-h` (hybrid: entropy rule with knob η picks autoregressive or diffusion
steps). `generate_batch` runs `blt` and `blt-d*` on several ragged prompts at once, and on the
static engine every other mode too.
`generate_reference` is the no-cache oracle the tests compare against.

Every greedy mode has a second engine, static.py + static_modes.py: static KV caches and
CUDA-graph-captured steps, the same bytes, counters and trace as the eager decoders.
`engine="auto"` takes it for `blt` on a GPU (when no streaming hooks are given); "eager"
and "static" force one; "compiled" is the static engine with its steps passed through
torch.compile first (fused kernels; minutes of compiling on first use).
"""
from __future__ import annotations

import time

from ..model import BLT
from .autoregressive import generate_blt
from .batch import generate_batch
from .common import BATCH_MODES, MODES, STATIC_BATCH_MODES, Generation, Hooks, Sampler, mode_size
from .diffusion import generate_diffusion
from .hybrid import generate_hybrid
from .reference import generate_reference
from .speculative import generate_speculative
from .static import supports
from .static_modes import generate_static

ENGINES = ("auto", "eager", "static", "compiled")

HF_MODES = ("blt", "blt-s8", "blt-s16")  # what needs no extra training: for weights from transformers


def generate(model: BLT, prompt: str | bytes, mode: str = "blt", max_bytes: int = 64,
             stop: str | bytes | None = None, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, alpha: float | None = None, gamma: float | None = None,
             eta: float = 1.0, block: int = 8, hooks: Hooks | None = None, engine: str = "auto") -> Generation:
    """Generate up to `max_bytes` bytes after `prompt` with decoding `mode`.

    alpha / gamma: unmasking rule of the diffusion modes (blt-d*, blt-h); eta and block: the
    hybrid's switch threshold (nats) and block size. Knobs a mode does not use are ignored.
    hooks: stream trace events as they happen and/or cancel from outside (see `Hooks`).
    engine: "eager", "static" or "compiled" (any greedy mode), or "auto" (static for `blt` on a GPU)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if model.cfg.arch == "hf" and mode not in HF_MODES:
        raise ValueError(f"mode {mode!r} needs a decoder trained on masked blocks; weights in transformers' "
                         f"layout support the training-free modes {', '.join(HF_MODES)}")
    sampler = Sampler(temperature, top_p, seed)
    t0 = time.perf_counter()
    engine = pick_engine(model, mode, temperature, engine, hooks)
    if engine != "eager":
        g = generate_static(model, prompt, mode, max_bytes, stop, alpha, gamma, eta, block, engine == "compiled")
    elif mode == "blt":
        g = generate_blt(model, prompt, max_bytes, stop, sampler, hooks)
    elif mode.startswith("blt-s"):
        g = generate_speculative(model, prompt, max_bytes, stop, sampler, mode_size(mode), "self", mode, hooks)
    elif mode.startswith("blt-dv"):
        g = generate_speculative(model, prompt, max_bytes, stop, sampler, mode_size(mode), "diffusion", mode, hooks)
    elif mode.startswith("blt-d"):
        g = generate_diffusion(model, prompt, max_bytes, stop, sampler, mode_size(mode), alpha, gamma, hooks)
    else:
        g = generate_hybrid(model, prompt, max_bytes, stop, sampler, eta, block, alpha, gamma, hooks)
    g.counters["seconds"] = time.perf_counter() - t0
    return g


def pick_engine(model: BLT, mode: str, temperature: float, engine: str, hooks: Hooks | None = None) -> str:
    """The engine a request runs on: "eager", "static" or "compiled" ("auto" resolved); refuses a
    static one where it does not apply."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    fits = temperature == 0 and supports(model) and hooks is None
    if engine in ("static", "compiled") and not fits:
        raise ValueError(f"engine {engine!r} runs greedy decoding (temperature 0, no hooks) on bltlab-layout "
                         "models only")
    if engine == "auto":  # only what has been checked on a GPU (the other modes have not run on one yet)
        return "static" if fits and mode == "blt" and next(model.parameters()).is_cuda else "eager"
    return engine


def pick_batch_engine(model: BLT, mode: str, temperature: float, engine: str) -> str:
    """pick_engine for `generate_batch`: "auto" takes the static engine for the modes that batch only
    there (STATIC_BATCH_MODES), and asking for the eager one for them is refused."""
    static_only = mode in STATIC_BATCH_MODES
    engine = pick_engine(model, mode, temperature, "static" if static_only and engine == "auto" else engine)
    if static_only and engine == "eager":
        raise ValueError(f"batched {mode} runs on the static engine only (engine 'static' or 'compiled')")
    return engine


__all__ = ["BATCH_MODES", "ENGINES", "HF_MODES", "MODES", "STATIC_BATCH_MODES", "Generation", "Hooks", "Sampler", "generate", "generate_batch", "generate_reference"]
