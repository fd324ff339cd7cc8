"""`blt-h`: one hybrid checkpoint, switching between autoregressive and diffusion steps.

The rule: before each step look at H, the entropy (nats) of the exact next-byte distribution
(free: the last pass computed it). If H <= η the text is predictable right now, so where the
next byte opens a patch (by the entropy rule: a block begins a patch where the text does) fill a
whole diffusion block (its first byte taken from that exact distribution); otherwise emit one
autoregressive byte. η (`--eta`) is the knob: 0 gives pure autoregression, a large η a block at
every patch start. Every switch of regime is recorded in the trace.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..tokens import EOS, OFFSET
from .common import Unmask
from .events import Block, Step, Switch, split_eos
from .request import Request


def check_hybrid(eta: float, block: int) -> None:
    """The hybrid's own knobs: η in [0, 10] nats, a trained block size."""
    if not 0.0 <= eta <= 10.0:
        raise ValueError(f"eta must be in [0, 10] nats, got {eta}")
    if block not in (4, 8, 16):
        raise ValueError(f"block must be 4, 8 or 16 (the trained sizes), got {block}")


def run_hybrid(req: Request, eta: float, block: int, rule: Unmask) -> Iterator[None]:
    """Per round, each running row takes one byte or a block opened by it, by its own H; yields
    after each round."""
    current: dict[int, str] = {}
    while req.active:
        rows, nxt = req.active, req.next_bytes(decoder_entropy=True)
        events, out = {}, {}
        for b in rows:
            first, _, _, h = nxt[b]
            mode, row = "diffusion" if h <= eta else "ar", req.rows[b]
            if current.get(b) != mode:
                row.add(Switch(row.n, row.snapshot(), mode, round(h, 4)))
                current[b] = mode
            out[b] = [first]
            events[b] = Step(row.n, {}, None if first == EOS else first - OFFSET, first == EOS, round(h, 4))
        blocks = {b: req.rows[b].room(block) for b in rows  # a block begins a patch where the text opens one
                  if current[b] == "diffusion" and nxt[b][1] and req.rows[b].room(block) > 1}
        if blocks:
            req.close(list(blocks))
            filled = req.denoise(blocks, rule, keep_first=True)
            for b, (ids, steps) in filled.items():
                out[b] = ids
                events[b] = Block(req.rows[b].n, {}, blocks[b], steps, *split_eos(ids), entropy=round(nxt[b][3], 4))
        req.stop_rows(out)
        starts = req.push_each({b: len(out[b]) for b in req.active}, {b: nxt[b][1] for b in rows})
        for b, at in starts.items():
            events[b].patch_starts = at
        for b in rows:
            events[b].counters = req.rows[b].snapshot()
            req.rows[b].add(events[b])
        yield
