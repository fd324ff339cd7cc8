"""Draft-then-verify decoding: `blt-s*` (self-speculation) and `blt-dv*` (diffusion draft).

Both keep an exact SeqState. A cycle drafts bytes cheaply, verifies them with one exact
pass over the draft (entropy model + encoder + global + decoder), keeps the longest
accepted prefix and takes the byte at the first rejection from the exact distribution
(greedy: its argmax; sampling: the standard rejection rule, so the output distribution is
the model's own). Greedy `blt-s*` output therefore equals greedy `blt` byte for byte.
"""
from __future__ import annotations

import torch

from ..model import BLT
from ..tokens import EOS, MASK
from .common import Generation, Hooks, Sampler, begin, finish
from .state import SeqState


def _draft_self(st: SeqState, first: int, q_first: torch.Tensor, k: int, sampler: Sampler, counters: dict):
    """Decoder-only drafting past patch boundaries with the newest global output."""
    draft, qs = [first], [q_first]
    fork = st.fork()
    while len(draft) < k and draft[-1] != EOS:
        logits = fork.draft_logits([draft[-1]])[0]
        counters["n_dec"] += 1
        q = sampler.probs(logits[None])[0]
        draft.append(int(sampler.pick(logits[None])[0]))
        qs.append(q)
    return draft, qs


def _draft_diffusion(st: SeqState, first: int, q_first: torch.Tensor, k: int, sampler: Sampler, counters: dict):
    """One denoising pass over a block whose first byte is known: every other slot at once."""
    st.close_patch(counters)  # diffusion blocks start patches
    if k == 1:
        return [first], [q_first]
    logits = st.block_logits([first] + [MASK] * (k - 1))[1:]
    counters["n_dec"] += 1
    qs = sampler.probs(logits)
    picks = sampler.pick(logits).tolist()
    draft, out_q = [first], [q_first]
    for tok, q in zip(picks, qs):
        draft.append(int(tok))
        out_q.append(q)
        if tok == EOS:
            break
    return draft, out_q


def generate_speculative(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None,
                         sampler: Sampler | None = None, k: int = 16, draft: str = "self",
                         mode: str = "", hooks: Hooks | None = None) -> Generation:
    """draft="self": BLT-S with window k; draft="diffusion": BLT-DV with block k."""
    sampler = sampler or Sampler()
    if not 1 <= k <= 64:
        raise ValueError(f"draft window / block must be in [1, 64], got {k}")
    ids, counters, st, trace, stopper = begin(model, prompt, max_bytes, stop, hooks)
    pending: int | None = None  # byte fixed by the last rejection
    make = _draft_self if draft == "self" else _draft_diffusion
    while True:
        p0 = sampler.probs(st.last_logits[None])[0]
        first = pending if pending is not None else int(sampler.pick(st.last_logits[None])[0])
        room = min(k, max_bytes - len(stopper.out))
        n = len(st)
        d, qs = make(st, first, p0, room, sampler, counters)
        body = d[:-1] if d[-1] == EOS else d
        rows = st.push(body, counters) if body else None
        preds = [None] + ([] if rows is None else list(rows))  # preds[i] predicts d[i]
        accepted, rejected, pending = 1, None, None
        for i in range(1, len(d)):
            p = sampler.probs(preds[i][None])[0]
            if sampler.temperature == 0:
                ok = d[i] == int(p.argmax())
            else:
                ratio = float(p[d[i]] / qs[i][d[i]].clamp(min=1e-12))
                ok = float(torch.rand((), generator=sampler.gen)) < min(1.0, ratio)
            if ok:
                accepted += 1
                continue
            residual = (p - qs[i]).clamp(min=0)
            residual = p if residual.sum() <= 0 else residual / residual.sum()
            pending = int(residual.argmax()) if sampler.temperature == 0 else \
                int(torch.multinomial(residual, 1, generator=sampler.gen))
            rejected = d[i]
            st.truncate(n + i, preds[i])
            break
        trace.append({"type": "verify", "pos": n - 1, "draft": [t - 4 for t in d], "accepted": accepted,
                      "rejected": None if rejected is None else rejected - 4,
                      "correction": None if pending is None else pending - 4,
                      "patch_starts": [int(i) for i in st.starts[n:].nonzero()[:, 0] + n],
                      "counters": st.snapshot(counters)})
        if any(stopper.push(t) for t in d[:accepted]):
            break
    return finish(mode or ("blt-s" if draft == "self" else "blt-dv") + str(k), ids, stopper, counters, trace,
                  st.stats)
