"""Greedy `blt` with static KV caches and, on CUDA, CUDA-graph-captured steps.

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
instead of the prediction. Tests check the bytes, the logits and the trace against
`generate_blt` / `generate_batch`, and one pass against the same bytes in pieces.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from ..entropy import entropy_of_logits
from ..layers import Block, causal_mask, rotate
from ..model import BLT
from ..patching import WHITESPACE
from ..tokens import EOS, OFFSET, PAD, ids_to_bytes
from .common import Generation, Stopper, allowed, check_request, finish, new_counters
from .state import HASH_CONTEXT


MODES = ("blt", "blt-s8", "blt-s16")  # what this engine decodes (greedy only)


def supports(model: BLT) -> bool:
    """Whether `model` can use this path (bltlab layout: the hf layout's pending rows are not here)."""
    return model.cfg.arch == "bltlab"


def _fused_qkv(layer: Block) -> torch.Tensor:
    """[3D, D]: the query, key and value projections as one matrix (one GEMV instead of three)."""
    a = layer.attn
    return torch.cat((a.wq.weight, a.wk.weight, a.wv.weight)).detach()


def _block(layer: Block, wqkv, x, rot, kc, vc, at, mask, rows, slots=None) -> torch.Tensor:
    """One layer over L new positions per row. x: [B, L, D], wqkv: `_fused_qkv(layer)`, rot: RoPE
    (cos, sin) at the positions, kc/vc: [B, H, S, hd] static caches written at indices `at`
    [B, L], mask: [B, 1, L, S], slots: [B, L, k, D] for a cross-attending layer."""
    B, L, D = x.shape
    if layer.cross is not None:
        x = x + layer.cross(layer.cross_norm(x), slots)
    a = layer.attn
    qkv = F.linear(layer.attn_norm(x), wqkv).view(B, L, 3, a.heads, D // a.heads).permute(2, 0, 3, 1, 4)
    qk = rotate(qkv[:2], *rot)  # [2, B, H, L, hd]: queries and keys in one pass
    q, k, v = qk[0], qk[1], qkv[2]
    kc[rows[:, None], :, at] = k.transpose(1, 2)
    vc[rows[:, None], :, at] = v.transpose(1, 2)
    o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)
    x, hn = layer.ffn_norm(x, a.wo(o.transpose(1, 2).reshape(B, L, D)))
    return x + layer.ffn(hn)


def _caches(layers, B: int, S: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in layers:
        H = layer.attn.heads
        shape = (B, H, S, layer.attn.wq.out_features // H)
        out.append((like.new_zeros(shape), like.new_zeros(shape)))
    return out


class StaticState:
    """Static buffers for B sequences and the step that advances all of them by one byte."""

    def __init__(self, model: BLT, B: int):
        self.m, self.cfg, self.B = model, model.cfg, B
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
        self.graphs: dict = {}  # CUDA graphs: advance(1) with / without the global step, draft
        self._rot: dict = {}
        self.blocks = [*model.entropy.layers, *model.enc_layers, *model.global_layers, *model.dec_layers]
        self.wqkv = {id(layer): _fused_qkv(layer) for layer in self.blocks}

    def rot(self, layers, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin of `layers` at positions pos [B, L] -> 2 x [B, 1, L, hd/2], from a table
        computed once exactly as layers.rope computes the angles."""
        a = layers[0].attn
        hd = a.wq.out_features // a.heads
        key = (a.theta, hd)
        if key not in self._rot:
            inv = 1.0 / a.theta ** (torch.arange(0, hd, 2, device=self.dev, dtype=torch.float32) / hd)
            ang = torch.arange(self.T, device=self.dev).float()[:, None] * inv  # [T, hd/2]
            self._rot[key] = (ang.cos(), ang.sin())
        cos, sin = self._rot[key]
        return cos[pos][:, None], sin[pos][:, None]

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
        for x in (self.ent, self.t, self.cur, self.ncomp):
            x.zero_()
        self.table[:, 0] = self.m.start_slots.to(self.table.dtype)
        for layer in self.blocks:
            self.wqkv[id(layer)].copy_(_fused_qkv(layer))  # the weights may have changed since
        self._signal()

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
        nat = nat | (pos <= 1)
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
        with_global=False skips the global step (only right when no byte of the pass opens a patch)."""
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
            # byte u > 0 that opens a patch closes [last start before u, u); closed patches first
            incl = torch.where(opens, pos, self.cur[:, None]).cummax(1).values  # last start <= u
            first = torch.cat((self.cur[:, None], incl[:, :-1]), 1)  # last start < u
            closes = opens & (pos > 0)
            order = torch.argsort((~closes).to(torch.uint8), dim=1, stable=True)
            end, start = pos.gather(1, order), first.gather(1, order)  # patch j = [start, end) if j < closed
            idx = start[..., None] + self.kpos[:self.lmax]  # [B, L, lmax]
            g = m.pool.from_layout(self.h[b[:, None, None], idx.clamp(max=self.T - 1)], idx < end[..., None])
            gpos = self.ncomp[:, None] + self.kpos[:L]  # the closed ones' patch indices (the rest: unread)
            gmask, grot = self._mask(gpos, 0), self.rot(m.global_layers, gpos)
            for layer, (kc, vc) in zip(m.global_layers, self.glob_kv):
                g = _block(layer, self.wqkv[id(layer)], g, grot, kc, vc, gpos, gmask, b)
            self.table[b[:, None], gpos + 1] = m.slot_rows(m.global_norm(g))
            rows = rows + closes.long().cumsum(1)
            self.ncomp += closes.sum(1)
            self.cur.copy_(incl[:, -1])
        nxt = self._decode(pos, rows, local)
        t1 = t + L
        self.ids[b, t1] = torch.where(t1 < self.plen, self.given[b, t1], nxt)  # the prompt first
        self.t += L
        self._signal()

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
    @torch.no_grad()
    def run(self, with_global: bool = True) -> None:
        """advance(1, with_global): a CUDA-graph replay on a GPU, eager elsewhere."""
        self._replay(with_global, lambda: self.advance(1, with_global))

    @torch.no_grad()
    def run_draft(self) -> None:
        """draft(): a CUDA-graph replay on a GPU, eager elsewhere."""
        self._replay("draft", self.draft)

    def _replay(self, key, step) -> None:
        if self.dev.type != "cuda":
            return step()
        g = self.graphs.get(key)
        if g is None:  # capture on first use, after a warm-up that compiles the Triton kernels
            live = (self.ids, self.ent, self.t, self.cur, self.ncomp, self.opens, self.signal, self.dt)
            saved = [x.clone() for x in live]
            s = torch.cuda.Stream(self.dev)
            s.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(s):
                step()
            torch.cuda.current_stream(self.dev).wait_stream(s)
            g = self.graphs[key] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()
            for x, y in zip(live, saved):
                x.copy_(y)  # neither pass counts: what else they wrote lies past t (unread, rewritten)
        g.replay()


_STATES: "weakref.WeakKeyDictionary[BLT, dict]" = weakref.WeakKeyDictionary()


def static_state(model: BLT, B: int) -> StaticState:
    """The model's StaticState for batch B on its current device and dtype, built once (its
    graphs are captured once too)."""
    p = next(model.parameters())
    per, key = _STATES.setdefault(model, {}), (B, p.device, p.dtype)
    if key not in per:
        per[key] = StaticState(model, B)
    return per[key]


def _local_stats(cfg, stats: dict, t: int, L: int, n_tables: int) -> None:
    """Cost counters of one encoder + decoder pass over L bytes from position t (state.py's)."""
    stats["n_loc"] += 1
    stats["hash_rows"] += L * (1 + n_tables)
    stats["kv_read"] += 2 * (cfg.n_enc_layers + cfg.n_dec_layers) * min(t, cfg.local_window) * cfg.d_local


def _push_stats(cfg, stats: dict, t: int, ncomp: int, closed: bool, n_tables: int, L: int = 1) -> None:
    """SeqState.push's cost counters for L bytes from position t (see state.py)."""
    stats["kv_read"] += 2 * cfg.entropy.n_layers * t * cfg.entropy.dim
    _local_stats(cfg, stats, t, L, n_tables)
    if closed:
        stats["kv_read"] += 2 * cfg.n_global_layers * ncomp * cfg.d_global


def _prefill(s: StaticState, prompts: list[list[int]]) -> None:
    """The prompts' bytes: the common length in one pass, the rest of the longer ones one by one."""
    s.reset(prompts)
    lens = [len(p) for p in prompts]
    s.advance(min(lens))
    for _ in range(max(lens) - min(lens)):
        s.run()


def _begin(model: BLT, prompt: str | bytes, max_bytes: int, stop: str | bytes | None):
    """Validate and read one prompt; the counters and prefill event of one eager prefill pass.
    Returns (prompt ids, state, counters, stats, trace, stopper, complete patches)."""
    ids = check_request(prompt, max_bytes, model.cfg.max_bytes)
    s = static_state(model, 1)
    _prefill(s, [ids])
    n = len(ids)
    starts, ent = s.olog[0, :n].tolist(), s.ent[0, :n].tolist()
    ncomp = sum(starts) - 1
    counters = {"n_dec": 1, "n_enc": int(ncomp > 0), "n_ent": 1}
    stats = {"n_loc": 1, "kv_read": 0, "hash_rows": n * (1 + len(model.embed.tables))}
    trace = [{"type": "prefill", "bytes": n - 1, "patch_starts": [i for i, x in enumerate(starts) if x],
              "entropy": [round(h, 4) for h in ent], "counters": {**counters, **stats}}]
    return ids, s, counters, stats, trace, Stopper(max_bytes, stop), ncomp


@torch.no_grad()
def generate_static(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None) -> Generation:
    """Greedy `blt` for one prompt: the same bytes, counters and trace as `generate_blt`."""
    ids, s, counters, stats, trace, stopper, ncomp = _begin(model, prompt, max_bytes, stop)
    cfg, n_tables, n = model.cfg, len(model.embed.tables), len(ids)
    tok, opens = s.signal[0].tolist()
    events = []  # (position, byte, opened, counters) per pushed byte
    while not stopper.push(tok):
        s.run(with_global=bool(opens))
        _push_stats(cfg, stats, n, ncomp, opens, n_tables)
        counters["n_ent"] += 1
        counters["n_dec"] += 1
        counters["n_enc"] += opens
        ncomp += opens
        events.append((n, tok, bool(opens), {**counters, **stats}))
        n += 1
        tok, opens = s.signal[0].tolist()
    ent = s.ent[0, :n + 1].tolist()
    for pos, byte, opened, snap in events:
        trace.append({"type": "byte", "pos": pos, "byte": byte - OFFSET, "entropy": round(ent[pos], 4),
                      "patch_start": opened, "counters": snap})
    if stopper.reason in ("max_bytes", "stop"):
        trace.append({"type": "byte", "pos": n, "byte": tok - OFFSET, "entropy": round(ent[n], 4),
                      "patch_start": None, "counters": {**counters, **stats}})
    return finish("blt", ids, stopper, counters, trace, stats)


@torch.no_grad()
def generate_static_speculative(model: BLT, prompt: str | bytes, max_bytes: int = 64,
                                stop: str | bytes | None = None, k: int = 16) -> Generation:
    """Greedy `blt-s{k}` for one prompt: the same bytes, counters and trace as
    `generate_speculative(draft="self")`. Draft steps replay one graph without host reads (the
    draft is read once, cut at EOS); the verification is one `advance` over the draft."""
    ids, s, counters, stats, trace, stopper, ncomp = _begin(model, prompt, max_bytes, stop)
    cfg, n_tables, n = model.cfg, len(model.embed.tables), len(ids)
    while True:
        room = min(k, max_bytes - len(stopper.out))
        s.dt.fill_(n)
        for _ in range(room - 1):
            s.run_draft()
        d = s.ids[0, n:n + room].tolist()  # d[0]: the byte the last verification settled
        d = d[:d.index(EOS) + 1] if EOS in d else d
        for u in range(n, n + len(d) - 1):  # what the eager drafts count (a fork shares the stats)
            _local_stats(cfg, stats, u, 1, n_tables)
        counters["n_dec"] += len(d) - 1
        body = d[:-1] if d[-1] == EOS else d
        preds, starts = [], []
        if body:
            s.advance(len(body))
            preds, starts = torch.cat((s.pred[0, n:n + len(body)], s.olog[0, n:n + len(body)].long())).view(2, -1).tolist()
            closed = sum(starts)  # every start after BOS closes a patch
            _push_stats(cfg, stats, n, ncomp, closed > 0, n_tables, len(body))
            counters["n_ent"] += 1
            counters["n_dec"] += 1
            counters["n_enc"] += closed > 0
        accepted, rejected, correction = 1, None, None
        for i in range(1, len(d)):  # preds[i - 1] is the exact greedy byte at n + i
            if d[i] == preds[i - 1]:
                accepted += 1
                continue
            rejected, correction = d[i], preds[i - 1]
            s.rollback(n + i, correction)
            break
        kept = starts[:accepted] if rejected is not None else starts
        ncomp += sum(kept)
        trace.append({"type": "verify", "pos": n - 1, "draft": [t - OFFSET for t in d], "accepted": accepted,
                      "rejected": None if rejected is None else rejected - OFFSET,
                      "correction": None if correction is None else correction - OFFSET,
                      "patch_starts": [n + j for j, x in enumerate(kept) if x], "counters": {**counters, **stats}})
        if any(stopper.push(t) for t in d[:accepted]):
            break
        n += accepted if rejected is not None else len(body)
    return finish(f"blt-s{k}", ids, stopper, counters, trace, stats)


@torch.no_grad()
def generate_static_batch(model: BLT, prompts: list[str | bytes], max_bytes: int = 64,
                          stop: str | bytes | None = None, check_every: int = 8) -> list[Generation]:
    """Greedy `blt` for several prompts at once, one graph replay per byte for all rows (in
    lockstep from BOS, each row leaving its prompt when it ends): the same bytes and pass
    counters as `generate_batch`. The host reads the new bytes every `check_every` steps to
    stop early; bytes past a row's end are computed and dropped."""
    if not prompts:
        raise ValueError("no prompts given")
    prompt_ids = [check_request(p, max_bytes, model.cfg.max_bytes) for p in prompts]
    s = static_state(model, len(prompts))
    _prefill(s, prompt_ids)
    n0 = [len(i) for i in prompt_ids]
    stoppers = [Stopper(max_bytes, stop) for _ in prompts]
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
    counters = new_counters()
    counters.update(n_dec=1, n_ent=1, n_enc=1)
    for j in range(max(fed) - 1):
        pushed = [b for b in range(len(prompts)) if fed[b] - 1 > j]
        counters["n_dec"] += 1
        counters["n_ent"] += 1
        counters["n_enc"] += any(olog[b][n0[b] + j] for b in pushed)
    return [Generation("blt", ids_to_bytes(ids), bytes(stp.out), stp.reason,
                       {**counters, "batch": len(prompts), "bytes": len(stp.out)}, [])
            for ids, stp in zip(prompt_ids, stoppers)]
