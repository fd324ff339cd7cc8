"""`blt`: autoregressive BLT. One decoder pass per byte, the entropy model and the local encoder
on each new byte, the global model once per finished patch; every part reads a KV cache."""
from __future__ import annotations

from collections.abc import Iterator

from ..tokens import OFFSET
from .events import Byte
from .request import Request


def run_blt(req: Request) -> Iterator[None]:
    """Each running row takes its next byte (greedy, or drawn) and pushes it, until it stops;
    yields after every step (the stream hands on the events so far)."""
    while req.active:
        nxt = req.next_bytes()
        going = []
        for b in req.active:
            tok, _, h, _ = nxt[b]
            row = req.rows[b]
            if not row.stopper.push(tok):
                going.append(b)
            elif row.stopper.reason in ("max_bytes", "stop"):  # emitted, never pushed: its patch is open
                row.add(Byte(row.n, row.snapshot(), tok - OFFSET, round(h, 4), None))
        req.active = going
        req.only(going)
        if going:
            req.step({b: nxt[b][1] for b in going})
            for b in going:
                tok, opens, h, _ = nxt[b]
                row = req.rows[b]
                row.add(Byte(row.n - 1, row.snapshot(), tok - OFFSET, round(h, 4), bool(opens)))
        yield
