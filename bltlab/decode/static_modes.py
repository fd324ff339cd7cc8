"""Every greedy decoding mode on the static engine (static.py), one prompt at a time or a batch.

The host keeps what the eager decoders keep (counters, cost stats, trace, stopper) and reads
from the device only what decides the next step: the new byte and whether it opens a patch
(`blt`), the draft (`blt-s*`, `blt-dv*`), the masked slots left (denoising), the verified
predictions and patch starts (after each verification or block). Each function returns the
same bytes, counters and trace as the eager decoder it mirrors (tests/test_static.py).
"""
from __future__ import annotations

import torch

from ..entropy import entropy_of_logits
from ..model import BLT
from ..tokens import EOS, OFFSET
from .common import (MODES, Generation, Stopper, batch_counters, check_request, count_push, finish, finish_batch,
                     mode_size)
from .diffusion import check_knobs
from .hybrid import check_hybrid
from .state import cost_stats, count_kv, count_local
from .static import StaticState, static_state


class _Cost:
    """SeqState's cost counters (state.py) for one row of a static state, step by step: local
    passes, KV-cache elements read and hash rows, from the row's position n and finished patches."""

    def __init__(self, model: BLT, n: int, ncomp: int):
        self.m, self.cfg, self.n, self.ncomp = model, model.cfg, n, ncomp
        self.stats = cost_stats()
        count_local(self.stats, model, n)  # the prefill

    def count_local(self, t: int, L: int = 1) -> None:
        """One encoder + decoder pass over L bytes from position t."""
        c = self.cfg
        count_local(self.stats, self.m, L)
        count_kv(self.stats, c.n_enc_layers + c.n_dec_layers, min(t, c.local_window), c.d_local)

    def count_push(self, L: int, closed: int) -> None:
        """SeqState.push of L bytes at n that closed `closed` patches."""
        c = self.cfg
        count_kv(self.stats, c.entropy.n_layers, self.n, c.entropy.dim)
        self.count_local(self.n, L)
        if closed:
            count_kv(self.stats, c.n_global_layers, self.ncomp, c.d_global)

    def pushed(self, L: int, ncomp: int) -> int:
        """L bytes at n went through every part, after which `ncomp` patches are finished: count
        them and move on. Returns the patches closed."""
        closed = ncomp - self.ncomp
        self.count_push(L, closed)
        self.n, self.ncomp = self.n + L, ncomp
        return closed

    def count_close(self) -> None:
        """SeqState.close_patch: the patch before n ends, the global model runs on it."""
        count_kv(self.stats, self.cfg.n_global_layers, self.ncomp, self.cfg.d_global)
        self.ncomp += 1

    def count_block_pass(self) -> None:
        """One denoising pass (SeqState.block_logits)."""
        count_kv(self.stats, self.cfg.n_dec_layers, min(self.n, self.cfg.local_window), self.cfg.d_local)


class _Request(_Cost):
    """One prompt on the static engine (batch 1): prefilled in one pass, with the counters, cost
    stats and trace that the eager decoders' SeqState would have."""

    def __init__(self, model: BLT, prompt: str | bytes, max_bytes: int, stop: str | bytes | None, compiled: bool):
        self.ids = check_request(prompt, max_bytes, model.cfg.max_bytes)
        self.s = s = static_state(model, 1, compiled)
        s.prefill([self.ids])
        n = len(self.ids)  # bytes taken: the state's t
        starts, ent = s.olog[0, :n].tolist(), s.ent[0, :n].tolist()
        super().__init__(model, n, sum(starts) - 1)  # ncomp: patches in the slot table
        self.counters = {"n_dec": 1, "n_enc": int(self.ncomp > 0), "n_ent": 1}
        self.trace = [{"type": "prefill", "bytes": n - 1, "patch_starts": [i for i, x in enumerate(starts) if x],
                       "entropy": [round(h, 4) for h in ent], "counters": self.snapshot()}]
        self.stopper = Stopper(max_bytes, stop)

    def snapshot(self) -> dict:
        return {**self.counters, **self.stats}

    def count_push(self, L: int, closed: int) -> None:
        super().count_push(L, closed)
        self.counters["n_ent"] += 1
        self.counters["n_dec"] += 1
        self.counters["n_enc"] += closed > 0

    def push(self, L: int, with_global: bool = True, close: bool = False) -> tuple[list[int], list[int]]:
        """The L bytes at n (already in the state's ids) through every part, exactly. Returns the
        greedy byte after each and 1 where each opened a patch. close: the state closes the patch
        at n + L in the same replay, which `close(run=False)` then counts."""
        s, n = self.s, self.n
        s.run(L, with_global, close)
        out = torch.cat((s.pred[0, n:n + L], s.olog[0, n:n + L].long(), s.ncomp)).tolist()
        self.pushed(L, out[-1] - close)
        return out[:L], out[L:2 * L]

    def rollback(self, n: int, byte: int) -> None:
        """Back to the first n bytes, with `byte` as byte n."""
        self.s.rollback(n, byte)
        self.n, self.ncomp = n, int(self.s.ncomp[0])

    def close(self, run: bool = True) -> None:
        """SeqState.close_patch (never empty: byte n - 1 is in the patch); run=False: counted only,
        the push before closed it."""
        if run:
            self.s.run_close()
        self.count_close()
        self.counters["n_enc"] += 1

    def count_block_pass(self) -> None:
        super().count_block_pass()
        self.counters["n_dec"] += 1

    def denoise(self, size: int, alpha: float | None, gamma: float | None, keep_first: bool = False):
        """`denoise_block`: fill the block of `size` slots at n (slot 0 = byte n with keep_first).
        Returns its ids and the trace's steps."""
        s = self.s
        s.run_begin(keep_first, alpha if gamma is None else gamma)
        left = size - keep_first
        while left:
            s.run_denoise(size, gamma is not None)
            self.count_block_pass()
            left = int(s.left[0])
        ids, (step, order), (conf, ent) = s.noisy[0, :size].tolist(), s.filled[0, :, :size].tolist(), \
            s.scores[0, :, :size].tolist()
        steps = []
        for j in range(max(step) + 1):
            chosen = sorted((i for i in range(size) if step[i] == j), key=lambda i: order[i])
            steps.append({"unmasked": chosen, "bytes": [ids[i] - OFFSET for i in chosen],
                          "confidence": [round(conf[i], 4) for i in chosen],
                          "entropy": [round(ent[i], 4) for i in chosen]})
        return ids, steps

    def emit(self, out: list[int]) -> bool:
        """Give bytes to the stopper; True when the generation ends."""
        return any(self.stopper.push(t) for t in out)


@torch.no_grad()
def generate_static(model: BLT, prompt: str | bytes, mode: str = "blt", max_bytes: int = 64,
                    stop: str | bytes | None = None, alpha: float | None = None, gamma: float | None = None,
                    eta: float = 1.0, block: int = 8, compiled: bool = False) -> Generation:
    """Greedy `mode` for one prompt on the static engine: the same bytes, counters and trace as
    the eager decoder (knobs as in `generate`; `compiled`: steps through torch.compile)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode.startswith("blt-d") or mode == "blt-h":
        alpha, gamma = check_knobs(alpha, gamma)
    if mode == "blt-h":
        check_hybrid(eta, block)
    r = _Request(model, prompt, max_bytes, stop, compiled)
    if mode == "blt":
        _autoregressive(r)
    elif mode.startswith("blt-s") or mode.startswith("blt-dv"):
        _speculative(r, mode_size(mode), mode.startswith("blt-s"))
    elif mode.startswith("blt-d"):
        _diffusion(r, mode_size(mode), alpha, gamma)
    else:
        _hybrid(r, eta, block, alpha, gamma)
    return finish(mode, r.ids, r.stopper, r.counters, r.trace, r.stats)


def _autoregressive(r: _Request) -> None:
    """`generate_blt`: one replay per byte, the global step only where the byte opens a patch;
    the trace is written once at the end (the host reads two numbers per byte)."""
    s, counters, stopper = r.s, r.counters, r.stopper
    tok, opens = s.signal[0].tolist()
    events = []  # (position, byte, opened, counters) per pushed byte
    while not stopper.push(tok):
        s.run(1, with_global=bool(opens))
        pos = r.n
        r.pushed(1, r.ncomp + opens)
        events.append((pos, tok, bool(opens), r.snapshot()))
        tok, opens = s.signal[0].tolist()
    ent = s.ent[0, :r.n + 1].tolist()
    for pos, byte, opened, snap in events:
        r.trace.append({"type": "byte", "pos": pos, "byte": byte - OFFSET, "entropy": round(ent[pos], 4),
                        "patch_start": opened, "counters": snap})
    if stopper.reason in ("max_bytes", "stop"):
        r.trace.append({"type": "byte", "pos": r.n, "byte": tok - OFFSET, "entropy": round(ent[r.n], 4),
                        "patch_start": None, "counters": r.snapshot()})


def _speculative(r: _Request, k: int, self_draft: bool) -> None:
    """`generate_speculative`, greedy: self-drafting (`blt-s{k}`: decoder-only steps replayed
    without host reads) or a one-pass diffusion draft (`blt-dv{k}`); the draft is read once, cut
    at EOS, and verified by one pass."""
    s = r.s
    while True:
        room, n = min(k, r.stopper.max_new - len(r.stopper.out)), r.n
        if self_draft:
            s.dt.fill_(n)
            for _ in range(room - 1):
                s.run_draft()
        else:
            r.close()
            if room > 1:
                s.run_begin(True, -1.0)  # α < 0: every slot in one pass
                s.run_denoise(room, False)
                r.count_block_pass()
        d = s.ids[0, n:n + room].tolist()  # d[0]: the byte the last verification settled
        d = d[:d.index(EOS) + 1] if EOS in d else d
        if self_draft:  # what the eager drafts count (a fork shares the stats)
            for u in range(n, n + len(d) - 1):
                r.count_local(u)
            r.counters["n_dec"] += len(d) - 1
        body = d[:-1] if d[-1] == EOS else d
        preds, starts = r.push(len(body)) if body else ([], [])
        accepted, rejected, correction = 1, None, None
        for i in range(1, len(d)):  # preds[i - 1] is the exact greedy byte at n + i
            if d[i] == preds[i - 1]:
                accepted += 1
                continue
            rejected, correction = d[i], preds[i - 1]
            r.rollback(n + i, correction)
            break
        kept = starts[:accepted] if rejected is not None else starts
        r.trace.append({"type": "verify", "pos": n - 1, "draft": [t - OFFSET for t in d], "accepted": accepted,
                        "rejected": None if rejected is None else rejected - OFFSET,
                        "correction": None if correction is None else correction - OFFSET,
                        "patch_starts": [n + j for j, x in enumerate(kept) if x], "counters": r.snapshot()})
        if r.emit(d[:accepted]):
            return


def _diffusion(r: _Request, block: int, alpha: float | None, gamma: float | None) -> None:
    """`generate_diffusion`: a block of MASKs at each patch start, denoised in passes of one
    replay each; a finished block goes through every part in one pass, which also closes the
    patch before the next block (one global step for both)."""
    pushed = False
    while True:
        r.close(run=not pushed)
        size, n = min(block, r.stopper.max_new - len(r.stopper.out)), r.n
        out, steps = r.denoise(size, alpha, gamma)
        event = {"type": "block", "pos": n, "size": size, "steps": steps, "bytes": [t - OFFSET for t in out]}
        done = r.emit(out)
        if not done:
            event["patch_starts"] = [n + j for j, x in enumerate(r.push(size, close=True)[1]) if x]
            pushed = True
        r.trace.append(event | {"counters": r.snapshot()})
        if done:
            return


def _next_bytes(s: StaticState) -> tuple[list[float], list[tuple[int, int]]]:
    """Each row's next-byte entropy (of `logits`, what BLT-H decides by) and (byte t, opens), in
    one host read."""
    both = torch.cat((entropy_of_logits(s.logits).double()[:, None], s.signal.double()), 1).tolist()
    return [row[0] for row in both], [(int(row[1]), int(row[2])) for row in both]


def _hybrid(r: _Request, eta: float, block: int, alpha: float | None, gamma: float | None) -> None:
    """`generate_hybrid`: per step, one autoregressive byte or a diffusion block opened by it,
    chosen by the entropy of the exact next-byte distribution."""
    s, current = r.s, None
    while True:
        (h,), ((first, opens),) = _next_bytes(s)
        mode, n = "diffusion" if h <= eta else "ar", r.n
        if mode != current:
            r.trace.append({"type": "switch", "pos": n, "to": mode, "entropy": round(h, 4), "counters": r.snapshot()})
            current = mode
        size = min(block, r.stopper.max_new - len(r.stopper.out))
        if mode == "ar" or size == 1:
            out, event = [first], {"type": "ar", "pos": n, "byte": first - OFFSET}
        else:
            r.close()
            out, steps = r.denoise(size, alpha, gamma, keep_first=True)
            event = {"type": "block", "pos": n, "size": size, "steps": steps, "bytes": [t - OFFSET for t in out]}
        done = r.emit(out)
        if not done:
            starts = r.push(len(out), with_global=len(out) > 1 or bool(opens))[1]
            event["patch_starts"] = [n + j for j, x in enumerate(starts) if x]
        r.trace.append(event | {"entropy": round(h, 4), "counters": r.snapshot()})
        if done:
            return


@torch.no_grad()
def generate_static_batch(model: BLT, prompts: list[str | bytes], max_bytes: int = 64,
                          stop: str | bytes | None = None, check_every: int = 8,
                          compiled: bool = False) -> list[Generation]:
    """Greedy `blt` for several prompts at once, one graph replay per byte for all rows (in
    lockstep from BOS, each row leaving its prompt when it ends): the same bytes and pass
    counters as `generate_batch`. The host reads the new bytes every `check_every` steps to
    stop early; bytes past a row's end are computed and dropped."""
    prompt_ids, s, counters, stoppers, costs = _batch_begin(model, prompts, max_bytes, stop, compiled, freeze=False)
    n0 = [len(i) for i in prompt_ids]
    fed = [0] * len(prompts)  # bytes of each row given to its stopper
    steps = max(n0)  # replays so far: byte t - 1 of every row is in ids
    while True:
        new = s.ids.tolist()
        for b, stp in enumerate(stoppers):
            while not stp.reason and n0[b] + fed[b] <= steps:
                stp.push(new[b][n0[b] + fed[b]])
                fed[b] += 1
        if all(stp.reason for stp in stoppers):
            break
        for _ in range(min(check_every, max(n0) + max_bytes - 1 - steps)):  # never past the last byte needed
            s.run()
            steps += 1
    # row b was pushed at steps 0 .. fed[b] - 2 (its last byte ended it); count passes as generate_batch
    olog = s.olog.tolist()
    for j in range(max(fed) - 1):
        pushed = [b for b in range(len(prompts)) if fed[b] - 1 > j]
        count_push(counters, any([costs[b].pushed(1, costs[b].ncomp + olog[b][n0[b] + j]) for b in pushed]))
    return finish_batch("blt", prompt_ids, stoppers, counters, [c.stats for c in costs])


def _batch_begin(model: BLT, prompts: list[str | bytes], max_bytes: int, stop: str | bytes | None,
                 compiled: bool, freeze: bool):
    """Validate and prefill a batch (`StaticState.prefill`); counters of one batched prefill pass.
    Returns (prompt ids, state, counters, stoppers, each row's cost counters after its prompt)."""
    if not prompts:
        raise ValueError("no prompts given")
    prompt_ids = [check_request(p, max_bytes, model.cfg.max_bytes) for p in prompts]
    s = static_state(model, len(prompts), compiled)
    s.prefill(prompt_ids, freeze)
    starts = s.olog.long().cumsum(1).tolist()  # the prompts' patches: every prompt byte was stepped over
    costs = [_Cost(model, len(ids), starts[b][len(ids) - 1] - 1) for b, ids in enumerate(prompt_ids)]
    return prompt_ids, s, batch_counters(), [Stopper(max_bytes, stop) for _ in prompts], costs


def _denoise_rows(s: StaticState, size: int, by_entropy: bool, rows: list[int], costs: list[_Cost]) -> int:
    """Denoising passes over the blocks at t (one replay each) until none of `rows` has a masked
    slot left, each counted for the rows that still had one; returns how many."""
    passes, todo = 0, rows
    while todo:
        s.run_denoise(size, by_entropy)
        passes += 1
        for b in todo:
            costs[b].count_block_pass()
        left = s.left.tolist()
        todo = [b for b in todo if left[b]]
    return passes


def _push_rows(s: StaticState, L: int, counters: dict, rows: list[int], costs: list[_Cost],
               close: bool = False) -> None:
    """The next L bytes of `rows` (those `move` holds) through every part, counted as one batched
    pass (and one of the global model if a row closed a patch): one host read. close: the state
    closes each row's patch at its t + L in the same replay (counted by the caller)."""
    s.run(L, True, close)
    ncomp = s.ncomp.tolist()
    count_push(counters, any([costs[b].pushed(L, ncomp[b] - close) for b in rows]))


@torch.no_grad()
def generate_static_batch_diffusion(model: BLT, prompts: list[str | bytes], block: int = 8, max_bytes: int = 64,
                                    stop: str | bytes | None = None, alpha: float | None = None,
                                    gamma: float | None = None, compiled: bool = False) -> list[Generation]:
    """Greedy `blt-d{block}` for several prompts at once: the same bytes and pass counters as
    `generate_batch`. Every row closes its patch in one replay (the first block; later, the push
    before does), denoises in one replay per pass (until no running row has a masked slot left:
    the host reads one number per row), and pushes its block in one more; a row that has stopped
    is left where it is (`move`)."""
    alpha, gamma = check_knobs(alpha, gamma)
    prompt_ids, s, counters, stoppers, costs = _batch_begin(model, prompts, max_bytes, stop, compiled, freeze=True)
    active, pushed = list(range(len(prompts))), False
    while active:
        if not pushed:  # later blocks: the push before closed the patch
            s.run_close()
        counters["n_enc"] += 1
        for b in active:
            costs[b].count_close()
        size = min(block, max_bytes - len(stoppers[active[0]].out))  # every running row has as many bytes
        s.run_begin(False, alpha if gamma is None else gamma)
        counters["n_dec"] += _denoise_rows(s, size, gamma is not None, active, costs)
        out = s.noisy[:, :size].tolist()
        active = [b for b in active if not any(stoppers[b].push(t) for t in out[b])]
        s.only(active)
        if active:
            _push_rows(s, size, counters, active, costs, close=True)
            pushed = True
    return finish_batch(f"blt-d{block}", prompt_ids, stoppers, counters, [c.stats for c in costs])


@torch.no_grad()
def generate_static_batch_speculative(model: BLT, prompts: list[str | bytes], k: int, self_draft: bool = True,
                                      max_bytes: int = 64, stop: str | bytes | None = None,
                                      compiled: bool = False) -> list[Generation]:
    """Greedy `blt-s{k}` (self_draft) or `blt-dv{k}` for several prompts at once, in rounds: every
    running row drafts up to k bytes (k - 1 draft replays for all rows, or a close and one denoising
    replay per block size), one verification pass as long as the longest draft serves every row,
    the host reads the drafts and the predictions once each, and each row keeps its own accepted
    prefix (one rollback for the rows that rejected a byte). Each row gets the bytes that `generate`
    gives its prompt; counters count batched passes, as `generate_batch`'s do, and each row's cost
    counters what its prompt alone reads."""
    prompt_ids, s, counters, stoppers, costs = _batch_begin(model, prompts, max_bytes, stop, compiled, freeze=True)
    active = list(range(len(prompts)))
    while active:
        rooms = {b: min(k, max_bytes - len(stoppers[b].out)) for b in active}
        room = max(rooms.values())
        if self_draft:  # a draft byte depends on the ones before it only: a row may draft past its room
            s.dt.copy_(s.t)
            for _ in range(room - 1):
                s.run_draft()
            counters["n_dec"] += room - 1
            counters["n_loc"] += room - 1  # a draft byte goes through the encoder too
        else:
            s.run_close()
            counters["n_enc"] += 1
            s.run_begin(True, -1.0)  # α < 0: every slot in one pass
            for size in sorted(set(rooms.values()) - {1}):  # a block attends to all of itself: its own size
                s.only([b for b in active if rooms[b] == size])
                s.run_denoise(size, False)
                counters["n_dec"] += 1
            s.only(active)
            for b in active:
                costs[b].count_close()
                if rooms[b] > 1:
                    costs[b].count_block_pass()
        start = s.t.tolist()
        ids = s.ids.tolist()
        drafts = {}
        for b in active:  # drafts[b][0]: the byte the last verification settled
            d = ids[b][start[b]:start[b] + rooms[b]]
            drafts[b] = d = d[:d.index(EOS) + 1] if EOS in d else d
            if self_draft:  # what the row's own drafts read
                for u in range(start[b], start[b] + len(d) - 1):
                    costs[b].count_local(u)
        body = {b: len(d) - (d[-1] == EOS) for b, d in drafts.items()}  # the bytes a row verifies
        L = max(body.values())
        accepted, rejected = {b: 1 for b in active}, {}
        if L:  # a row whose draft is shorter either stops at its end or rejects a byte before it
            before = s.ncomp.clone()
            s.run(L)
            at = s.t.new_tensor(start)[:, None] + s.kpos[:L]
            # per row: the greedy byte after each position, the patches started up to it, any closed
            out = torch.cat((s.pred.gather(1, at), s.olog.long().cumsum(1).gather(1, at),
                             (s.ncomp > before).long()[:, None]), 1).tolist()
            count_push(counters, any(out[b][-1] for b in active))
            for b in active:
                d, starts = drafts[b], out[b][L:2 * L]
                if body[b]:  # its own pass over its draft (patches: those started before its end)
                    costs[b].pushed(body[b], starts[body[b] - 1] - 1)
                for i in range(1, len(d)):  # out[b][i - 1] is the exact greedy byte at start + i
                    if d[i] != out[b][i - 1]:
                        rejected[b] = (start[b] + i, out[b][i - 1])
                        costs[b].n, costs[b].ncomp = start[b] + i, starts[i - 1] - 1
                        break
                    accepted[b] += 1
        if rejected:
            s.rollback([n for n, _ in rejected.values()], [c for _, c in rejected.values()], list(rejected))
        active = [b for b in active if not any(stoppers[b].push(t) for t in drafts[b][:accepted[b]])]
        s.only(active)
    return finish_batch(f"blt-{'s' if self_draft else 'dv'}{k}", prompt_ids, stoppers, counters,
                        [c.stats for c in costs])


@torch.no_grad()
def generate_static_batch_hybrid(model: BLT, prompts: list[str | bytes], eta: float = 1.0, block: int = 8,
                                 max_bytes: int = 64, stop: str | bytes | None = None, alpha: float | None = None,
                                 gamma: float | None = None, compiled: bool = False) -> list[Generation]:
    """Greedy `blt-h` for several prompts at once, in rounds: each running row takes one
    autoregressive byte or a diffusion block, by the entropy of its own exact next-byte
    distribution. The rows that take a block close their patches in one replay and denoise in one
    replay per pass (per block size, since a block attends to all of itself); then the rows push
    what they took, one pass per length, longest first (a waiting row's pass writes past its own
    block, never into it). Each row gets the bytes that `generate` gives its prompt; counters
    count batched passes, as `generate_batch`'s do."""
    alpha, gamma = check_knobs(alpha, gamma)
    check_hybrid(eta, block)
    prompt_ids, s, counters, stoppers, costs = _batch_begin(model, prompts, max_bytes, stop, compiled, freeze=True)
    active = list(range(len(prompts)))
    while active:
        h, signal = _next_bytes(s)
        first = [tok for tok, _ in signal]
        sizes = {b: min(block, max_bytes - len(stoppers[b].out)) for b in active}
        out = {b: [first[b]] for b in active}
        blocks = [b for b in active if h[b] <= eta and sizes[b] > 1]
        if blocks:
            s.only(blocks)
            s.run_close()
            counters["n_enc"] += 1
            for b in blocks:
                costs[b].count_close()
            s.run_begin(True, alpha if gamma is None else gamma)
            for size in sorted({sizes[b] for b in blocks}):
                group = [b for b in blocks if sizes[b] == size]
                s.only(group)
                counters["n_dec"] += _denoise_rows(s, size, gamma is not None, group, costs)
            noisy = s.noisy.tolist()
            out.update({b: noisy[b][:sizes[b]] for b in blocks})
        active = [b for b in active if not any(stoppers[b].push(t) for t in out[b])]
        for L in sorted({len(out[b]) for b in active}, reverse=True):
            group = [b for b in active if len(out[b]) == L]
            s.only(group)
            _push_rows(s, L, counters, group, costs)
    return finish_batch("blt-h", prompt_ids, stoppers, counters, [c.stats for c in costs])
