"""The slow, obviously-correct generator: recompute everything for every byte.

It is the test oracle for the fast decoders (and what the official BLT code does)."""
from __future__ import annotations

import torch

from ..model import BLT
from ..tokens import ids_to_bytes
from .common import Generation, Sampler, Stopper, check_request


@torch.no_grad()
def generate_reference(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None,
                       sampler: Sampler | None = None) -> Generation:
    """Autoregressive BLT without caches: entropy model, patching, encoder, global model and
    decoder all rerun on the whole prefix for each new byte."""
    sampler = sampler or Sampler()
    ids = check_request(prompt, max_bytes, model.cfg.max_bytes)
    prompt_len = len(ids)
    dev = next(model.parameters()).device
    stopper = Stopper(max_bytes, stop)
    steps = 0
    while True:
        x = torch.tensor([ids], device=dev)
        logits = model(x, model.patch(x))[:, -1]
        steps += 1
        tok = int(sampler.pick(logits)[0])
        if stopper.push(tok):
            break
        ids.append(tok)
    starts = model.patch(torch.tensor([ids], device=dev))[0]
    boundaries = [int(i) for i in starts.nonzero()[:, 0] if i >= prompt_len]
    counters = {"n_dec": steps, "n_enc": steps, "n_ent": steps, "bytes": len(stopper.out)}
    return Generation("reference", ids_to_bytes(ids[:prompt_len]), bytes(stopper.out),
                      stopper.reason, counters, [{"type": "patches", "starts": boundaries}])
