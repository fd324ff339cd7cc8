"""The slow, obviously-correct generators: recompute everything for every byte (or every
denoising pass), with the model's training forward and no cache.

They are the test oracles for the fast decoders (the first is what the official BLT code does)."""
from __future__ import annotations

import torch

from ..model import BLT
from ..tokens import MASK, ids_to_bytes
from .common import Generation, Sampler, Stopper, allowed, check_knobs, check_request


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


@torch.no_grad()
def generate_reference_diffusion(model: BLT, prompt: str | bytes, max_bytes: int = 64, block: int = 8,
                                 alpha: float | None = None, gamma: float | None = None, in_order: bool = True,
                                 exact_first: bool = True) -> Generation:
    """Greedy block diffusion (`blt-d{block}`) without caches: every denoising pass is the training
    forward (`BLT.forward` with one noisy block) on the whole sequence, whose patches start at
    every block, and the unmasking rule is kernels.step.unmask_rule's reference. exact_first: slot 0
    is the greedy next byte of that forward's clean stream, at the byte before the block, before the
    first pass of a block after a prompt or a step and after the first pass of a block after a full
    one (the cached decoder runs that pass with the push of the block before, which computes the
    byte); in_order: a block ends at a pass that fills nothing, and greedy `blt` steps follow until
    a byte would open a patch by the entropy rule, where the next block starts."""
    from ..kernels.step import unmask_rule

    rule = check_knobs(alpha, gamma, in_order, exact_first)
    knob = torch.tensor([rule.knob], dtype=torch.float64)
    ids = check_request(prompt, max_bytes, model.cfg.max_bytes)
    prompt_len, blocks, passes = len(ids), [], 0
    dev = next(model.parameters()).device
    stopper = Stopper(max_bytes, None)

    def patched(seq: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor([seq], device=dev)
        forced = torch.zeros_like(x, dtype=torch.bool)
        forced[0, [s for s in blocks if s < len(seq)]] = True
        return x, model.patch(x, forced=forced)

    in_block, ridden = True, False  # ridden: the block follows a full one, whose push ran its first pass
    while True:
        if not in_block:  # blt's step after a block cut short; where its byte would open a patch, a block
            x, starts = patched(ids)
            tok = int(allowed(model(x, starts)[0, -1].float()).argmax())
            passes += 1
            if not bool(patched(ids + [tok])[1][0, len(ids)]):
                if stopper.push(tok):
                    break
                ids.append(tok)
                continue
            in_block = True
        s, size = len(ids), min(block, max_bytes - len(stopper.out))
        blocks.append(s)
        x, starts = patched(ids + [ids[-1]])  # byte s stands in for the block: the block never reads it
        noisy = torch.full((1, 1, size), MASK, device=dev)
        at = torch.tensor([[s]], device=dev)
        if exact_first and not ridden:  # the block's first pass sees byte s (the pass before made it)
            noisy[0, 0, 0] = allowed(model(x, starts, at, noisy)[0][0, s - 1].float()).argmax()
        while bool((noisy == MASK).any()):
            clean, logits = model(x, starts, at, noisy)
            if exact_first and noisy[0, 0, 0] == MASK:  # a ridden first pass computes byte s beside it
                noisy[0, 0, 0] = allowed(clean[0, s - 1].float()).argmax()
            logits = allowed(logits[0].float())  # [1, size, V]
            masked = noisy[0] == MASK
            chosen = unmask_rule(logits, masked, knob, rule.by_entropy, rule.in_order)[0]
            noisy[0] = torch.where(chosen, logits.argmax(-1), noisy[0])
            passes += 1
            if not chosen.any():  # in order, unsure of the next slot: the block ends before it
                break
        out = [i for i in noisy[0, 0].tolist() if i != MASK]  # (in order: a prefix)
        if any(stopper.push(t) for t in out):
            break
        ids += out
        in_block = ridden = len(out) == size  # cut short: blt's steps until a patch opens
    counters = {"n_dec": passes, "bytes": len(stopper.out)}
    return Generation(f"reference-d{block}", ids_to_bytes(ids[:prompt_len]), bytes(stopper.out), stopper.reason,
                      counters, [])
