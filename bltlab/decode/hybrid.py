"""`blt-h`: one hybrid checkpoint, switching between autoregressive and diffusion steps.

The rule: before each step look at H, the entropy (nats) of the exact next-byte
distribution (free: the last pass computed it). If H <= η the text is predictable right
now, so fill a whole diffusion block (its first byte taken from that exact distribution);
otherwise emit one autoregressive byte. η (`--eta`) is the knob: 0 gives nearly pure
autoregression, a large η pure diffusion. Every switch is recorded in the trace.
"""
from __future__ import annotations

from ..entropy import entropy_of_logits
from ..model import BLT
from .common import Generation, Hooks, Sampler, begin, finish
from .diffusion import check_knobs, denoise_block


def check_hybrid(eta: float, block: int) -> None:
    """The hybrid's own knobs: η in [0, 10] nats, a trained block size."""
    if not 0.0 <= eta <= 10.0:
        raise ValueError(f"eta must be in [0, 10] nats, got {eta}")
    if block not in (4, 8, 16):
        raise ValueError(f"block must be 4, 8 or 16 (the trained sizes), got {block}")


def generate_hybrid(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None,
                    sampler: Sampler | None = None, eta: float = 1.0, block: int = 8,
                    alpha: float | None = None, gamma: float | None = None, hooks: Hooks | None = None) -> Generation:
    sampler = sampler or Sampler()
    alpha, gamma = check_knobs(alpha, gamma)
    check_hybrid(eta, block)
    ids, counters, st, trace, stopper = begin(model, prompt, max_bytes, stop, hooks)
    current = None
    while True:
        h = float(entropy_of_logits(st.last_logits))
        mode = "diffusion" if h <= eta else "ar"
        n = len(st)
        if mode != current:
            trace.append({"type": "switch", "pos": n, "to": mode, "entropy": round(h, 4),
                          "counters": st.snapshot(counters)})
            current = mode
        first = int(sampler.pick(st.last_logits[None])[0])
        size = min(block, max_bytes - len(stopper.out))
        if mode == "ar" or size == 1:
            out, event = [first], {"type": "ar", "pos": n, "byte": first - 4}
        else:
            st.close_patch(counters)
            out, steps = denoise_block(st, size, sampler, alpha, gamma, counters, first=first)
            event = {"type": "block", "pos": n, "size": size, "steps": steps, "bytes": [t - 4 for t in out]}
        keep = []
        done = False
        for t in out:
            if stopper.push(t):
                done = True
                break
            keep.append(t)
        if not done:
            st.push(keep, counters)
            event["patch_starts"] = [int(i) for i in st.starts[n:].nonzero()[:, 0] + n]
        event["entropy"] = round(h, 4)
        event["counters"] = st.snapshot(counters)
        trace.append(event)
        if done:
            break
    return finish("blt-h", ids, stopper, counters, trace, st.stats)
