"""The decoding state every mode runs on (the modes' loops: blt.py, speculative.py, diffusion.py,
hybrid.py; their host bookkeeping: request.py). Every buffer is allocated once at the model's
context length and indexed by position, and one decoding step is a fixed sequence of kernels
that a CUDA graph replays on a GPU (eager ops elsewhere):

    byte t (already in `ids`)
      -> does t open a patch? (its entropy H_t, the rule, the max patch length; on the device)
      -> entropy model at t: H_{t+1}             (static cache, one row per sequence)
      -> local encoder at t: h_t                 (hash n-grams from ids[t-8..t])
      -> [global step] pool the finished patch [cur, t), global model at patch ncomp,
         slot table row ncomp + 1 (the slots' cross-attention keys and values, once per patch)
      -> decoder at t reading table row p(t) -> logits -> greedy byte t + 1 into `ids`

Rows that did not open a patch write the global step's cache entry and table row at the
next free index, which nothing reads until a real patch overwrites them, so the global step
needs no branch: at batch B it runs for every row in one graph. At batch 1 it is worth
skipping, so two graphs exist (with and without it) and the host reads one flag per byte
(with the new byte, which it needs anyway to stop). The same code takes L bytes in one pass
(`advance(L)`: patches that close inside the pass are compacted into one global pass over L
slots), which is how a prompt is read: one pass (a ragged batch: one per prompt length), its
next byte taken from the prompt instead of the prediction. The other steps, each a graph of
its own: `draft` (encoder and decoder only, for self-speculation), `close` (a diffusion block
starts a patch: the global model on the one it ends) and `denoise` (one pass over a masked block
and the unmasking rule, on the device); `advance(L, close=True, block=B)` also runs the first
denoising pass of the block after the L bytes in their decoder pass. Rows outside `move` wait: a
pass computes them at their own t but leaves t, their ids, their patches and their chosen slots
alone, which is how a batch's rows part (ragged prompts, stopped rows, per-row accepted drafts,
blocks of other sizes). Tests (tests/test_state.py)
check the bytes, the logits and the trace against the no-cache references (the model's training
forward), and one pass against the same bytes in pieces.
"""
from __future__ import annotations

import threading
import weakref

import torch

from .. import kernels
from ..entropy import entropy_of_logits
from ..graphs import Steps
from ..layers import KVCache, computed, norm_proj
from ..model import BLT
from ..patching import WHITESPACE, natural_starts
from ..positions import CacheMasks, rope_angles
from ..tokens import MASK, OFFSET, PAD
from .common import HASH_CONTEXT, allowed

MAX_BLOCK = 16  # the longest denoised block (blt-d16, blt-dv16)
# what engine "compiled" compiles its steps with ("aot_eager" traces the same graphs without
# generating code: the CPU tests use it, inductor's compile takes minutes on a CPU)
COMPILE_BACKEND = "inductor"


class DecodeState:
    """Static buffers for B sequences and the steps that advance them. With `compile_backend`, every
    step goes through torch.compile first (then, on a GPU, into its CUDA graph)."""

    def __init__(self, model: BLT, B: int, compile_backend: str | None = None):
        self.m, self.cfg, self.B = model, model.cfg, B
        p = next(model.parameters())
        # ids[t + 1] is written at the last position; in a batch, a row may run a block or a
        # verification past its own end, while another row's is longer (what it computes there is dropped)
        dev, T = p.device, model.cfg.max_bytes + 1 + MAX_BLOCK
        self.dev, self.T = dev, T
        # ids[b, u] = byte u; HASH_CONTEXT PADs before byte 0, so that one gather reads n-gram contexts
        self.ctx_ids = torch.full((B, HASH_CONTEXT + T), PAD, dtype=torch.long, device=dev)
        self.ids = self.ctx_ids[:, HASH_CONTEXT:]
        self.given = torch.full((B, T), PAD, dtype=torch.long, device=dev)  # the prompts
        self.plen = torch.ones(B, dtype=torch.long, device=dev)  # prompt lengths (BOS included)
        self.ent = torch.zeros(B, T + 1, device=dev)  # ent[b, t] = H_t (float32)
        self.t = torch.zeros(B, dtype=torch.long, device=dev)  # position of the byte the next step takes
        self.cur = torch.zeros(B, dtype=torch.long, device=dev)  # first byte of the open patch
        self.ncomp = torch.zeros(B, dtype=torch.long, device=dev)  # finished patches (in the table)
        self.olog = torch.zeros(B, T, dtype=torch.bool, device=dev)  # opens of every byte stepped over
        self.signal = torch.zeros(B, 2, dtype=torch.long, device=dev)  # (byte t, opens): what the host reads
        self.pred = torch.zeros(B, T, dtype=torch.long, device=dev)  # pred[b, u]: greedy byte after u
        self.dt = torch.zeros(B, dtype=torch.long, device=dev)  # the draft step's position
        self.forced = torch.zeros(B, T, dtype=torch.bool, device=dev)  # starts imposed: bytes 0, 1, blocks
        # the denoised block at t: its ids, and per slot the step that filled it, its order in that
        # step, and the confidence and entropy it was filled with (what the trace shows)
        self.noisy = torch.full((B, MAX_BLOCK), MASK, dtype=torch.long, device=dev)
        self.filled = torch.zeros(B, 2, MAX_BLOCK, dtype=torch.long, device=dev)  # (step, order)
        self.scores = torch.zeros(B, 2, MAX_BLOCK, device=dev)  # (confidence, entropy), float32
        self.nstep = torch.zeros(B, dtype=torch.long, device=dev)
        self.left = torch.zeros(B, dtype=torch.long, device=dev)  # masked slots left: what the host reads
        self.knob = torch.zeros(B, dtype=torch.float64, device=dev)  # α or γ (a tensor: one graph for all)
        self.knob_now = 0.0  # what `knob` holds
        self.move = torch.ones(B, dtype=torch.bool, device=dev)  # rows a step moves (the rest keep t, patches)
        self.moving = list(range(B))  # the rows in `move` (None: others)
        self.logits = torch.zeros(B, 260, dtype=p.dtype, device=dev)  # prediction of byte t
        self.pass_logits = self.logits[:, None]  # the last decoder pass's [B, L, 260] (sampling reads it)
        self.h = p.new_zeros(B, T, self.cfg.d_local)
        # row r: patch r - 1's decoder slots as every decoder layer's cross-attention keys and values,
        # projected once per patch instead of once per byte: [B, T + 1, layers, 2, H, k, hd]
        dl, H = self.cfg.d_local, self.cfg.local_heads
        self.table = p.new_zeros(B, T + 1, len(model.crosses()), 2, H, self.cfg.cross_k, dl // H)
        # The "hf" layout (transformers' BLT) decides a byte's patch one byte ahead: its decoder at u
        # reads the patch before u + 1's, so the global step on a patch that byte u + 1 opens runs in
        # u's pass (`look`). With a max patch length it also gives the newest byte another row than
        # that byte has once the next one exists (docs/model.md, "Weights from transformers"): a pass then runs
        # each byte twice (`shadow`), as the cache keeps it and as the newest, whose keys go to a
        # second half of every cache (position S/2 + u, RoPE angles of u) that only itself reads.
        self.look = int(self.cfg.arch == "hf")
        self.shadow = bool(self.look and self.cfg.patch.max_patch > 0)
        # caches as long as the longest context rounded up to 16 keys (what fused attention aligns
        # its masks to: no padded copy per call); keys past T lie in the future of every query
        self.half = 16 * -(-T // 16)
        S = self.half * (2 if self.shadow else 1)
        self.rows = torch.arange(B, device=dev)
        self.fused = model.fused_projections()
        self.ent_kv, self.enc_kv, self.glob_kv, self.dec_kv = (
            KVCache.for_layers(layers, B, S, self.half, self.fused, self.rows)
            for layers in (model.entropy.layers, model.enc_layers, model.global_layers, model.dec_layers))
        self.kpos, self.keys = torch.arange(T, device=dev), torch.arange(S, device=dev)
        self.first = self.kpos == 0  # a patch's first byte, in its gathered layout
        self.hctx = torch.arange(HASH_CONTEXT + T, device=dev)  # ctx_ids columns of bytes t - 8 ..
        windows = {model.entropy.cfg.window, self.cfg.local_window, 0, self.cfg.local_window - self.shadow}
        self.masks = CacheMasks(T, S, windows, self.cfg.local_window, MAX_BLOCK, p)
        self.forbid = allowed(torch.zeros(260, device=dev))  # -inf at ids decoding never emits, else 0
        self.lmax = self.cfg.patch.max_patch or self.cfg.max_bytes  # longest possible patch
        self.is_ws = torch.zeros(MASK + 1, dtype=torch.bool, device=dev)  # ids of whitespace bytes
        self.is_ws[torch.tensor(list(WHITESPACE)) + OFFSET] = True
        live = (self.ids, self.ent, self.t, self.cur, self.ncomp, self.signal, self.dt, self.forced, self.noisy,
                self.filled, self.scores, self.nstep, self.left)  # what steps update
        self.steps = Steps(dev, live, compile_backend)
        self.version = None  # model.weights_version() when `fused` and the table's start row were made
        self.busy = False  # claimed by a running request (decode_state)

    # ---- a new request --------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, prompts: list[list[int]]) -> None:
        """Start B sequences (prompt ids, BOS first) at position 0. Cache entries from an earlier
        request stay but lie past t, so they are masked (and finite: buffers start at zero)."""
        given = torch.full(self.given.shape, PAD, dtype=torch.long)  # built on the host, copied once
        for b, ids in enumerate(prompts):
            given[b, :len(ids)] = torch.tensor(ids)
        self.given.copy_(given)
        self.plen.copy_(torch.tensor([len(ids) for ids in prompts]))
        self.ids.copy_(self.given)
        for x in (self.ent, self.t, self.cur, self.ncomp, self.forced):
            x.zero_()
        self.forced[:, :2] = True  # bytes 0 and 1 always open a patch
        self.olog[:, 0] = True
        self.move.fill_(True)
        self.moving = list(range(self.B))
        version = self.m.weights_version()
        if version != self.version:  # the weights changed in place (training, load_state_dict)
            for key, now in self.m.fused_projections().items():
                for mine, w in zip(self.fused[key], now):
                    mine.copy_(w)
            self.table[:, 0] = self.m.slot_kv(self.m.start_slots[None, None].to(self.table.dtype), self.fused)[0, 0]
            self.version = version
        self._signal()

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> None:
        """reset, then the prompts' bytes: one pass up to the shortest prompt's end for every row, then
        one pass per longer length for the rows whose prompt goes on, while the others wait at their
        end (their next byte is the greedy one)."""
        self.reset(prompts)
        done = 0
        for n in sorted({len(p) for p in prompts}):
            self.move.copy_(self.plen > done)
            self.moving = None
            self.advance(n - done)
            done = n
        self.move.fill_(True)
        self.moving = list(range(self.B))

    # ---- the step ------------------------------------------------------------------------------
    def _opens(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: byte u (pos [B, L], consecutive from t) opens a patch: patch_starts' rule
        and its closed form for the max length, counted from the open patch's start `cur` (for byte
        t alone, kernels.step_end decides it in `_signal`)."""
        b, pc = self.rows[:, None], self.cfg.patch
        nat = natural_starts(pc, pos, lambda p: self.ent[b, p], lambda p: self.is_ws[self.ids[b, p]])
        nat = nat | self.forced[b, pos]
        if pc.max_patch > 0:  # forced starts lie every max_patch bytes after the last natural one
            last = torch.where(nat, pos, self.cur[:, None]).cummax(1).values
            nat = nat | ((pos > last) & ((pos - last) % pc.max_patch == 0))
        return nat

    def _layers(self, layers, caches: list[KVCache], x, pos, mask, slots=None):
        """x through `layers` at positions pos [B, L] (their caches written there), each in its decoding
        form (`Block.decode`); slots: the decoder's table rows [B or B L, layers, 2, H, k, hd]. Returns
        the output as a pair (x, r) whose sum it is, as `Block.decode` does."""
        r, i = None, 0
        for layer, cache in zip(layers, caches):
            sl = None
            if slots is not None and layer.cross is not None:
                sl, i = slots[:, i].unbind(1), i + 1
            x, r = layer(x, pos, mask, slots=sl, cache=cache, r=r)
        return x, r

    def advance(self, L: int = 1, with_global: bool = True, close: bool = False, block: int = 0,
                exact_first: bool = False, by_entropy: bool = False, in_order: bool = False) -> None:
        """Take bytes t .. t + L - 1 of every row (already in `ids`) in one pass, in place and
        without host synchronisation; then ids[t + L] is the prompt's next byte or the greedy one.
        with_global=False skips the global step (only right when no byte of the pass opens a patch);
        close=True then does `close` at t + L in the same global step (BLT-D's next block), and with
        `block` slots the decoder pass also runs that block's first denoising pass (`denoise`'s, after
        the L bytes, as the training forward runs a clean stream and its noisy blocks together), whose
        slot 0 then takes the exact byte t + L with `exact_first`.
        Rows outside `move` keep their position and patches: what the pass wrote for them lies past t."""
        m, b, t = self.m, self.rows, self.t
        pos = t[:, None] + self.kpos[:L]  # [B, L]
        # entropy model: H_{u + 1} for every u, which the patch decisions after byte t need
        x = m.entropy.emb(self.ids.gather(1, pos))
        emask, local = self.masks.causal(pos, m.entropy.cfg.window, self.cfg.local_window)
        x, r = self._layers(m.entropy.layers, self.ent_kv, x, pos, emask)
        logits = norm_proj(m.entropy.norm, x, r, m.entropy.head.weight)
        self.ent.scatter_(1, pos + 1, entropy_of_logits(logits).float())
        dpos = pos + 1 if self.look else pos  # where patches are decided: at each byte, or one byte ahead
        if L > 1 or self.look:
            opens = self._opens(dpos)
            self.olog.scatter_(1, dpos, opens)
        h = self._encode(pos, local)
        rows = self.ncomp[:, None].expand(-1, L)  # table row each byte's decoder reads: p(u + look)
        if with_global:
            if L == 1 and not self.look:  # whether byte t opens a patch is in `olog` already (every step
                opens = self.olog.gather(1, pos)  # that moves t, cur, forced or ids[t] puts it there)
            # byte u that opens a patch closes [last start before u, u) unless empty (a forced start
            # whose patch `close` ended already); closed patches first
            incl = torch.where(opens, dpos, self.cur[:, None])  # last start <= u
            if L == 1 and not close:
                first, end = self.cur[:, None], dpos  # last start < u
                closes = ends = opens & (dpos > first)
            else:  # closed patches first; byte u reads the row of the last one closed up to u
                incl = incl.cummax(1).values
                first = torch.cat((self.cur[:, None], incl[:, :-1]), 1)
                closes = ends = opens & (dpos > first)
                end, ending = dpos, closes
                if close:  # then the patch still open, [last start, t + L)
                    first, end = torch.cat((first, incl[:, -1:]), 1), torch.cat((pos, pos[:, -1:] + 1), 1)
                    ending = torch.cat((closes, torch.ones_like(closes[:, :1])), 1)
                order = torch.argsort((~ending).to(torch.uint8), dim=1, stable=True)
                first, end = first.gather(1, order), end.gather(1, order)
                closes = closes.long().cumsum(1)
            self._global(first, end)  # patch j = [start, end) if j < closed
            rows = rows + closes  # patches closed up to u
            done, last = closes[:, -1], incl[:, -1]  # patches finished, the open one's start
            if close:  # a patch starts at t + L
                done, last = done + 1, t + L
                self.forced[b, last] |= self.move
            self.ncomp += done * self.move
            self.cur.copy_(torch.where(self.move, last, self.cur))
        if self.shadow:  # as the cache keeps each byte, then as the newest, whose row lacks a patch
            newest = rows - (ends & (dpos > 1)).long()  # that byte u + 1 opens by the max length
            own = self.masks.additive(self.keys == (pos + self.half)[..., None])
            alone = torch.maximum(self.masks.causal(pos - 1, self.cfg.local_window - 1)[0], own[:, None])
            pos, h = torch.cat((pos, pos + self.half), 1), torch.cat((h, h), 1)
            rows, local = torch.cat((rows, newest), 1), torch.cat((local, alone), 2)
        if block:  # its slots read the clean bytes before t + L, the block both ways and the patch just closed
            self.begin_block(False)
            pos = torch.cat((pos, pos[:, -1:] + 1 + self.kpos[:block]), 1)
            h = torch.cat((h, m.noisy_embed(self.noisy[:, :block])), 1)
            local = torch.cat((local, self.masks.block(t + L, block)), 2)
            rows = torch.cat((rows, self.ncomp[:, None].expand(-1, block)), 1)
        slots = self.table[b[:, None], rows].flatten(0, 1)  # [B L, layers, 2, H, k, hd]
        logits, *rest = self._decode(pos, h, slots, local, L + block)
        self._signal((logits[:, :L], *rest))  # ids[t + L]: the prompt's first
        if block:
            self.pass_logits = logits[:, L:]
            self._unmask(block, exact_first, by_entropy, in_order)

    def _global(self, start: torch.Tensor, end: torch.Tensor) -> None:
        """Global model on the patches [start, end) ([B, P] each) as patches ncomp .. ncomp + P - 1;
        their slots go to table rows ncomp + 1 ... Rows past the patches really closed are written
        but unread until a real patch overwrites them."""
        m, b, P = self.m, self.rows, start.shape[1]
        idx = start[..., None] + self.kpos[:self.lmax]  # [B, P, lmax]
        bytes_ = self.h[b[:, None, None], idx.clamp(max=self.T - 1)]  # [B, P, lmax, d]
        bias = self.masks.additive((idx < end[..., None]) | self.first[:self.lmax])  # PatchPooling.bias
        g = m.pool.attend((bytes_ + bias[..., None]).amax(2), bytes_, bias, self.fused["pool"][0])
        gpos = self.ncomp[:, None] + self.kpos[:P]
        g, r = self._layers(m.global_layers, self.glob_kv, g, gpos,
                            self.masks.causal(gpos, 0)[0])
        slots = norm_proj(m.global_norm, g, r, m.slot_proj.weight)  # m.slot_rows, norm fused
        self.table[b[:, None], gpos + 1] = m.slot_kv(slots.view(*slots.shape[:2], self.cfg.cross_k, -1), self.fused)

    def close(self) -> None:
        """Force a patch start at t (a diffusion block starts a patch) and run the global model on
        the patch that ends there, [cur, t), so that the block reads its output."""
        t, move = self.t, self.move
        self.forced[self.rows, t] |= move
        self._global(self.cur[:, None], t[:, None])
        self.ncomp += (self.cur < t) & move
        self.cur.copy_(torch.where(move, t, self.cur))
        self._signal()

    def begin_block(self, keep_first: bool) -> None:
        """The rows that move start a block of MASKs at t (slot 0 = byte t with keep_first), nothing
        filled yet."""
        self.noisy.masked_fill_(self.move[:, None], MASK)
        if keep_first:
            self.take_first()
        self.filled.masked_fill_(self.move[:, None, None], -1)
        self.nstep.masked_fill_(self.move, 0)

    def take_first(self) -> None:
        """Slot 0 of the block at t is byte t (exact, or drawn), in the rows that move."""
        self.noisy[:, 0] = torch.where(self.move, self.ids[self.rows, self.t], self.noisy[:, 0])

    def denoise(self, size: int, by_entropy: bool, in_order: bool = False) -> None:
        """One denoising pass over the block's first `size` slots (the clean decoder cache before t in
        the window, the block both ways, the newest global output), then the unmasking rule on the
        device (`_unmask`). by_entropy: the γ rule, else α (α < 0 fills every slot: BLT-DV's one
        pass); in_order: only a left-to-right run of slots."""
        m, b, t = self.m, self.rows, self.t
        pos = t[:, None] + self.kpos[:size]  # [B, size]
        noisy = self.noisy[:, :size]
        x, r = self._layers(m.dec_layers, self.dec_kv, m.noisy_embed(noisy), pos,
                            self.masks.block(t, size), self.table[b, self.ncomp])
        self.pass_logits = norm_proj(m.dec_norm, x, r, m.head.weight)  # [B, size, 260]
        self._unmask(size, False, by_entropy, in_order)

    def _unmask(self, size: int, exact_first: bool, by_entropy: bool, in_order: bool) -> None:
        """The end of a denoising pass (pass_logits: the block's): slot 0 takes byte t with `exact_first`, then
        the unmasking rule on the device (one kernel: kernels.denoise_end) fills the chosen slots in
        `noisy` and `ids`, logs them, and sets `left`."""
        if exact_first:
            self.take_first()
        kernels.denoise_end(self.pass_logits, self.forbid, self.noisy[:, :size], self.ids, self.t, self.move,
                            self.knob, by_entropy, self.nstep, self.filled, self.scores, self.left, in_order)

    def _encode(self, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Local encoder over positions pos [B, L] (hash n-grams reach HASH_CONTEXT ids back, PAD
        before byte 0) -> h [B, L, d_local], kept in `h` for pooling; mask: the local window's there."""
        m, L = self.m, pos.shape[1]
        full = self.ctx_ids.gather(1, pos[:, :1] + self.hctx[:HASH_CONTEXT + L])  # ids t - 8 .. t + L - 1
        x = m.embed.last(full, L)
        x, r = self._layers(m.enc_layers, self.enc_kv, x, pos, mask)
        h = x + computed(r)
        self.h[self.rows[:, None], pos] = h
        return h

    def _decode(self, pos: torch.Tensor, h: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
                last: int = 1) -> tuple:
        """Decoder over pos [B, L] from the encoder's h there, reading `slots` (table rows: one per
        byte, or one per row for the whole pass). Returns step_end's `advance`: the `last` positions'
        logits [B, last, 260] and where their greedy bytes and the last logits go."""
        x, r = self._layers(self.m.dec_layers, self.dec_kv, h, pos, mask, slots)
        if last < x.shape[1]:  # the shadow pass: only the newest rows predict
            x, r = x[:, -last:], (r[0][:, -last:], r[1]) if isinstance(r, tuple) else r[:, -last:]
        logits = self.pass_logits = norm_proj(self.m.dec_norm, x, r, self.m.head.weight)
        return logits, self.forbid, self.logits, self.pred, self.given, self.plen, self.move

    def draft(self) -> None:
        """Self-speculation's draft step at position dt: encoder and decoder only, reading the
        newest global output (table row ncomp); writes the greedy byte to ids[dt + 1] and moves dt
        (rows that move). Its cache entries lie past t: the verifying `advance` rewrites them."""
        pos = self.dt[:, None]
        local = self.masks.causal(pos, self.cfg.local_window)[0]
        h = self._encode(pos, local)
        self._signal(self._decode(pos, h, self.table[self.rows, self.ncomp], local), draft=True)

    def rollback(self, n: int | list[int], byte: int | list[int], rows: list[int] | None = None) -> None:
        """Back to the first n bytes (rejected drafts), with `byte` as byte n: every row, or with
        `rows` those rows (n and byte: one per row), the others staying where they are."""
        t, new = self.t.clone(), self.ids[self.rows, self.t]
        at = self.rows if rows is None else torch.tensor(rows, device=self.dev)
        t[at], new[at] = torch.as_tensor(n, device=self.dev), torch.as_tensor(byte, device=self.dev)
        self.t.copy_(t)  # a row at its own t keeps its patches: they are recomputed as they are
        self.forced &= self.kpos <= t[:, None]
        starts = self.olog & (self.kpos < t[:, None] + self.look)  # the patches decided before byte t
        self.ncomp.copy_(starts.sum(1) - 1)
        self.cur.copy_(torch.where(starts, self.kpos, 0).amax(1))
        self.ids[self.rows, t] = new
        self._signal()

    def put(self, ids: torch.Tensor, draft: bool = False) -> None:
        """Sampling: the rows that move take `ids` [B] as byte t (with `draft`, as byte dt) instead of
        the greedy byte the step chose."""
        at = self.dt if draft else self.t
        self.ids[self.rows, at] = torch.where(self.move, ids, self.ids[self.rows, at])
        if not draft:
            self._signal()

    def fill(self, size: int, ids: torch.Tensor, rows: list[int]) -> None:
        """Sampling: the slots that the last denoising pass filled in `rows` take ids [B, size]
        instead of their greedy ids."""
        rows = torch.isin(self.rows, torch.tensor(rows, dtype=torch.long, device=self.dev))
        chosen = (self.filled[:, 0, :size] == self.nstep[:, None] - 1) & rows[:, None]
        self.noisy[:, :size] = torch.where(chosen, ids, self.noisy[:, :size])
        pos = self.t[:, None] + self.kpos[:size]
        self.ids.scatter_(1, pos, torch.where(chosen, ids, self.ids.gather(1, pos)))

    def only(self, rows: list[int]) -> None:
        """The steps after this move these rows only (the others keep t and their patches)."""
        if rows != self.moving:  # most steps keep the rows of the last: no device work then
            self.move.copy_(torch.isin(self.rows, torch.tensor(rows, dtype=torch.long, device=self.dev)))
            self.moving = list(rows)

    def _signal(self, advance: tuple | None = None, draft: bool = False) -> None:
        """(byte t, does it open a patch?): the two numbers the host reads; with `advance` (from
        `_decode`) the rows first take their greedy bytes and next ids and move (one kernel:
        kernels.step_end). A draft moves dt instead of t and leaves the signal alone."""
        pc, own = self.cfg.patch, not (draft or self.look)
        kernels.step_end(self.ids, self.dt if draft else self.t, self.signal if own else None,
                         self.olog if own else None, self.ent, self.forced, self.cur, self.is_ws, pc.rule,
                         pc.threshold, pc.stride, pc.max_patch, advance)
        if self.look and not draft:  # the pass decided byte t's patch already (its `opens`, in olog)
            self.signal.copy_(torch.stack((self.ids[self.rows, self.t], self.olog[self.rows, self.t].long()), 1))

    # ---- the steps as the device runs them (graphs.Steps: CUDA-graph replays on a GPU) ---------
    @torch.inference_mode()
    def run(self, L: int = 1, with_global: bool = True, close: bool = False, block: int = 0,
            exact_first: bool = False, by_entropy: bool = False, in_order: bool = False) -> None:
        """advance(L, with_global, close, block, exact_first, by_entropy, in_order)."""
        self.steps(self.advance, L, with_global, close, block, exact_first, by_entropy, in_order)

    @torch.inference_mode()
    def run_draft(self) -> None:
        self.steps(self.draft)

    @torch.inference_mode()
    def run_close(self) -> None:
        self.steps(self.close)

    @torch.inference_mode()
    def run_begin(self, keep_first: bool, knob: float) -> None:
        """begin_block(keep_first), unmasked by α or γ = knob."""
        self.set_knob(knob)
        self.steps(self.begin_block, keep_first)

    def set_knob(self, knob: float) -> None:
        """The unmasking rule's α or γ (written when it changes: one graph serves every value)."""
        if knob != self.knob_now:
            self.knob.fill_(knob)
            self.knob_now = knob

    @torch.inference_mode()
    def run_denoise(self, size: int, by_entropy: bool, in_order: bool = False) -> None:
        self.steps(self.denoise, size, by_entropy, in_order)


_STATES: "weakref.WeakKeyDictionary[BLT, dict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def decode_state(model: BLT, B: int, compiled: bool = False, claim: bool = False) -> DecodeState:
    """A DecodeState of `model` for batch B on its current device and dtype (with steps compiled by
    COMPILE_BACKEND if `compiled`), built once and reused (its graphs are captured once too). A
    request `claim`s one for itself until it `release`s it: concurrent requests (the app's
    threads) each get a state of their own."""
    p = next(model.parameters())
    backend = COMPILE_BACKEND if compiled else None
    with _LOCK:
        pool = _STATES.setdefault(model, {}).setdefault((B, p.device, p.dtype, backend), [])
        s = next((s for s in pool if not s.busy), None)
        if s is None:
            s = DecodeState(model, B, backend)
            pool.append(s)
        s.busy = claim
        return s
