"""`blt-d*`: block diffusion. Append B MASKs at a patch start and unmask several per decoder
pass, by confidence (every masked slot with max-prob > α; at least the most confident one)
or by an entropy bound (sort masked slots by entropy, take the longest prefix whose entropy
sum, less its largest term, stays below γ; at least one). A finished block is pushed
through the exact state once, which fills its KV caches and places its patches.
"""
from __future__ import annotations

import torch

from .. import kernels
from ..entropy import entropy_of_logits
from ..model import BLT
from ..tokens import MASK
from .common import Generation, Hooks, Sampler, allowed, begin, finish
from .state import SeqState


def choose_unmask(logits: torch.Tensor, masked: list[int], alpha: float | None, gamma: float | None) -> list[int]:
    """Which masked slots to fill in this pass. logits: [B, 260] over the block."""
    ent, conf, _ = kernels.confidence(allowed(logits[masked].float()))  # one pass over the rows
    if gamma is not None:
        order = ent.argsort(stable=True)  # ties in slot order (as the static engine's)
        before = kernels.sum_before(ent[order])  # entropy of the prefix less its largest term
        n = max(1, int((before < gamma).sum())) if gamma > 0 else 1
        return [masked[i] for i in order[:n].tolist()]
    chosen = [m for m, c in zip(masked, conf.tolist()) if c > alpha]
    return chosen or [masked[int(conf.argmax())]]


def denoise_block(st: SeqState, size: int, sampler: Sampler, alpha, gamma, counters: dict,
                  first: int | None = None) -> tuple[list[int], list[dict]]:
    """Fill a block of `size` slots right after the state; returns its ids and the steps taken."""
    noisy = [MASK] * size
    if first is not None:
        noisy[0] = first
    steps = []
    while MASK in noisy:
        logits = st.block_logits(noisy)
        counters["n_dec"] += 1
        masked = [i for i, t in enumerate(noisy) if t == MASK]
        chosen = choose_unmask(logits, masked, alpha, gamma)
        picks = sampler.pick(logits[chosen])
        probs = allowed(logits[chosen].float()).softmax(-1)
        for slot, tok in zip(chosen, picks.tolist()):
            noisy[slot] = int(tok)
        steps.append({"unmasked": chosen, "bytes": [t - 4 for t in picks.tolist()],
                      "confidence": [round(float(c), 4) for c in probs.amax(-1)],
                      "entropy": [round(float(h), 4) for h in entropy_of_logits(allowed(logits[chosen].float()))]})
    return noisy, steps


def check_knobs(alpha: float | None, gamma: float | None) -> tuple[float | None, float | None]:
    if alpha is not None and gamma is not None:
        raise ValueError("give either alpha (confidence) or gamma (entropy bound), not both")
    if gamma is not None and not 0.0 <= gamma <= 100.0:
        raise ValueError(f"gamma must be in [0, 100], got {gamma}")
    if alpha is None and gamma is None:
        alpha = 0.9
    if alpha is not None and not 0.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must be in [0, 2] (above 1: one byte per pass), got {alpha}")
    return alpha, gamma


def generate_diffusion(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None,
                       sampler: Sampler | None = None, block: int = 8, alpha: float | None = None,
                       gamma: float | None = None, hooks: Hooks | None = None) -> Generation:
    """Block diffusion with the hybrid checkpoint's masked-block head."""
    sampler = sampler or Sampler()
    alpha, gamma = check_knobs(alpha, gamma)
    if block not in (4, 8, 16):
        raise ValueError(f"block must be 4, 8 or 16 (the trained sizes), got {block}")
    ids, counters, st, trace, stopper = begin(model, prompt, max_bytes, stop, hooks)
    while True:
        st.close_patch(counters)
        size = min(block, max_bytes - len(stopper.out))
        n = len(st)
        out, steps = denoise_block(st, size, sampler, alpha, gamma, counters)
        done = False
        keep = []
        for t in out:
            if stopper.push(t):
                done = True
                break
            keep.append(t)
        event = {"type": "block", "pos": n, "size": size, "steps": steps, "bytes": [t - 4 for t in out]}
        if not done:
            st.push(keep, counters)  # exact caches + patches for the finished block
            event["patch_starts"] = [int(i) for i in st.starts[n:].nonzero()[:, 0] + n]
        trace.append(event | {"counters": st.snapshot(counters)})
        if done:
            break
    return finish(f"blt-d{block}", ids, stopper, counters, trace, st.stats)
