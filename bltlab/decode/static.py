"""The static engine: static KV caches and, on CUDA, CUDA-graph-captured steps, for every greedy
mode (the modes' host loops are in static_modes.py).

The eager decoders (state.py) grow their caches with `torch.cat` and decide patches on the
host: exact, easy to read, and bound by Python and kernel-launch overhead on a GPU. Here
every buffer is allocated once at the model's context length and one decoding step is a
fixed sequence of kernels that a CUDA graph replays:

    byte t (already in `ids`)
      -> does t open a patch? (its entropy H_t, the rule, the max patch length; on the device)
      -> entropy model at t: H_{t+1}             (static cache, one row per sequence)
      -> local encoder at t: h_t                 (hash n-grams from ids[t-8..t])
      -> [global step] pool the finished patch [cur, t), global model at patch ncomp,
         slot table row ncomp + 1
      -> decoder at t reading table row p(t) -> logits -> greedy byte t + 1 into `ids`

Rows that did not open a patch write the global step's cache entry and table row at the
next free index, which nothing reads until a real patch overwrites them, so the global step
needs no branch: at batch B it runs for every row in one graph. At batch 1 it is worth
skipping, so two graphs exist (with and without it) and the host reads one flag per byte
(with the new byte, which it needs anyway to stop). The same code takes L bytes in one pass
(`advance(L)`: patches that close inside the pass are compacted into one global pass over L
slots), which is how a prompt is read: one eager pass, its next byte taken from the prompt
instead of the prediction. The other steps, each a graph of its own: `draft` (encoder and
decoder only, for self-speculation), `close` (a diffusion block starts a patch: the global
model on the one it ends) and `denoise` (one pass over a masked block and the unmasking rule,
on the device). Tests check the bytes, the logits and the trace against the eager decoders,
and one pass against the same bytes in pieces.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from .. import kernels
from ..entropy import entropy_of_logits
from ..layers import Block, causal_mask, rotate
from ..model import BLT
from ..patching import WHITESPACE
from ..tokens import MASK, OFFSET, PAD
from .common import allowed
from .state import HASH_CONTEXT

MAX_BLOCK = 16  # the longest denoised block (blt-d16, blt-dv16)
# what engine "compiled" compiles its steps with ("aot_eager" traces the same graphs without
# generating code: the CPU tests use it, inductor's compile takes minutes on a CPU)
COMPILE_BACKEND = "inductor"


def supports(model: BLT) -> bool:
    """Whether `model` can use this path (bltlab layout: the hf layout's pending rows are not here)."""
    return model.cfg.arch == "bltlab"


def _fused_qkv(layer: Block) -> torch.Tensor:
    """[3D, D]: the query, key and value projections as one matrix (one GEMV instead of three)."""
    a = layer.attn
    return torch.cat((a.wq.weight, a.wk.weight, a.wv.weight)).detach()


def _rotate(x: torch.Tensor, rot) -> torch.Tensor:
    """layers.rotate by `StaticState.rot`'s angles: cos + i sin as one complex product (one kernel
    where the real form takes seven), or a pair (cos, sin) in the real form (under torch.compile,
    which fuses it anyway)."""
    if isinstance(rot, tuple):
        return rotate(x, *rot)
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # pairs (x1, x2) as x1 + i x2
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


def _block(layer: Block, wqkv, x, rot, kc, vc, at, mask, rows, slots=None) -> torch.Tensor:
    """One layer over L new positions per row. x: [B, L, D], wqkv: `_fused_qkv(layer)`, rot: RoPE
    angles at the positions (`StaticState.rot`), kc/vc: [B, H, S, hd] static caches written at indices `at`
    [B, L], mask: [B, 1, L, S], slots: [B, L, k, D] for a cross-attending layer."""
    B, L, D = x.shape
    if layer.cross is not None:
        x = x + layer.cross(layer.cross_norm(x), slots)
    a = layer.attn
    qkv = F.linear(layer.attn_norm(x), wqkv).view(B, L, 3, a.heads, D // a.heads).permute(2, 0, 3, 1, 4)
    qk = _rotate(qkv[:2], rot)  # [2, B, H, L, hd]: queries and keys in one pass
    q, k, v = qk[0], qk[1], qkv[2]
    kc[rows[:, None], :, at] = k.transpose(1, 2)
    vc[rows[:, None], :, at] = v.transpose(1, 2)
    o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)
    x, hn = layer.ffn_norm(x, a.wo(o.transpose(1, 2).reshape(B, L, D)))
    return x + layer.ffn(hn)


def unmask_rule(logits: torch.Tensor, masked: torch.Tensor, knob: torch.Tensor,
                by_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`choose_unmask` for a batch, on the device. logits: [B, L, 260] (allowed, float32), masked:
    [B, L] bool, knob: [B] float64 (α, or γ with by_entropy). Returns the chosen slots [B, L] bool
    and each slot's order [B, L] in the eager rule's list (by entropy for γ, else by slot), and the
    entropy and confidence [B, L] of every slot that the rule looked at."""
    ent, conf, _ = kernels.confidence(logits)
    slot = torch.arange(masked.shape[1], device=masked.device).expand_as(masked)
    if by_entropy:  # the longest prefix by entropy whose sum less its largest term stays below γ
        e = ent.masked_fill(~masked, float("inf"))
        order = e.argsort(dim=1, stable=True)
        se = e.gather(1, order)
        fits = ((se.cumsum(1) - se) < knob[:, None].float()) & (slot < masked.sum(1, keepdim=True))
        n = torch.where(knob > 0, fits.sum(1).clamp(min=1), 1)
        rank = torch.empty_like(order).scatter_(1, order, slot)
        return masked & (rank < n[:, None]), rank, ent, conf
    # every slot with confidence above α (compared in float64, as Python compares), at least the best
    chosen = masked & (conf.double() > knob[:, None])
    best = conf.masked_fill(~masked, float("-inf")).argmax(1, keepdim=True)
    return chosen | (masked & (slot == best) & ~chosen.any(1, keepdim=True)), slot, ent, conf


def _caches(layers, B: int, S: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in layers:
        H = layer.attn.heads
        shape = (B, H, S, layer.attn.wq.out_features // H)
        out.append((like.new_zeros(shape), like.new_zeros(shape)))
    return out


class StaticState:
    """Static buffers for B sequences and the steps that advance them. With `compile_backend`, every
    step goes through torch.compile first (then, on a GPU, into its CUDA graph)."""

    def __init__(self, model: BLT, B: int, compile_backend: str | None = None):
        self.m, self.cfg, self.B = model, model.cfg, B
        self.compile_backend, self._compiled = compile_backend, {}
        p = next(model.parameters())
        dev, T = p.device, model.cfg.max_bytes + 1  # ids[t + 1] is written at the last position
        self.dev, self.T = dev, T
        self.ids = torch.full((B, T), PAD, dtype=torch.long, device=dev)
        self.given = torch.full((B, T), PAD, dtype=torch.long, device=dev)  # the prompts
        self.plen = torch.ones(B, dtype=torch.long, device=dev)  # prompt lengths (BOS included)
        self.ent = torch.zeros(B, T + 1, device=dev)  # ent[b, t] = H_t, float32 as SeqState.ent
        self.t = torch.zeros(B, dtype=torch.long, device=dev)  # position of the byte the next step takes
        self.cur = torch.zeros(B, dtype=torch.long, device=dev)  # first byte of the open patch
        self.ncomp = torch.zeros(B, dtype=torch.long, device=dev)  # finished patches (in the table)
        self.opens = torch.zeros(B, dtype=torch.bool, device=dev)  # does byte t open a patch?
        self.olog = torch.zeros(B, T, dtype=torch.bool, device=dev)  # opens of every byte stepped over
        self.signal = torch.zeros(B, 2, dtype=torch.long, device=dev)  # (byte t, opens): what the host reads
        self.pred = torch.zeros(B, T, dtype=torch.long, device=dev)  # pred[b, u]: greedy byte after u
        self.dt = torch.zeros(B, dtype=torch.long, device=dev)  # the draft step's position
        self.forced = torch.zeros(B, T, dtype=torch.bool, device=dev)  # starts a diffusion block imposed
        # the denoised block at t: its ids, and per slot the step that filled it, its order in that
        # step, and the confidence and entropy it was filled with (what the trace shows)
        self.noisy = torch.full((B, MAX_BLOCK), MASK, dtype=torch.long, device=dev)
        self.filled = torch.zeros(B, 2, MAX_BLOCK, dtype=torch.long, device=dev)  # (step, order)
        self.scores = torch.zeros(B, 2, MAX_BLOCK, device=dev)  # (confidence, entropy), float32
        self.nstep = torch.zeros(B, dtype=torch.long, device=dev)
        self.left = torch.zeros(B, dtype=torch.long, device=dev)  # masked slots left: what the host reads
        self.knob = torch.zeros(B, dtype=torch.float64, device=dev)  # α or γ (a tensor: one graph for all)
        self.move = torch.ones(B, dtype=torch.bool, device=dev)  # rows a step moves (the rest keep t, patches)
        self.logits = torch.zeros(B, 260, dtype=p.dtype, device=dev)  # prediction of byte t
        self.h = p.new_zeros(B, T, self.cfg.d_local)
        self.table = p.new_zeros(B, T + 1, self.cfg.cross_k, self.cfg.d_local)  # row r: patch r - 1
        self.ent_kv = _caches(model.entropy.layers, B, T, p)
        self.enc_kv = _caches(model.enc_layers, B, T, p)
        self.glob_kv = _caches(model.global_layers, B, T, p)
        self.dec_kv = _caches(model.dec_layers, B, T, p)
        self.kpos = torch.arange(T, device=dev)
        self.lmax = self.cfg.patch.max_patch or self.cfg.max_bytes  # longest possible patch
        self.ws = torch.tensor(list(WHITESPACE), device=dev) + OFFSET
        self.rows = torch.arange(B, device=dev)
        self.graphs: dict = {}  # CUDA graphs, one per step kind and length
        self.live = (self.ids, self.ent, self.t, self.cur, self.ncomp, self.opens, self.signal, self.dt,
                     self.forced, self.noisy, self.filled, self.scores, self.nstep, self.left)  # what steps update
        self._rot: dict = {}
        self.blocks = [*model.entropy.layers, *model.enc_layers, *model.global_layers, *model.dec_layers]
        self.wqkv = {id(layer): _fused_qkv(layer) for layer in self.blocks}

    def rot(self, layers, pos: torch.Tensor):
        """RoPE angles of `layers` at positions pos [B, L], from a table computed once exactly as
        layers.rope computes them: cos + i sin [B, 1, L, hd/2] for `_rotate`, or under torch.compile
        the pair (cos, sin) of the real form."""
        a = layers[0].attn
        hd = a.wq.out_features // a.heads
        key = (a.theta, hd)
        if key not in self._rot:
            inv = 1.0 / a.theta ** (torch.arange(0, hd, 2, device=self.dev, dtype=torch.float32) / hd)
            ang = torch.arange(self.T, device=self.dev).float()[:, None] * inv  # [T, hd/2]
            self._rot[key] = (ang.cos(), ang.sin(), torch.polar(torch.ones_like(ang), ang))
        cos, sin, cis = self._rot[key]
        if torch.compiler.is_compiling():
            return cos[pos][:, None], sin[pos][:, None]
        return cis[pos][:, None]

    # ---- a new request --------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, prompts: list[list[int]]) -> None:
        """Start B sequences (prompt ids, BOS first) at position 0. Cache entries from an earlier
        request stay but lie past t, so they are masked (and finite: buffers start at zero)."""
        self.given.fill_(PAD)
        for b, ids in enumerate(prompts):
            self.given[b, :len(ids)] = torch.tensor(ids, device=self.dev)
            self.plen[b] = len(ids)
        self.ids.copy_(self.given)
        for x in (self.ent, self.t, self.cur, self.ncomp, self.forced):
            x.zero_()
        self.move.fill_(True)
        self.table[:, 0] = self.m.start_slots.to(self.table.dtype)
        for layer in self.blocks:
            self.wqkv[id(layer)].copy_(_fused_qkv(layer))  # the weights may have changed since
        self._signal()

    def prefill(self, prompts: list[list[int]], freeze: bool = False) -> None:
        """reset, then the prompts' bytes: the common length in one pass, the rest one by one, where
        a row whose prompt has ended goes on with its greedy bytes, or with `freeze` waits there."""
        self.reset(prompts)
        lens = [len(p) for p in prompts]
        self.advance(min(lens))
        for _ in range(max(lens) - min(lens)):
            if freeze:
                self.move.copy_(self.t < self.plen)
            self.run()
        self.move.fill_(True)

    # ---- the step ------------------------------------------------------------------------------
    def _opens(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: byte u (pos [B, L], consecutive from t) opens a patch: patch_starts' rule
        and its closed form for the max length, counted from the open patch's start `cur`."""
        b, pc = self.rows[:, None], self.cfg.patch
        prev = (pos - 1).clamp(min=0)
        if pc.rule == "global":
            nat = self.ent[b, pos] > pc.threshold
        elif pc.rule == "relative":
            nat = (self.ent[b, pos] - self.ent[b, prev]) > pc.threshold
        elif pc.rule == "fixed":
            nat = (pos - 1) % pc.stride == 0
        else:
            nat = torch.isin(self.ids[b, prev], self.ws) & ~torch.isin(self.ids[b, pos], self.ws)
        nat = nat | (pos <= 1) | self.forced[b, pos]
        if pc.max_patch > 0:  # forced starts lie every max_patch bytes after the last natural one
            last = torch.where(nat, pos, self.cur[:, None]).cummax(1).values
            nat = nat | ((pos > last) & ((pos - last) % pc.max_patch == 0))
        return nat

    def _mask(self, qpos: torch.Tensor, window: int) -> torch.Tensor:
        """[B, 1, L, S] over the whole static cache."""
        return causal_mask(qpos, self.kpos[None], window)

    def _local(self, pos: torch.Tensor):
        """The local encoder's and decoder's mask and RoPE angles at pos (same shapes and base)."""
        return self._mask(pos, self.cfg.local_window), self.rot(self.m.enc_layers, pos)

    def advance(self, L: int = 1, with_global: bool = True) -> None:
        """Take bytes t .. t + L - 1 of every row (already in `ids`) in one pass, in place and
        without host synchronisation; then ids[t + L] is the prompt's next byte or the greedy one.
        with_global=False skips the global step (only right when no byte of the pass opens a patch).
        Rows outside `move` keep their position and patches: what the pass wrote for them lies past t."""
        m, b, t = self.m, self.rows, self.t
        pos = t[:, None] + self.kpos[:L]  # [B, L]
        # entropy model: H_{u + 1} for every u, which the patch decisions after byte t need
        x = m.entropy.emb(self.ids.gather(1, pos))
        mask, rot = self._mask(pos, m.entropy.cfg.window), self.rot(m.entropy.layers, pos)
        for layer, (kc, vc) in zip(m.entropy.layers, self.ent_kv):
            x = _block(layer, self.wqkv[id(layer)], x, rot, kc, vc, pos, mask, b)
        self.ent.scatter_(1, pos + 1, entropy_of_logits(m.entropy.head(m.entropy.norm(x))).float())
        opens = self._opens(pos)
        self.olog.scatter_(1, pos, opens)
        local = self._local(pos)
        self._encode(pos, local)
        rows = self.ncomp[:, None].expand(-1, L)  # table row each byte's decoder reads: p(u)
        if with_global:
            # byte u that opens a patch closes [last start before u, u) unless empty (a forced start
            # whose patch `close` ended already); closed patches first
            incl = torch.where(opens, pos, self.cur[:, None]).cummax(1).values  # last start <= u
            first = torch.cat((self.cur[:, None], incl[:, :-1]), 1)  # last start < u
            closes = opens & (pos > first)
            order = torch.argsort((~closes).to(torch.uint8), dim=1, stable=True)
            self._global(first.gather(1, order), pos.gather(1, order))  # patch j = [start, end) if j < closed
            rows = rows + closes.long().cumsum(1)
            self.ncomp += closes.sum(1) * self.move
            self.cur.copy_(torch.where(self.move, incl[:, -1], self.cur))
        nxt = self._decode(pos, rows, local)
        t1 = t + L
        self.ids[b, t1] = torch.where(t1 < self.plen, self.given[b, t1], nxt)  # the prompt first
        self.t += L * self.move
        self._signal()

    def _global(self, start: torch.Tensor, end: torch.Tensor) -> None:
        """Global model on the patches [start, end) ([B, P] each) as patches ncomp .. ncomp + P - 1;
        their slots go to table rows ncomp + 1 ... Rows past the patches really closed are written
        but unread until a real patch overwrites them."""
        m, b, P = self.m, self.rows, start.shape[1]
        idx = start[..., None] + self.kpos[:self.lmax]  # [B, P, lmax]
        g = m.pool.from_layout(self.h[b[:, None, None], idx.clamp(max=self.T - 1)], idx < end[..., None])
        gpos = self.ncomp[:, None] + self.kpos[:P]
        gmask, grot = self._mask(gpos, 0), self.rot(m.global_layers, gpos)
        for layer, (kc, vc) in zip(m.global_layers, self.glob_kv):
            g = _block(layer, self.wqkv[id(layer)], g, grot, kc, vc, gpos, gmask, b)
        self.table[b[:, None], gpos + 1] = m.slot_rows(m.global_norm(g))

    def close(self) -> None:
        """Force a patch start at t (a diffusion block starts a patch) and run the global model on
        the patch that ends there, [cur, t), so that the block reads its output (SeqState.close_patch)."""
        t, move = self.t, self.move
        self.forced[self.rows, t] |= move
        self._global(self.cur[:, None], t[:, None])
        self.ncomp += (self.cur < t) & move
        self.cur.copy_(torch.where(move, t, self.cur))
        self._signal()

    def begin_block(self, keep_first: bool, knob: float) -> None:
        """A block of MASKs at t (slot 0 = byte t with keep_first), unmasked by α or γ = knob."""
        self.noisy.fill_(MASK)
        if keep_first:
            self.noisy[:, 0] = self.ids[self.rows, self.t]
        self.filled.fill_(-1)
        self.nstep.zero_()
        self.knob.fill_(knob)

    def denoise(self, size: int, by_entropy: bool) -> None:
        """One denoising pass over the block's first `size` slots (SeqState.block_logits: the clean
        decoder cache before t in the window, the block both ways, the newest global output), then
        `choose_unmask` on the device: fills the chosen slots in `noisy` and `ids`, logs them, and
        sets `left`. by_entropy: the γ rule, else α (α < 0 fills every slot: BLT-DV's one pass)."""
        m, b, t = self.m, self.rows, self.t
        pos = t[:, None] + self.kpos[:size]  # [B, size]
        noisy = self.noisy[:, :size]
        k, t3 = self.kpos[None, None], t[:, None, None]
        clean = (k < t3) & (pos[..., None] - k < self.cfg.local_window)
        mask = (clean | ((k >= t3) & (k < t3 + size)))[:, None]  # [B, 1, size, S]
        rot, x = self.rot(m.dec_layers, pos), m.noisy_embed(noisy)
        slots = self.table[b, self.ncomp][:, None].expand(-1, size, -1, -1)
        for layer, (kc, vc) in zip(m.dec_layers, self.dec_kv):
            x = _block(layer, self.wqkv[id(layer)], x, rot, kc, vc, pos, mask, b, slots)
        logits = allowed(m.head(m.dec_norm(x)).float())  # [B, size, 260]
        masked = noisy == MASK
        chosen, rank, ent, conf = unmask_rule(logits, masked & self.move[:, None], self.knob, by_entropy)
        pick = logits.argmax(-1)
        self.ids[b[:, None], pos] = torch.where(chosen, pick, self.ids[b[:, None], pos])
        noisy.copy_(torch.where(chosen, pick, noisy))
        log = torch.stack((self.nstep[:, None].expand(-1, size), rank), 1)
        self.filled[..., :size] = torch.where(chosen[:, None], log, self.filled[..., :size])
        score = torch.stack((conf, ent), 1)
        self.scores[..., :size] = torch.where(chosen[:, None], score, self.scores[..., :size])
        self.nstep += masked.any(1).long()
        self.left.copy_((noisy == MASK).sum(1))

    def _encode(self, pos: torch.Tensor, local) -> None:
        """Local encoder over positions pos [B, L] (hash n-grams reach HASH_CONTEXT ids back) -> h;
        local: `_local(pos)`."""
        m, b = self.m, self.rows
        ctx = pos[:, :1] + torch.arange(-HASH_CONTEXT, pos.shape[1], device=self.dev)
        full = torch.where(ctx >= 0, self.ids.gather(1, ctx.clamp(min=0)), PAD)
        x = m.embed(full[:, HASH_CONTEXT:], full[:, :HASH_CONTEXT])
        mask, rot = local
        for layer, (kc, vc) in zip(m.enc_layers, self.enc_kv):
            x = _block(layer, self.wqkv[id(layer)], x, rot, kc, vc, pos, mask, b)
        self.h[b[:, None], pos] = x

    def _decode(self, pos: torch.Tensor, rows: torch.Tensor, local) -> torch.Tensor:
        """Decoder over pos [B, L], byte u reading table row rows[:, u]; keeps the greedy byte after
        each position in `pred` and the last logits; returns the greedy byte after the last one."""
        m, b = self.m, self.rows
        mask, rot = local
        x = self.h[b[:, None], pos]
        for layer, (kc, vc) in zip(m.dec_layers, self.dec_kv):
            x = _block(layer, self.wqkv[id(layer)], x, rot, kc, vc, pos, mask, b, self.table[b[:, None], rows])
        logits = m.head(m.dec_norm(x))  # [B, L, 260]
        self.logits.copy_(logits[:, -1])
        self.pred[b[:, None], pos] = allowed(logits.float()).argmax(-1)
        return self.pred[b, pos[:, -1]]

    def draft(self) -> None:
        """Self-speculation's draft step at position dt: encoder and decoder only, reading the
        newest global output (table row ncomp); writes the greedy byte to ids[dt + 1]. Its cache
        entries lie past t: the verifying `advance` rewrites them."""
        pos = self.dt[:, None]
        local = self._local(pos)
        self._encode(pos, local)
        self.ids[self.rows, self.dt + 1] = self._decode(pos, self.ncomp[:, None], local)
        self.dt += 1

    def rollback(self, n: int, byte: int) -> None:
        """Back to the first n bytes (rejected drafts), with `byte` as byte n (batch 1)."""
        self.t.fill_(n)
        self.forced &= self.kpos <= n
        starts = self.olog & (self.kpos < n)
        self.ncomp.copy_(starts.sum(1) - 1)
        self.cur.copy_(torch.where(starts, self.kpos, 0).amax(1))
        self.ids[:, n] = byte
        self._signal()

    def _signal(self) -> None:
        """opens for the new byte t, and (byte t, opens): the two numbers the host reads."""
        self.opens.copy_(self._opens(self.t[:, None])[:, 0])
        self.signal.copy_(torch.stack((self.ids[self.rows, self.t], self.opens.long()), 1))

    # ---- CUDA graphs -------------------------------------------------------------------------
    # Each run_* is its step as a CUDA-graph replay on a GPU (captured on first use), eager elsewhere.
    @torch.no_grad()
    def run(self, L: int = 1, with_global: bool = True) -> None:
        """advance(L, with_global)."""
        self._replay(("advance", L, with_global), lambda: self._step("advance", L, with_global))

    @torch.no_grad()
    def run_draft(self) -> None:
        """draft()."""
        self._replay("draft", lambda: self._step("draft"))

    @torch.no_grad()
    def run_close(self) -> None:
        """close()."""
        self._replay("close", lambda: self._step("close"))

    @torch.no_grad()
    def run_denoise(self, size: int, by_entropy: bool) -> None:
        """denoise(size, by_entropy)."""
        self._replay(("denoise", size, by_entropy), lambda: self._step("denoise", size, by_entropy))

    def _step(self, name: str, *args) -> None:
        """The step method `name`; with a compile backend, compiled on first use, traced with the
        PyTorch reference ops (the compiler fuses them into its own kernels)."""
        if self.compile_backend is None:
            return getattr(self, name)(*args)
        fn = self._compiled.get(name)
        if fn is None:
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, 64)  # a variant per pass length and kind
            fn = self._compiled[name] = torch.compile(getattr(self, name), backend=self.compile_backend)
        with kernels.backend("reference"):
            fn(*args)

    def _replay(self, key, step) -> None:
        if self.dev.type != "cuda":
            return step()
        g = self.graphs.get(key)
        if g is None:  # capture on first use, after a warm-up that compiles the Triton kernels
            saved = [x.clone() for x in self.live]
            s = torch.cuda.Stream(self.dev)
            s.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(s):
                step()
            torch.cuda.current_stream(self.dev).wait_stream(s)
            g = self.graphs[key] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()
            for x, y in zip(self.live, saved):
                x.copy_(y)  # neither pass counts: what else they wrote lies past t (unread, rewritten)
        g.replay()


_STATES: "weakref.WeakKeyDictionary[BLT, dict]" = weakref.WeakKeyDictionary()


def static_state(model: BLT, B: int, compiled: bool = False) -> StaticState:
    """The model's StaticState for batch B on its current device and dtype (with steps compiled by
    COMPILE_BACKEND if `compiled`), built once (its graphs are captured once too)."""
    p = next(model.parameters())
    backend = COMPILE_BACKEND if compiled else None
    per, key = _STATES.setdefault(model, {}), (B, p.device, p.dtype, backend)
    if key not in per:
        per[key] = StaticState(model, B, backend)
    return per[key]
