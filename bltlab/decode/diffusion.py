"""`blt-d*`: block diffusion. At each patch start a block of B MASKs, unmasked over several decoder
passes by confidence (every masked slot with max-prob > α; at least the most confident one) or
by an entropy bound (sort masked slots by entropy, take the longest prefix whose entropy sum,
less its largest term, stays below γ; at least one): `kernels.denoise_end`. With `in_order` a
pass fills only the left-to-right run of masked slots that passes (Fast-dLLM's threshold rule),
and with `exact_first` slot 0 is the exact next byte, from the pass before. A finished block
goes through every part in one pass, which fills its KV caches, places its patches, closes
the patch before the next block and runs that block's first denoising pass (its slots after the
block's bytes in the same decoder pass, as training runs them): a block costs its bytes' push and
its passes after the first. That first pass cannot see the exact next byte, which the same pass
computes: with `exact_first` slot 0 takes it after the pass (the first block, after the prompt, sees it).
"""
from __future__ import annotations

from collections.abc import Iterator

from .common import Unmask
from .events import Block, split_eos
from .request import Request


def run_diffusion(req: Request, block: int, rule: Unmask) -> Iterator[None]:
    """Blocks of `block` bytes (fewer at the end of the budget) until every row stops; yields after
    each."""
    begun = False  # whether the push before ran the blocks' first passes
    while req.active:
        rows = req.active
        req.close(rows, run=not begun)  # after the first block, the push before closed it
        if rule.exact_first and req.sampling:
            req.next_bytes()  # slot 0, drawn from the exact distribution (greedy: the push chose it)
        sizes = {b: req.rows[b].room(block) for b in rows}
        filled = req.denoise(sizes, rule, keep_first=rule.exact_first, begun=begun)
        req.stop_rows({b: filled[b][0] for b in rows})
        start, going = {b: req.rows[b].n for b in rows}, req.active
        starts = req.push_each({b: len(filled[b][0]) for b in going}, close=True,
                               blocks={b: req.rows[b].room(block) for b in going}, rule=rule)
        begun = True
        for b in rows:
            ids, steps = filled[b]
            req.rows[b].add(Block(start[b], req.rows[b].snapshot(), sizes[b], steps, *split_eos(ids), starts.get(b)))
        yield
