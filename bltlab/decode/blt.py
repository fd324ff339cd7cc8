"""`blt`: autoregressive BLT. One decoder pass per byte, the entropy model and the local encoder
on each new byte, the global model once per finished patch; every part reads a KV cache."""
from __future__ import annotations

from ..tokens import OFFSET
from .request import Request


def run_blt(req: Request) -> None:
    """Each running row takes its next byte (greedy, or drawn) and pushes it, until it stops."""
    while req.active:
        nxt = req.next_bytes()
        going = []
        for b in req.active:
            tok, _, h, _ = nxt[b]
            row = req.rows[b]
            if not row.stopper.push(tok):
                going.append(b)
            elif row.stopper.reason in ("max_bytes", "stop"):  # emitted, never pushed: its patch is open
                row.trace.append(byte_event(row.n, tok, h, None, row.snapshot()))
        req.active = going
        req.only(going)
        if going:
            req.step({b: nxt[b][1] for b in going})
            for b in going:
                tok, opens, h, _ = nxt[b]
                req.rows[b].trace.append(byte_event(req.rows[b].n - 1, tok, h, bool(opens), req.rows[b].snapshot()))


def byte_event(pos: int, tok: int, entropy: float, opens: bool | None, counters: dict) -> dict:
    """The byte at `pos`: its entropy H_pos and whether it opened a patch (None: not decided)."""
    return {"type": "byte", "pos": pos, "byte": tok - OFFSET, "entropy": round(entropy, 4), "patch_start": opens,
            "counters": counters}
