"""`blt`: autoregressive BLT with KV caches for the entropy model, encoder, global model and decoder."""
from __future__ import annotations

from ..model import BLT
from .common import Generation, Sampler, Stopper, check_request, finish, new_counters
from .state import SeqState


def byte_event(st: SeqState, pos: int, counters: dict) -> dict:
    """Trace record of the byte at `pos`: its entropy and whether it opened a patch."""
    return {"type": "byte", "pos": pos, "byte": st.ids[pos] - 4, "entropy": round(st.ent[pos], 4),
            "patch_start": bool(st.starts[pos]), "counters": dict(counters)}


def generate_blt(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None,
                 sampler: Sampler | None = None) -> Generation:
    """One decoder pass per byte; encoder + global once per finished patch."""
    sampler = sampler or Sampler()
    ids = check_request(prompt, max_bytes, model.cfg.max_bytes)
    counters = new_counters()
    st = SeqState(model)
    st.push(ids, counters)
    trace = [{"type": "prefill", "bytes": len(ids) - 1, "patch_starts": st.starts.nonzero()[:, 0].tolist(),
              "counters": dict(counters)}]
    stopper = Stopper(max_bytes, stop)
    while True:
        tok = int(sampler.pick(st.last_logits[None])[0])
        if stopper.push(tok):
            break
        st.push([tok], counters)
        trace.append(byte_event(st, len(st) - 1, counters))
    return finish("blt", ids, stopper, counters, trace, st.stats)
