"""Draft, then verify: `blt-s*` (self-speculation) and `blt-dv*` (a diffusion draft).

A round drafts up to k bytes cheaply: `blt-s{k}` with decoder-only steps past the patch
boundary that read the newest global output; `blt-dv{k}` with one denoising pass that fills a
whole block after its known first byte, reading the same newest global output (no patch is
closed for the draft). One exact pass over the draft (entropy model, encoder, global, decoder)
then gives the true prediction at every draft position and places its patches by the entropy
rule: the longest agreeing prefix is kept, and the byte at the first disagreement comes from the
exact distribution (greedy: its argmax; sampling: the speculative rejection rule, accept with
min(1, p/q) and resample from norm(max(0, p - q)), so the output distribution is the model's
own). Greedy `blt-s*` and `blt-dv*` therefore write `blt`'s bytes exactly. A rejection rolls the
state back: every cache is indexed by position, so that only resets counters.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ..tokens import EOS
from .common import Unmask
from .events import Verify
from .request import Request, opened

ONE_PASS = Unmask(alpha=-1.0)  # α < 0: a diffusion draft fills every slot in one pass


def run_speculative(req: Request, k: int, self_draft: bool) -> Iterator[None]:
    """Rounds of draft + verification for every running row, until each stops; yields after each."""
    s, sampler, fixed = req.s, req.sampler, set()  # fixed: rows whose byte n a rejection settled
    while req.active:
        rows = req.active
        rooms = {b: req.rows[b].room(k) for b in rows}
        room, start = max(rooms.values()), {b: req.rows[b].n for b in rows}
        if req.sampling:
            req.next_bytes(draw=[b for b in rows if b not in fixed])
        q = torch.zeros(s.B, room, s.logits.shape[-1]) if req.sampling else None  # the draft's distributions
        if self_draft:  # a draft byte depends on the ones before it only: a row may draft past its room
            s.dt.copy_(s.t)
            for i in range(1, room):
                s.run_draft()
                if req.sampling:
                    q[:, i] = sampler.probs(s.logits).cpu()
                    s.put(sampler.pick(s.logits), draft=True)
            req.passes["n_dec"] += room - 1
            req.passes["n_loc"] += room - 1
        else:  # the block reads the newest finished patch, as a self-draft does: no patch closes for it
            req.denoise(rooms, ONE_PASS, keep_first=True, q=q)
            req.only(rows)
        ids, drafts = s.ids.tolist(), {}
        for b in rows:  # drafts[b][0]: byte n, which the last round settled
            d = ids[b][start[b]:start[b] + rooms[b]]
            drafts[b] = d = d[:d.index(EOS) + 1] if EOS in d else d
            if self_draft:
                req.rows[b].drafted(len(d) - 1)
        body = {b: len(d) - (d[-1] == EOS) for b, d in drafts.items()}  # the bytes a row verifies
        L = max(body.values())
        verified = req.push(L, rows, lengths=body) if L else {}
        p = sampler.probs(s.pass_logits).cpu() if L and req.sampling else None
        accepted, rejected = dict.fromkeys(rows, 1), {}
        for b in verified:  # a row whose draft is shorter stops at its end or rejects a byte before it
            d, (preds, cum) = drafts[b], verified[b]
            for i in range(1, len(d)):  # preds[i - 1] is the exact greedy byte at n + i
                fix = _judge(d[i], preds[i - 1], None if p is None else p[b, i - 1], None if q is None else q[b, i],
                             sampler)
                if fix is not None:
                    rejected[b] = (start[b] + i, fix, cum[i + req.look] - 1)
                    break
                accepted[b] += 1
        req.rollback(rejected)
        fixed = set(rejected)
        for b in rows:  # a row verifies nothing only when no row does (L = 0)
            kept, row = min(accepted[b], body[b]), req.rows[b]
            starts = opened(start[b], verified[b][1], kept) if verified else []
            row.add(Verify.of(start[b] - 1, row.snapshot(), drafts[b], accepted[b], rejected.get(b, (0, None))[1],
                              starts))
        req.stop_rows({b: drafts[b][:accepted[b]] for b in rows})
        yield


def _judge(drafted: int, greedy: int, p: torch.Tensor | None, q: torch.Tensor | None, sampler) -> int | None:
    """None if the drafted byte stands, else the byte that replaces it: greedy, the exact argmax;
    sampling (p, q: the exact and the draft distributions), the rejection rule."""
    if p is None:
        return None if drafted == greedy else greedy
    if float(torch.rand((), generator=sampler.gen)) < min(1.0, float(p[drafted] / q[drafted].clamp(min=1e-12))):
        return None
    residual = (p - q).clamp(min=0)
    residual = p if residual.sum() <= 0 else residual / residual.sum()
    return int(torch.multinomial(residual, 1, generator=sampler.gen))
