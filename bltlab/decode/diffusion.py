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
computes: with `exact_first` slot 0 takes it after the pass (a block after a prompt or a step sees it).
A block that a pass in order cut short (the head unsure of its next slot) is followed by `blt`'s steps
until the entropy rule opens a patch, where the next block starts: blocks begin patches where the text
begins them, and where the head is unsure the mode costs what `blt` does.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..tokens import EOS, OFFSET
from .common import Unmask
from .events import Block, Step, split_eos
from .request import Request


def run_diffusion(req: Request, block: int, rule: Unmask) -> Iterator[None]:
    """Each running row takes a block (the first at the prompt's end) or, after a block the head was
    unsure of, one `blt` step, per round, until every row stops; yields after each round."""
    begun: set[int] = set()  # rows whose block began in the push before (which closed its patch)
    first = True  # every row's first block starts at the prompt's end
    while req.active:
        rows = req.active
        steps = [] if first else [b for b in rows if b not in begun]
        nxt = req.next_bytes() if steps or (rule.exact_first and req.sampling) else {}
        fresh = rows if first else [b for b in steps if nxt[b][1]]  # a step that would open a patch starts
        steps = [b for b in steps if b not in fresh]  # a block there instead
        if fresh:
            req.close(fresh)
        if begun:
            req.close(sorted(begun), run=False)  # the push closed it
        sizes = {b: req.rows[b].room(block) for b in rows if b not in steps}
        filled = {}
        for group, ridden in ((fresh, False), (sorted(begun), True)):
            if group:
                filled |= req.denoise({b: sizes[b] for b in group}, rule, rule.exact_first, begun=ridden)
        out = {b: [nxt[b][0]] for b in steps} | {b: ids for b, (ids, _) in filled.items()}
        start = {b: req.rows[b].n for b in rows}
        req.stop_rows(out)
        # a block the head filled to its end is followed by the next (begun in its push); one it cut short
        # (in order) by blt's steps until the entropy rule opens a patch
        begun, first = {b for b in req.active if b in filled and len(out[b]) == sizes[b]}, False
        # no one-byte push opens a patch: a step that would is a block, whose first byte's patch `close` opened
        starts = req.push_each({b: len(out[b]) for b in req.active}, dict.fromkeys(req.active, 0),
                               {b: req.rows[b].room(block) for b in begun}, rule)
        for b in rows:
            row = req.rows[b]
            if b in filled:
                ids, trace = filled[b]
                row.add(Block(start[b], row.snapshot(), sizes[b], trace, *split_eos(ids), starts.get(b)))
            else:
                tok, eos = out[b][0], out[b][0] == EOS
                row.add(Step(start[b], row.snapshot(), None if eos else tok - OFFSET, eos, round(nxt[b][2], 4),
                             starts.get(b)))
        yield
