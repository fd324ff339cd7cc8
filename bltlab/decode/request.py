"""One request on the decoding state: B prompts (one prompt is a batch of one) and, on the host,
what each row's own passes cost, its trace and its stopper.

The mode loops (blt.py, speculative.py, diffusion.py, hybrid.py) call the operations below,
which run a step of the state (state.py) for the rows in play and count it. The host reads
from the device only what decides the next step: the next bytes, the masked slots left, a
draft, the verified predictions and patch starts.

Counters, per row, are what the prompt decoded alone costs (cost.Ledger); a batch's shared
passes, where one pass serves every row in play, are counted once in `batch_passes`.
"""
from __future__ import annotations

import torch

from ..cost import Ledger
from ..entropy import entropy_of_logits
from ..model import BLT
from ..tokens import EOS, MASK, OFFSET, ids_to_bytes
from .common import Generation, Sampler, Stopper, Unmask, check_request
from .events import Event, Prefill
from .state import decode_state


def opened(start: int, cum: list[int], k: int) -> list[int]:
    """The positions start .. start + k - 1 that opened a patch, from `push`'s running count of
    patch starts (cum[0]: up to start - 1)."""
    return [start + j for j in range(k) if cum[j + 1] > cum[j]]


class Row(Ledger):
    """One prompt's host side: its position n, finished patches and costs (cost.Ledger), its trace and
    its stopper."""

    def __init__(self, model: BLT, ids: list[int], ncomp: int, max_bytes: int, stop, new: list[Event] | None):
        super().__init__(model, len(ids), ncomp)
        self.ids = ids
        self.trace: list[dict] = []  # the events' JSON
        self.new = new  # where its events wait to be streamed (None: not streamed)
        self.stopper = Stopper(max_bytes, stop)

    def add(self, event: Event) -> None:
        """Record an event (and hand it to the stream)."""
        self.trace.append(event.to_json())
        if self.new is not None:
            self.new.append(event)

    def room(self, k: int) -> int:
        """How many of the next k bytes the budget still allows."""
        return min(k, self.stopper.max_new - len(self.stopper.out))

    def emit(self, out: list[int]) -> bool:
        """Give ids to the stopper; True when the generation ends."""
        return any(self.stopper.push(t) for t in out)


class Request:
    """B prompts prefilled on the model's decoding state; `active` lists the rows still running."""

    def __init__(self, model: BLT, prompts: list[str | bytes], max_bytes: int, stop=None,
                 sampler: Sampler | None = None, compiled: bool = False):
        if not prompts:
            raise ValueError("no prompts given")
        self.sampler = sampler or Sampler()
        ids = [check_request(p, max_bytes, model.cfg.max_bytes) for p in prompts]
        self.s = s = decode_state(model, len(ids), compiled, claim=True)
        self.look = s.look  # 1: patches are decided one byte ahead (the "hf" layout)
        s.prefill(ids)
        olog, ent = s.olog.tolist(), s.ent.tolist()
        self.rows: list[Row] = []
        self.new: list[Event] = []  # events not yet streamed (one prompt's: `stream`)
        for b, p in enumerate(ids):
            starts = [u for u in range(len(p)) if olog[b][u]]
            ncomp = len(starts) + (self.look and olog[b][len(p)]) - 1
            row = Row(model, p, ncomp, max_bytes, stop, self.new if b == 0 else None)
            row.add(Prefill(0, row.snapshot(), len(p) - 1, starts, [round(h, 4) for h in ent[b][:len(p)]]))
            self.rows.append(row)
        self.passes = {"n_dec": 1, "n_ent": 1, "n_enc": 1, "n_loc": 1}  # the batch's: the prefill is one pass
        self.active = list(range(len(ids)))

    @property
    def sampling(self) -> bool:
        return self.sampler.temperature > 0

    def only(self, rows: list[int]) -> None:
        """The state's next steps move these rows only."""
        self.s.only(rows)

    def stop_rows(self, out: dict[int, list[int]]) -> None:
        """Each active row emits its ids in `out`; the rows that end leave `active`."""
        self.active = [b for b in self.active if not self.rows[b].emit(out[b])]
        self.only(self.active)

    # ---- reads -------------------------------------------------------------------------------
    def next_bytes(self, draw: list[int] | None = None, decoder_entropy: bool = False) -> list[tuple]:
        """Per row: (byte t, whether it opens a patch, H_t of the entropy model, and with
        `decoder_entropy` the entropy of the decoder's prediction of byte t, else None) in one host
        read. Sampling first draws byte t of the rows in `draw` (default: every active row) from that
        prediction; greedy, the state chose it."""
        s = self.s
        if self.sampling:
            self.only(self.active if draw is None else draw)
            s.put(self.sampler.pick(s.logits))
            self.only(self.active)
        cols = [s.signal.double(), s.ent.gather(1, s.t[:, None]).double()]
        if decoder_entropy:
            cols.append(entropy_of_logits(s.logits).double()[:, None])
        return [(int(row[0]), int(row[1]), row[2], row[3] if decoder_entropy else None)
                for row in torch.cat(cols, 1).tolist()]

    # ---- steps -------------------------------------------------------------------------------
    def step(self, opens: dict[int, int]) -> None:
        """The byte t of every active row through every part; the global step only where a row's
        byte opens a patch (`opens`: from next_bytes)."""
        s = self.s
        s.run(1, with_global=self.look or any(opens[b] for b in self.active))
        if self.look:  # the patch that the next byte opens closed in this pass
            opens = s.olog.gather(1, s.t[:, None])[:, 0].tolist()
        closed = [self.rows[b].pushed(1, self.rows[b].ncomp + opens[b]) for b in self.active]
        self._count_push(any(closed))

    def push(self, L: int, rows: list[int], close: bool = False, with_global: bool = True,
             lengths: dict[int, int] | None = None, block: int = 0,
             rule: Unmask | None = None) -> dict[int, tuple[list[int], list[int]]]:
        """The next L bytes of `rows` (already in the state's ids) through every part, exactly, in
        one pass (close: its global step also closes the patch after them, which `close(run=False)`
        counts; with_global=False: no byte opens a patch; `block` slots: its decoder pass also runs
        the next block's first denoising pass by `rule`, which `denoise(begun=True)` goes on from).
        `lengths`: the bytes each row really pushes, counted as its own (the rest it drops). Returns
        per row (the greedy byte after each of the L bytes, the patches started up to byte n - 1, n,
        ..., n + L - 1 + look)."""
        s = self.s
        self.only(rows)
        if block:
            s.set_knob(rule.knob)
            s.run(L, True, close, block, rule.exact_first, rule.by_entropy, rule.in_order)
        else:
            s.run(L, with_global or bool(self.look), close)
        at = torch.tensor([r.n for r in self.rows], device=s.dev)[:, None] + s.kpos[:L + 1 + self.look] - 1
        both = torch.cat((s.pred.gather(1, at[:, 1:L + 1]), s.olog.long().cumsum(1).gather(1, at)), 1).tolist()
        out = {b: (both[b][:L], both[b][L:]) for b in rows}
        lengths = lengths or dict.fromkeys(rows, L)
        closed = [self.rows[b].pushed(lengths[b], out[b][1][lengths[b] + self.look] - 1) for b in rows if lengths[b]]
        self._count_push(any(closed))
        if block:
            self._denoised(block, rows, fused=True)
        return out

    def push_each(self, lengths: dict[int, int], opens: dict[int, int], blocks: dict[int, int] | None = None,
                  rule: Unmask | None = None) -> dict[int, list[int]]:
        """`push` for rows of different lengths: one pass per length and size of the next block
        (blocks[b] slots: `push`'s `block`, whose patch the pass closes), longest first (a waiting
        row's pass writes past it). opens: whether a one-byte row's byte opens a patch (next_bytes').
        Returns per row the positions that opened a patch; then every row moves again."""
        start, starts = {b: self.rows[b].n for b in lengths}, {}
        kind = {b: (lengths[b], (blocks or {}).get(b, 0)) for b in lengths}
        for L, block in sorted(set(kind.values()), reverse=True):
            group = [b for b in lengths if kind[b] == (L, block)]
            may_open = block > 0 or L > 1 or any(opens[b] for b in group)
            pushed = self.push(L, group, block > 0, with_global=may_open, block=block, rule=rule)
            starts |= {b: opened(start[b], pushed[b][1], L) for b in group}
        self.only(list(lengths))
        return starts

    def _count_push(self, closed: bool) -> None:
        for k in ("n_ent", "n_dec", "n_loc"):
            self.passes[k] += 1
        self.passes["n_enc"] += closed

    def close(self, rows: list[int], run: bool = True) -> None:
        """A patch starts at each row's n (a diffusion block): the global model on the one it ends.
        run=False: only counted (the push before closed it)."""
        if run:
            self.only(rows)
            self.s.run_close()
        self.passes["n_enc"] += 1
        for b in rows:
            self.rows[b].closed()

    def denoise(self, sizes: dict[int, int], rule: Unmask, keep_first: bool = False, q: torch.Tensor | None = None,
                begun: bool = False) -> dict[int, tuple[list[int], list[dict]]]:
        """Fill a block of sizes[b] slots at each row's n by `rule` (slot 0 = byte n with keep_first), one
        replay per pass for every row of a size (a block attends to all of itself), until none has
        a masked slot left, or (rule.in_order) a pass fills none of it: the block ends before its
        first masked slot. begun: the push before ran the first pass (`push`'s `block`). Sampling, q
        [B, slots, 260] receives the distribution each slot was drawn from (a draft's). Returns per row
        its ids (the filled ones) and the trace's steps."""
        s = self.s
        self.only(list(sizes))
        if begun and keep_first and self.sampling:
            s.take_first()  # byte n was drawn after the pass that began the block
        elif not begun:
            s.run_begin(keep_first, rule.knob)
        masked = {b: max(0, size - keep_first) for b, size in sizes.items()}  # each row's, after its last pass
        for size in sorted(set(sizes.values())):
            todo = [b for b in sizes if sizes[b] == size] if size > keep_first or begun else []
            self.only(todo)
            ran = begun
            while todo:
                if not ran:
                    s.run_denoise(size, rule.by_entropy, rule.in_order)
                    self.passes["n_dec"] += 1
                    self._denoised(size, todo, q=q)
                # (after a push's pass `left` is that of the last push, maybe of another size)
                left = (s.noisy[:, :size] == MASK).sum(1).tolist() if ran else s.left.tolist()
                ran = False
                todo, masked = [b for b in todo if 0 < left[b] < masked[b]], masked | {b: left[b] for b in todo}
        ids, log, scores = s.noisy.tolist(), s.filled.tolist(), s.scores.tolist()
        out = {}
        for b, size in sizes.items():
            (step, order), (conf, ent) = [x[:size] for x in log[b]], [x[:size] for x in scores[b]]
            steps = []
            for j in sorted(set(step) - {-1}):  # the row's passes (a pass of another size counts in nstep too)
                chosen = sorted((i for i in range(size) if step[i] == j), key=lambda i: order[i])
                fills = [None if ids[b][i] == EOS else ids[b][i] - OFFSET for i in chosen]  # None: EOS
                steps.append({"unmasked": chosen, "bytes": fills,
                              "confidence": [round(conf[i], 4) for i in chosen],
                              "entropy": [round(ent[i], 4) for i in chosen]})
            out[b] = ids[b][:size - masked[b]], steps  # (a block that ended early: in order, a prefix)
        return out

    def _denoised(self, size: int, rows: list[int], fused: bool = False, q: torch.Tensor | None = None) -> None:
        """After a denoising pass over `rows`' blocks of `size`: sampling, the slots it filled take drawn
        ids (q, if given, the distributions); each row counts the pass (`fused`: in a push's pass)."""
        s = self.s
        if self.sampling:
            if q is not None:
                now = (s.filled[rows, 0, :size] == s.nstep[rows, None] - 1).cpu()[..., None]
                q[rows, :size] = torch.where(now, self.sampler.probs(s.pass_logits[rows]).cpu(), q[rows, :size])
            s.fill(size, self.sampler.pick(s.pass_logits.flatten(0, 1)).view(s.B, size), rows)
        for b in rows:
            self.rows[b].block_pass(fused)

    def rollback(self, rejected: dict[int, tuple[int, int, int]]) -> None:
        """Rows b of `rejected` go back to their first n bytes, with `byte` as byte n and `ncomp`
        finished patches: {b: (n, byte, ncomp)}."""
        if rejected:
            self.s.rollback([n for n, _, _ in rejected.values()], [x for _, x, _ in rejected.values()],
                            list(rejected))
        for b, (n, _, ncomp) in rejected.items():
            self.rows[b].n, self.rows[b].ncomp = n, ncomp

    def drain(self) -> list[Event]:
        """The first row's events since the last call (what `stream` yields)."""
        out = self.new[:]
        self.new.clear()
        return out

    # ---- the end -----------------------------------------------------------------------------
    def release(self) -> None:
        """Hand the state back for the next request."""
        self.s.busy = False

    def finish(self, mode: str) -> list[Generation]:
        """A Generation per row: its bytes, stop reason, its own counters and trace; in a batch, the
        batch's shared passes too (`batch_passes`)."""
        gens = []
        for r in self.rows:
            out = r.stopper.out
            counters = {**r.snapshot(), "bytes": len(out)}
            if len(self.rows) > 1:
                counters |= {"batch": len(self.rows), "batch_passes": dict(self.passes)}
            gens.append(Generation(mode, ids_to_bytes(r.ids), bytes(out), r.stopper.reason, counters, r.trace))
        return gens
