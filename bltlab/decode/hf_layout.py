"""Decoding weights in transformers' layout (arch "hf"): `blt` and `blt-s*`, one sequence at a time.

Its decoder at byte t reads the patch before byte t + 1's, which is only final once byte
t + 1 is known; with a max patch length transformers' uncached generate gives the newest row
another patch than the row has once the next byte exists, so a verification pass needs both
("pending" rows, `_decode_shadow`). The batched decoding state (state.py) does not run this
layout yet: until it does, this file keeps an exact incremental state of its own, SeqState:
KV caches for the entropy model, the local encoder, the global model and the decoder, plus the
patch bookkeeping.

`push(ids)` appends bytes and returns the exact next-byte logits at every new position (one
pass of each part, however many bytes: prefill, verification). Caches are lists of (k, v)
tensors that are replaced, never written in place, so `fork()` is a cheap snapshot and
`truncate(n)` rolls back rejected drafts.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from ..entropy import entropy_of_logits
from ..positions import AttnMask
from ..model import BLT
from ..patching import opens_patch, patch_starts
from ..tokens import EOS, OFFSET
from .common import (HASH_CONTEXT, Sampler, Stopper, allowed, check_request, cost_stats, count_kv, count_local,
                     finish)
from .events import Byte, Done, Event, Prefill, Verify

def _run(layers, x, pos, cache: list, window: int, slots=None, stats: dict | None = None) -> torch.Tensor:
    """Layers over new positions `pos` [1, L], attending to the cached prefix too; extends cache.
    Adds the KV-cache elements this pass reads to stats["kv_read"]."""
    n0, L = (cache[0][0].shape[2] if cache else 0), x.shape[1]
    if stats is not None:
        count_kv(stats, len(layers), min(n0, window), x.shape[-1])
    mask = None
    if L > 1 or n0 + L > window:
        kpos = torch.arange(n0 + L, device=x.device)[None]
        mask = AttnMask.causal(pos, kpos, window)
    for i, layer in enumerate(layers):
        x, kv = layer(x, pos, mask, slots=slots, prefix=cache[i] if n0 else None)
        if len(cache) > i:
            cache[i] = kv
        else:
            cache.append(kv)
    return x


class SeqState:
    """Everything the BLT has computed about one growing byte sequence."""

    def __init__(self, model: BLT):
        self.m, self.cfg = model, model.cfg
        self.dev = next(model.parameters()).device
        self.ids: list[int] = []
        self.ent: list[float] = [0.0]  # ent[t] = H_t (entropy of byte t's prediction); len(ids) + 1 entries
        self.starts = torch.zeros(0, dtype=torch.bool)
        self.h = torch.zeros(1, 0, self.cfg.d_local, device=self.dev)  # encoder byte states
        self.table = model.start_slots[None, None].detach().clone()  # [1, 1 + complete, k, d]
        self.ent_cache: list = []
        self.enc_cache: list = []
        self.glob_cache: list = []
        self.dec_cache: list = []
        self.last_logits: torch.Tensor | None = None  # exact prediction of the next byte
        # arch "hf" with a max patch length: transformers' decoder row t reads a patch that is only
        # final once byte t + 1 is known, so the newest row stays out of dec_cache ("pending")
        self.shadow = self.cfg.arch == "hf" and self.cfg.patch.max_patch > 0
        self.pending = False
        # cost counters, shared with forks
        self.stats = cost_stats()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def complete(self) -> int:
        """Patches whose global output is in the slot table."""
        return self.table.shape[1] - 1

    def fork(self) -> "SeqState":
        s = copy.copy(self)
        for name in ("ids", "ent", "ent_cache", "enc_cache", "glob_cache", "dec_cache"):
            setattr(s, name, list(getattr(self, name)))
        return s

    # ---- the four parts, each over the new positions ------------------------------------------
    def _positions(self, n0: int, L: int) -> torch.Tensor:
        return torch.arange(n0, n0 + L, device=self.dev)[None]

    def _entropy(self, new: torch.Tensor, pos: torch.Tensor) -> None:
        count_kv(self.stats, len(self.m.entropy.layers), len(self.ids), self.cfg.entropy.dim)
        logits = self.m.entropy(new, pos, cache=self.ent_cache)
        self.ent += entropy_of_logits(logits)[0].tolist()

    def _encode(self, new: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ctx = torch.tensor([self.ids[max(0, pos[0, 0].item() - HASH_CONTEXT):pos[0, 0].item()]],
                           dtype=torch.long, device=self.dev)
        x = self.m.embed(new, ctx if ctx.shape[1] else None)
        count_local(self.stats, self.m, new.shape[1])
        return _run(self.m.enc_layers, x, pos, self.enc_cache, self.cfg.local_window, stats=self.stats)

    def _restart(self) -> None:
        """Recompute patch starts over the whole sequence (cheap; old starts never change)."""
        n = len(self.ids)
        ids = torch.tensor([self.ids], device=self.dev)
        ent = torch.tensor([self.ent[:n]], device=self.dev)
        self.starts = patch_starts(ent, ids, self.cfg.patch)[0]

    def _next(self, lo: int, hi: int) -> torch.Tensor:
        """arch "hf": [hi - lo] long, 1 where byte t + 1 is known to open a patch while t is the
        newest byte (`opens_patch`), for t in [lo, hi). The decoder at t reads the patch before
        t + 1's; deciding it as transformers' uncached generate does for its last position gives
        every position the logits it had when it was the newest."""
        h = torch.tensor(self.ent[lo:hi + 1], device=self.dev)  # H_lo .. H_hi (only what is needed)
        t = torch.arange(lo + 1, hi + 1, device=self.dev)
        return opens_patch(h[1:], h[:-1], t, self.cfg.patch).long()

    def _known_starts(self) -> int:
        """Starts at positions < len, plus one at len if it is already decided (for
        arch "hf", by the entropy of the next byte): the patch before it is then complete."""
        n = len(self.ids)
        frontier = self.cfg.arch == "hf" and bool(self._next(n - 1, n)[0])
        return int(self.starts.sum()) + frontier

    def _global(self) -> int:
        """Run the global model on patches that became complete; returns how many."""
        target = self._known_starts() - 1
        if target <= self.complete:
            return 0
        pids = self.starts.long().cumsum(0) - 1  # [n]
        lo, hi = self.complete, target
        first = int(self.starts.nonzero()[lo, 0])
        sub = pids[first:] - lo
        sub = torch.where(sub < hi - lo, sub, -1)[None]
        pooled = self.m.pool(self.h[:, first:], sub, hi - lo)  # [1, P_new, d_global]
        pos = torch.arange(lo, hi, device=self.dev)[None]
        g = self.m.global_norm(_run(self.m.global_layers, pooled, pos, self.glob_cache, 1 << 30, stats=self.stats))
        self.table = torch.cat((self.table, self.m.slot_rows(g)), 1)
        return hi - lo

    def _decode(self, h_new: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, cache: list) -> torch.Tensor:
        x = _run(self.m.dec_layers, h_new, pos, cache, self.cfg.local_window, slots=slots, stats=self.stats)
        return self.m.head(self.m.dec_norm(x))[0]

    def _decode_shadow(self, n0: int, L: int, last_rows: torch.Tensor) -> torch.Tensor:
        """Decoder pass for arch "hf" with a max patch length. transformers recomputes everything
        per byte: row t reads patch p(t + 1) - 1 once byte t + 1 exists, but only p(t) - 1 while
        t is the newest byte. So one pass runs two sets of rows over one mask: final rows
        (the pending row n0 - 1 and n0 .. n - 2, cached) and, for every new byte, its row as the
        newest one (`last_rows`), which sees the final rows before it and itself only; their
        logits are returned."""
        n = n0 + L
        lo = n0 - 1 if self.pending else n0
        dev, window = self.dev, self.cfg.local_window
        final = torch.arange(lo, n - 1, device=dev)
        pids = self.starts.long().cumsum(0) - 1
        final_rows = pids[final + 1]  # p(t + 1): byte t + 1 is known
        pos = torch.cat((final, torch.arange(n0, n, device=dev)))[None]
        x = self.h[:, pos[0]]
        slots = self.table[:, torch.cat((final_rows, last_rows))]
        c = self.dec_cache[0][0].shape[2] if self.dec_cache else 0  # cached rows: positions < c = lo
        kpos = torch.cat((torch.arange(c, device=dev), pos[0]))
        q, k = pos[0][:, None], kpos[None, :]
        nf = len(final)
        is_final_key = torch.arange(c + len(pos[0]), device=dev) < c + nf
        mask = (k <= q) & (q - k < window) & is_final_key[None, :]  # final keys, causal
        mask[nf:, c + nf:] = torch.eye(L, dtype=torch.bool, device=dev)  # a newest row sees itself
        mask[nf:, :c + nf] &= k[:, :c + nf] < q[nf:]
        mask = mask[None, None]
        count_kv(self.stats, len(self.m.dec_layers), min(c, window), self.cfg.d_local)
        for i, layer in enumerate(self.m.dec_layers):
            x, (kk, vv) = layer(x, pos, mask, slots=slots, prefix=self.dec_cache[i] if c else None)
            kv = (kk[:, :, :c + nf], vv[:, :, :c + nf])
            if len(self.dec_cache) > i:
                self.dec_cache[i] = kv
            else:
                self.dec_cache.append(kv)
        self.pending = True
        return self.m.head(self.m.dec_norm(x[:, nf:]))[0]

    def append(self, new_ids: list[int], h_new: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Bookkeeping once the entropy model (self.ent extended) and the encoder (h_new [1, L, d])
        ran on new bytes: patches, the global model on finished patches. Returns (patches the global
        model ran on, the slot table row each new byte's decoder reads)."""
        n0 = len(self.ids)
        self.ids += new_ids
        self.h = torch.cat((self.h, h_new), 1)
        self._restart()
        n_glob = self._global()
        rows = (self.starts.long().cumsum(0) - 1)[n0:]  # byte t reads patch p(t) - 1 = table row p(t)
        if self.cfg.arch == "hf":
            rows = rows + self._next(n0, len(self.ids))
        return n_glob, rows

    # ---- public steps -----------------------------------------------------------------------
    @torch.no_grad()
    def push(self, new_ids: list[int], counters: dict | None = None) -> torch.Tensor:
        """Append bytes (exact): returns [L, 260] logits, row i predicting the byte after new_ids[i]."""
        n0, L = len(self.ids), len(new_ids)
        if n0 + L > self.cfg.max_bytes:
            raise ValueError(f"sequence would exceed the model's context of {self.cfg.max_bytes} ids")
        new = torch.tensor([new_ids], dtype=torch.long, device=self.dev)
        pos = self._positions(n0, L)
        self._entropy(new, pos)
        h_new = self._encode(new, pos)
        n_glob, rows = self.append(new_ids, h_new)
        if self.shadow:
            logits = self._decode_shadow(n0, L, rows)
        else:
            logits = self._decode(h_new, pos, self.table[:, rows], self.dec_cache)
        self.last_logits = logits[-1]
        if counters is not None:
            counters["n_ent"] += 1
            counters["n_enc"] += n_glob > 0
            counters["n_dec"] += 1
        return logits

    @torch.no_grad()
    def draft_logits(self, new_ids: list[int]) -> torch.Tensor:
        """Decoder over new bytes with the newest global output for all of them (no entropy, no
        global step): the self-speculation draft. Extends encoder and decoder caches; use on a fork."""
        n0, L = len(self.ids), len(new_ids)
        new = torch.tensor([new_ids], dtype=torch.long, device=self.dev)
        pos = self._positions(n0, L)
        h_new = self._encode(new, pos)
        self.ids += new_ids
        self.h = torch.cat((self.h, h_new), 1)
        if self.pending:  # the row transformers' layout left out of the cache goes in first
            h_new, pos, L = self.h[:, n0 - 1:], self._positions(n0 - 1, L + 1), L + 1
            self.pending = False
        slots = self.table[:, -1:].expand(1, L, -1, -1)
        return self._decode(h_new, pos, slots, self.dec_cache)[-len(new_ids):]

    def snapshot(self, counters: dict) -> dict:
        """Running counters for a trace event: pass counts plus the state's cost counters."""
        return {**counters, **self.stats}

    def truncate(self, n: int, last_logits: torch.Tensor) -> None:
        """Roll back to the first n ids (rejected drafts); `last_logits` predicts byte n."""
        cut = lambda cache, k: [(a[:, :, :k], b[:, :, :k]) for a, b in cache]
        self.ids = self.ids[:n]
        self.ent = self.ent[: n + 1]
        self.starts = self.starts[:n]
        self.h = self.h[:, :n]
        keep = max(self._known_starts() - 1, 0)
        self.table = self.table[:, : 1 + keep]
        self.ent_cache, self.enc_cache = cut(self.ent_cache, n), cut(self.enc_cache, n)
        self.dec_cache, self.glob_cache = cut(self.dec_cache, n - self.shadow), cut(self.glob_cache, keep)
        self.pending = self.shadow
        self.last_logits = last_logits


def stream_hf(model: BLT, prompt: str | bytes, mode: str, max_bytes: int, stop: str | bytes | None,
              sampler: Sampler) -> Iterator[Event]:
    """`blt` or `blt-s{k}` on an "hf"-layout model: the same rules, bytes and events as the batched
    decoders' (blt.py, speculative.py), streamed; the last event is `Done`."""
    ids = check_request(prompt, max_bytes, model.cfg.max_bytes)
    counters = {"n_dec": 0, "n_enc": 0, "n_ent": 0}
    st = SeqState(model)
    st.push(ids, counters)
    trace = []
    yield _add(trace, Prefill(0, st.snapshot(counters), len(ids) - 1, st.starts.nonzero()[:, 0].tolist(),
                              [round(h, 4) for h in st.ent[:len(ids)]]))
    stopper = Stopper(max_bytes, stop)
    if mode == "blt":
        while True:
            tok = int(sampler.pick(st.last_logits[None])[0])
            pos, h = len(st), round(st.ent[len(st)], 4)
            if stopper.push(tok):
                if stopper.reason in ("max_bytes", "stop"):  # emitted, never pushed: its patch is open
                    yield _add(trace, Byte(pos, st.snapshot(counters), tok - OFFSET, h, None))
                break
            st.push([tok], counters)
            yield _add(trace, Byte(pos, st.snapshot(counters), tok - OFFSET, h, bool(st.starts[-1])))
    else:
        for event in _self_speculation(st, int(mode[len("blt-s"):]), sampler, counters, stopper):
            yield _add(trace, event)
    g = finish(mode, ids, stopper, counters, trace, st.stats)
    yield Done(len(st), g.counters, g)


def _add(trace: list, event: Event) -> Event:
    trace.append(event.to_json())
    return event


def _self_speculation(st: SeqState, k: int, sampler: Sampler, counters: dict, stopper: Stopper) -> Iterator[Event]:
    """speculative.py's rounds on one SeqState: draft on a fork, verify by one push, truncate."""
    from .speculative import _judge

    fixed = None  # byte n, when the last rejection settled it
    while True:
        first = fixed if fixed is not None else int(sampler.pick(st.last_logits[None])[0])
        n, room = len(st), min(k, stopper.max_new - len(stopper.out))
        d, qs, fork = [first], [None], st.fork()
        while len(d) < room and d[-1] != EOS:
            logits = fork.draft_logits([d[-1]])[0]
            counters["n_dec"] += 1
            qs.append(sampler.probs(logits[None])[0])
            d.append(int(sampler.pick(logits[None])[0]))
        body = d[:-1] if d[-1] == EOS else d
        preds = st.push(body, counters) if body else []  # preds[i - 1] predicts d[i]
        accepted, fixed = 1, None
        for i in range(1, len(d)):
            p = sampler.probs(preds[i - 1][None])[0] if sampler.temperature > 0 else None
            fixed = _judge(d[i], int(allowed(preds[i - 1]).argmax()), p, qs[i], sampler)
            if fixed is not None:
                st.truncate(n + i, preds[i - 1])
                break
            accepted += 1
        yield Verify.of(n - 1, st.snapshot(counters), d, accepted, fixed,
                        [int(i) for i in st.starts[n:].nonzero()[:, 0] + n])
        if any(stopper.push(t) for t in d[:accepted]):
            return
