"""`blt-d*`: block diffusion. At each patch start a block of B MASKs, unmasked over several decoder
passes by confidence (every masked slot with max-prob > α; at least the most confident one) or
by an entropy bound (sort masked slots by entropy, take the longest prefix whose entropy sum,
less its largest term, stays below γ; at least one): `kernels.denoise_end`. A finished block
goes through every part in one pass, which fills its KV caches, places its patches and closes
the patch before the next block.
"""
from __future__ import annotations

from collections.abc import Iterator

from .events import Block, split_eos
from .request import Request, opened


def check_knobs(alpha: float | None, gamma: float | None) -> tuple[float | None, float | None]:
    """The unmasking rule's knob: α (default 0.9) or γ, not both."""
    if alpha is not None and gamma is not None:
        raise ValueError("give either alpha (confidence) or gamma (entropy bound), not both")
    if gamma is not None and not 0.0 <= gamma <= 100.0:
        raise ValueError(f"gamma must be in [0, 100], got {gamma}")
    if alpha is None and gamma is None:
        alpha = 0.9
    if alpha is not None and not 0.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must be in [0, 2] (above 1: one byte per pass), got {alpha}")
    return alpha, gamma


def run_diffusion(req: Request, block: int, alpha: float | None, gamma: float | None) -> Iterator[None]:
    """Blocks of `block` bytes (fewer at the end of the budget) until every row stops; yields after
    each."""
    pushed = False
    while req.active:
        rows = req.active
        req.close(rows, run=not pushed)  # after the first block, the push before closed it
        sizes = {b: req.rows[b].room(block) for b in rows}
        filled = req.denoise(sizes, alpha if gamma is None else gamma, gamma is not None)
        start = {b: req.rows[b].n for b in rows}
        req.stop_rows({b: filled[b][0] for b in rows})
        opens = req.push(sizes[req.active[0]], req.active, close=True) if req.active else {}
        pushed = True
        for b in rows:
            ids, steps = filled[b]
            starts = opened(start[b], opens[b][1], sizes[b]) if b in opens else None
            req.rows[b].add(Block(start[b], req.rows[b].snapshot(), sizes[b], steps, *split_eos(ids), starts))
        yield
