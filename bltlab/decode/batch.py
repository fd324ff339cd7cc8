"""Batch > 1 for `blt` and `blt-d*`: ragged prompts, per-row stopping (and on the static engine
every other mode too: static_modes.py).

Each row keeps its own exact `SeqState` (patches, slot table, global cache: per-patch work
stays per row); the per-byte passes (entropy model, local encoder, decoder) and the
denoising passes run once for all active rows, with each row's KV cache padded to the
longest and masked. Pass counters count batched passes: one pass serves every active row; each
row's cost counters (KV-cache elements read, hash rows) count what its own passes read, unpadded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..entropy import entropy_of_logits
from ..model import BLT
from ..tokens import MASK
from .common import (BATCH_MODES, STATIC_BATCH_MODES, Generation, Sampler, Stopper, batch_counters, check_request,
                     count_push, finish_batch, mode_size)
from .diffusion import check_knobs, choose_unmask
from .state import HASH_CONTEXT, SeqState, count_kv, count_local
from .static_modes import (generate_static_batch, generate_static_batch_diffusion, generate_static_batch_hybrid,
                           generate_static_batch_speculative)


def _pad(ts: list[torch.Tensor], S: int) -> torch.Tensor:
    """[1, H, n_b, hd] per row -> [B, H, S, hd], zero-padded at the end."""
    return torch.cat([F.pad(t, (0, 0, 0, S - t.shape[2])) for t in ts])


def run_rows(layers, x: torch.Tensor, pos: torch.Tensor, rows: list[SeqState], cache: str, window: int,
             slots=None, causal: bool = True, extend: bool = True) -> torch.Tensor:
    """Layers over L new positions of B rows whose caches (attribute `cache` of each row) differ in
    length. x: [B, L, d], pos: [B, L]. New keys are causal among themselves (or all visible with
    causal=False, a diffusion block). Adds each row's own KV-cache reads to its stats."""
    B, L = pos.shape
    caches = [getattr(st, cache) for st in rows]
    n0 = [c[0][0].shape[2] if c else 0 for c in caches]
    for st, n in zip(rows, n0):
        count_kv(st.stats, len(layers), min(n, window), x.shape[-1])
    lens = torch.tensor(n0, device=x.device)
    S = int(lens.max())
    j = torch.arange(S, device=x.device)
    old = (j[None, None, :] < lens[:, None, None]) & (pos[:, :, None] - j[None, None, :] < window)  # [B, L, S]
    new = torch.ones(L, L, dtype=torch.bool, device=x.device)
    new = new.tril() if causal else new
    mask = torch.cat((old, new.expand(B, L, L)), -1)[:, None]
    for i, layer in enumerate(layers):
        prefix = (_pad([c[i][0] for c in caches], S), _pad([c[i][1] for c in caches], S)) if S else None
        x, (k, v) = layer(x, pos, mask, slots=slots, prefix=prefix)
        if extend:
            for b, c in enumerate(caches):
                kb, vb = k[b:b + 1, :, S:], v[b:b + 1, :, S:]
                if len(c) > i:
                    c[i] = (torch.cat((c[i][0], kb), 2), torch.cat((c[i][1], vb), 2))
                else:
                    c.append((kb, vb))
    return x


@torch.no_grad()
def push_rows(m: BLT, rows: list[SeqState], new_ids: list[list[int]], counters: dict) -> torch.Tensor:
    """SeqState.push for several rows at once (same number L of new ids each): [B, L, 260]."""
    dev = rows[0].dev
    new = torch.tensor(new_ids, dtype=torch.long, device=dev)
    B, L = new.shape
    pos = torch.stack([torch.arange(len(st), len(st) + L, device=dev) for st in rows])
    x = run_rows(m.entropy.layers, m.entropy.emb(new), pos, rows, "ent_cache", 1 << 30)
    ent = entropy_of_logits(m.entropy.head(m.entropy.norm(x)))
    emb = torch.cat([m.embed(new[b:b + 1], torch.tensor([st.ids[-HASH_CONTEXT:]], device=dev))
                     for b, st in enumerate(rows)])
    h = run_rows(m.enc_layers, emb, pos, rows, "enc_cache", m.cfg.local_window)
    slots, n_glob = [], 0
    for b, st in enumerate(rows):
        st.ent += ent[b].tolist()
        n, table_rows = st.append(new_ids[b], h[b:b + 1])
        n_glob += n
        slots.append(st.table[:, table_rows])
        count_local(st.stats, m, L)
    x = run_rows(m.dec_layers, h, pos, rows, "dec_cache", m.cfg.local_window, slots=torch.cat(slots))
    logits = m.head(m.dec_norm(x))
    for b, st in enumerate(rows):
        st.last_logits = logits[b, -1]
    count_push(counters, n_glob > 0)
    return logits


@torch.no_grad()
def block_rows(m: BLT, rows: list[SeqState], noisy: list[list[int]]) -> torch.Tensor:
    """SeqState.block_logits for several rows: [B, L, 260]."""
    dev = rows[0].dev
    x = m.noisy_embed(torch.tensor(noisy, dtype=torch.long, device=dev))
    L = x.shape[1]
    pos = torch.stack([torch.arange(len(st), len(st) + L, device=dev) for st in rows])
    slots = torch.cat([st.table[:, -1:].expand(1, L, -1, -1) for st in rows])
    x = run_rows(m.dec_layers, x, pos, rows, "dec_cache", m.cfg.local_window, slots=slots, causal=False,
                 extend=False)
    return m.head(m.dec_norm(x))


def generate_batch(model: BLT, prompts: list[str | bytes], mode: str = "blt", max_bytes: int = 64,
                   stop: str | bytes | None = None, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int | None = None, alpha: float | None = None, gamma: float | None = None,
                   eta: float = 1.0, block: int = 8, engine: str = "auto") -> list[Generation]:
    """Generate for several prompts at once with `blt` or `blt-d4/8/16`, and on the static engine
    with `blt-s8/16`, `blt-dv4/8/16` and `blt-h` too (eta, block: the hybrid's knobs); one
    Generation per prompt (each carries the batch's shared pass counters and its own KV-cache
    and hash reads). `engine` as in `generate`: the static engine replays one CUDA graph per step
    for all rows (static_modes.py); "auto" takes it for the modes that batch only there."""
    if mode not in BATCH_MODES + STATIC_BATCH_MODES:
        raise ValueError(f"batched generation supports {', '.join(BATCH_MODES + STATIC_BATCH_MODES)}, got {mode!r}")
    if not prompts:
        raise ValueError("no prompts given")
    if model.cfg.arch != "bltlab":
        raise ValueError("batched generation supports bltlab-layout models only; generate one prompt at a time")
    from . import pick_batch_engine

    if mode != "blt":
        alpha, gamma = check_knobs(alpha, gamma)
    engine = pick_batch_engine(model, mode, temperature, engine)
    if engine != "eager":
        compiled = engine == "compiled"
        if mode == "blt":
            return generate_static_batch(model, prompts, max_bytes, stop, compiled=compiled)
        if mode == "blt-h":
            return generate_static_batch_hybrid(model, prompts, eta, block, max_bytes, stop, alpha, gamma, compiled)
        if mode in STATIC_BATCH_MODES:
            return generate_static_batch_speculative(model, prompts, mode_size(mode), mode.startswith("blt-s"),
                                                     max_bytes, stop, compiled)
        return generate_static_batch_diffusion(model, prompts, mode_size(mode), max_bytes, stop, alpha, gamma, compiled)
    sampler = Sampler(temperature, top_p, seed)
    prompt_ids = [check_request(p, max_bytes, model.cfg.max_bytes) for p in prompts]
    counters = batch_counters()  # the prefill, per row below (ragged lengths), counted as one batched pass
    rows = [SeqState(model) for _ in prompts]
    for st, ids in zip(rows, prompt_ids):
        st.push(ids)
    stoppers = [Stopper(max_bytes, stop) for _ in prompts]
    active = list(range(len(prompts)))
    while active:
        if mode == "blt":
            toks = sampler.pick(torch.stack([rows[b].last_logits for b in active])).tolist()
            keep = [(b, t) for b, t in zip(active, toks) if not stoppers[b].push(t)]
            active = [b for b, _ in keep]
            if keep:
                push_rows(model, [rows[b] for b, _ in keep], [[t] for _, t in keep], counters)
            continue
        for b in active:
            rows[b].close_patch()
        counters["n_enc"] += 1  # one batched encoder + global pass closes every row's patch
        noisy = {b: [MASK] * min(mode_size(mode), max_bytes - len(stoppers[b].out)) for b in active}
        while any(MASK in noisy[b] for b in active):
            todo = [b for b in active if MASK in noisy[b]]
            for size in sorted({len(noisy[b]) for b in todo}):  # a block attends to all of itself: same sizes
                group = [b for b in todo if len(noisy[b]) == size]
                logits = block_rows(model, [rows[b] for b in group], [noisy[b] for b in group])
                counters["n_dec"] += 1
                for lg, b in zip(logits, group):
                    chosen = choose_unmask(lg, [i for i, t in enumerate(noisy[b]) if t == MASK], alpha, gamma)
                    for slot, tok in zip(chosen, sampler.pick(lg[chosen]).tolist()):
                        noisy[b][slot] = int(tok)
        done = {b for b in active if any(stoppers[b].push(t) for t in noisy[b])}
        active = [b for b in active if b not in done]
        for size in sorted({len(noisy[b]) for b in active}):
            group = [b for b in active if len(noisy[b]) == size]
            push_rows(model, [rows[b] for b in group], [noisy[b] for b in group], counters)
    return finish_batch(mode, prompt_ids, stoppers, counters, [st.stats for st in rows])
