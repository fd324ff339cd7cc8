"""`blt`: autoregressive BLT with KV caches for the entropy model, encoder, global model and decoder."""
from __future__ import annotations

from ..model import BLT
from .common import Generation, Hooks, Sampler, begin, finish
from .state import SeqState


def byte_event(st: SeqState, pos: int, counters: dict) -> dict:
    """Trace record of the byte at `pos`: its entropy and whether it opened a patch (None for a
    final byte that was never pushed, whose patch is not decided)."""
    start = bool(st.starts[pos]) if pos < len(st) else None
    return {"type": "byte", "pos": pos, "byte": st.ids[pos] - 4 if pos < len(st) else None,
            "entropy": round(st.ent[pos], 4), "patch_start": start, "counters": st.snapshot(counters)}


def generate_blt(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None,
                 sampler: Sampler | None = None, hooks: Hooks | None = None) -> Generation:
    """One decoder pass per byte; encoder + global once per finished patch."""
    sampler = sampler or Sampler()
    ids, counters, st, trace, stopper = begin(model, prompt, max_bytes, stop, hooks)
    while True:
        tok = int(sampler.pick(st.last_logits[None])[0])
        if stopper.push(tok):
            if stopper.reason in ("max_bytes", "stop"):  # the last byte was emitted: report it too
                trace.append(byte_event(st, len(st), counters) | {"byte": tok - 4})
            break
        st.push([tok], counters)
        trace.append(byte_event(st, len(st) - 1, counters))
    return finish("blt", ids, stopper, counters, trace, st.stats)
