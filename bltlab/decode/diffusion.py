"""`blt-d*`: block diffusion. At each patch start a block of B MASKs, unmasked over several decoder
passes by confidence (every masked slot with max-prob > α; at least the most confident one) or
by an entropy bound (sort masked slots by entropy, take the longest prefix whose entropy sum,
less its largest term, stays below γ; at least one): `kernels.denoise_end`. With `in_order` a
pass fills only the left-to-right run of masked slots that passes (Fast-dLLM's threshold rule),
and with `exact_first` slot 0 is the exact next byte, from the pass before. A finished block
goes through every part in one pass, which fills its KV caches, places its patches and closes
the patch before the next block.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .events import Block, split_eos
from .request import Request, opened


@dataclass(frozen=True)
class Unmask:
    """How a block is denoised: the unmasking rule's knob (confidence α, or entropy bound γ), whether
    a pass may fill only a left-to-right run of slots (`in_order`), and whether slot 0 takes the
    exact next byte, which the pass before the block computed (`exact_first`; blt-h always does)."""

    alpha: float | None = 0.9
    gamma: float | None = None
    in_order: bool = False
    exact_first: bool = False

    @property
    def knob(self) -> float:
        return self.alpha if self.gamma is None else self.gamma

    @property
    def by_entropy(self) -> bool:
        return self.gamma is not None


def check_knobs(alpha: float | None, gamma: float | None, in_order: bool = False, exact_first: bool = False) -> Unmask:
    """The unmasking rule: α (default 0.9) or γ, not both."""
    if alpha is not None and gamma is not None:
        raise ValueError("give either alpha (confidence) or gamma (entropy bound), not both")
    if gamma is not None and not 0.0 <= gamma <= 100.0:
        raise ValueError(f"gamma must be in [0, 100], got {gamma}")
    if alpha is None and gamma is None:
        alpha = 0.9
    if alpha is not None and not 0.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must be in [0, 2] (above 1: one byte per pass), got {alpha}")
    return Unmask(alpha, gamma, bool(in_order), bool(exact_first))


def run_diffusion(req: Request, block: int, rule: Unmask) -> Iterator[None]:
    """Blocks of `block` bytes (fewer at the end of the budget) until every row stops; yields after
    each."""
    pushed = False
    while req.active:
        rows = req.active
        req.close(rows, run=not pushed)  # after the first block, the push before closed it
        if rule.exact_first and req.sampling:
            req.next_bytes()  # slot 0, drawn from the exact distribution (greedy: the push chose it)
        sizes = {b: req.rows[b].room(block) for b in rows}
        filled = req.denoise(sizes, rule, keep_first=rule.exact_first)
        start = {b: req.rows[b].n for b in rows}
        req.stop_rows({b: filled[b][0] for b in rows})
        going, opens = req.active, {}
        for L in sorted({len(filled[b][0]) for b in going}, reverse=True):  # a waiting row's pass writes past it
            opens |= req.push(L, [b for b in going if len(filled[b][0]) == L], close=True)
        req.only(going)
        pushed = True
        for b in rows:
            ids, steps = filled[b]
            starts = opened(start[b], opens[b][1], len(ids)) if b in opens else None
            req.rows[b].add(Block(start[b], req.rows[b].snapshot(), sizes[b], steps, *split_eos(ids), starts))
        yield
