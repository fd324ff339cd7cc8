"""Decoding modes behind one entry point: `generate(model, prompt, mode, **knobs)`.

Modes: `blt` (autoregressive, KV-cached), `blt-s8` / `blt-s16` (self-speculation, draft
window k), `blt-d4` / `blt-d8` / `blt-d16` (block diffusion, unmasking by confidence α or
entropy bound γ), `blt-dv4` / `blt-dv8` / `blt-dv16` (one-step diffusion draft + autoregressive
verification), `blt-h` (hybrid: entropy rule with knob η picks autoregressive or diffusion
steps). Each mode is one loop in a file of its own (blt.py, speculative.py, diffusion.py,
hybrid.py) over one batched decoding state (state.py, with request.py's host bookkeeping):
`generate_batch` runs any mode on several ragged prompts at once, and `generate` is a batch of
one. On a GPU the state's steps are CUDA-graph replays; `compiled=True` passes them through
torch.compile first (minutes of compiling on first use). `generate_reference` is the no-cache
oracle the tests compare against. Weights in transformers' layout (arch "hf") decode on the same
state, in the training-free modes.

`stream(model, prompt, mode, **knobs)` yields the generation's events (events.py) as they happen,
ending with `Done`, which holds the Generation; `generate` collects a stream. To cancel, stop
iterating: closing the stream ends the work and frees the state.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from ..model import BLT
from .blt import run_blt
from .common import MODES, Generation, Sampler, Unmask, check_knobs, mode_size
from .diffusion import run_diffusion
from .events import Block, Byte, Done, Event, Prefill, Step, Switch, Verify
from .hybrid import check_hybrid, run_hybrid
from .reference import generate_reference
from .request import Request
from .speculative import run_speculative

HF_MODES = ("blt", "blt-s8", "blt-s16")  # what needs no extra training: for weights from transformers


def stream(model: BLT, prompt: str | bytes, mode: str = "blt", max_bytes: int = 64,
           stop: str | bytes | None = None, temperature: float = 0.0, top_p: float = 1.0,
           seed: int | None = None, alpha: float | None = None, gamma: float | None = None,
           eta: float = 1.0, block: int = 8, in_order: bool = True, exact_first: bool = True,
           compiled: bool = False) -> Iterator[Event]:
    """Generate up to `max_bytes` bytes after `prompt` with decoding `mode`, yielding each event
    (events.py) as it happens; the last one is `Done` with the Generation.

    alpha / gamma: unmasking rule of the diffusion modes (blt-d*, blt-h; default α = 0.99); in_order:
    a denoising pass fills only a left-to-right run of confident slots (blt-d*, blt-h); exact_first: a
    blt-d* block's first byte is the exact next byte (blt-h's always is). These defaults keep `blt`'s
    quality on the shipped model; the paper's rule is alpha=0.9, in_order=False, exact_first=False.
    eta and block: the hybrid's switch threshold (nats) and block size. Knobs a mode does not use are
    ignored.
    compiled: the state's steps through torch.compile. Bad arguments raise ValueError before the
    first event."""
    t0 = time.perf_counter()
    sampler, knobs = _check(model, mode, temperature, top_p, seed, alpha, gamma, eta, block, in_order, exact_first)
    req = Request(model, [prompt], max_bytes, stop, sampler, compiled)
    try:
        for _ in _run(req, mode, *knobs):
            yield from req.drain()
        yield from req.drain()
    finally:
        req.release()
    g = req.finish(mode)[0]
    g.counters["seconds"] = time.perf_counter() - t0
    yield Done(req.rows[0].n, g.counters, g)


def generate(model: BLT, prompt: str | bytes, mode: str = "blt", max_bytes: int = 64,
             stop: str | bytes | None = None, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, alpha: float | None = None, gamma: float | None = None,
             eta: float = 1.0, block: int = 8, in_order: bool = True, exact_first: bool = True,
             compiled: bool = False) -> Generation:
    """`stream`, collected: the Generation (its trace holds every event as JSON)."""
    *_, done = stream(model, prompt, mode, max_bytes, stop, temperature, top_p, seed, alpha, gamma, eta, block,
                      in_order, exact_first, compiled)
    return done.generation


def generate_batch(model: BLT, prompts: list[str | bytes], mode: str = "blt", max_bytes: int = 64,
                   stop: str | bytes | None = None, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int | None = None, alpha: float | None = None, gamma: float | None = None,
                   eta: float = 1.0, block: int = 8, in_order: bool = True, exact_first: bool = True,
                   compiled: bool = False) -> list[Generation]:
    """`generate` for several prompts at once, any mode: one pass of each step serves every row
    still running (ragged prompts, per-row stopping and rollback). One Generation per prompt,
    with the counters and trace that prompt alone gets (greedy: the same bytes too) and the
    batch's shared passes in counters["batch_passes"]."""
    sampler, knobs = _check(model, mode, temperature, top_p, seed, alpha, gamma, eta, block, in_order, exact_first)
    req = Request(model, prompts, max_bytes, stop, sampler, compiled)
    try:
        for _ in _run(req, mode, *knobs):
            pass
    finally:
        req.release()
    return req.finish(mode)


def _check(model: BLT, mode: str, temperature: float, top_p: float, seed: int | None, alpha: float | None,
           gamma: float | None, eta: float, block: int, in_order: bool, exact_first: bool):
    """The request's sampler and knobs (eta, block, the unmasking rule), or one clear error."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if model.cfg.arch == "hf" and mode not in HF_MODES:
        raise ValueError(f"mode {mode!r} needs a decoder trained on masked blocks; weights in transformers' "
                         f"layout support the training-free modes {', '.join(HF_MODES)}")
    sampler = Sampler(temperature, top_p, seed)
    if mode == "blt-h":
        check_hybrid(eta, block)
    rule = check_knobs(alpha, gamma, in_order, exact_first) if mode.startswith("blt-d") or mode == "blt-h" else None
    return sampler, (eta, block, rule)


def _run(req: Request, mode: str, eta: float, block: int, rule: Unmask | None) -> Iterator[None]:
    """The mode's loop over the request: a generator that yields after each step or round."""
    if mode == "blt":
        return run_blt(req)
    if mode.startswith("blt-s") or mode.startswith("blt-dv"):
        return run_speculative(req, mode_size(mode), mode.startswith("blt-s"))
    if mode.startswith("blt-d"):
        return run_diffusion(req, mode_size(mode), rule)
    return run_hybrid(req, eta, block, rule)


__all__ = ["HF_MODES", "MODES", "Block", "Byte", "Done", "Event", "Generation", "Prefill", "Sampler", "Step", "Switch",
           "Verify", "generate", "generate_batch", "generate_reference", "stream"]
