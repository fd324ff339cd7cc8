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
(with the new byte, which it needs anyway to stop). The prompt goes through the same step,
one byte per replay, with the next id taken from the prompt instead of the prediction, so a
request costs no eager pass at all. Tests check the bytes, the logits and the trace against
`generate_blt` / `generate_batch`.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from ..entropy import entropy_of_logits
from ..layers import Block
from ..model import BLT
from ..patching import WHITESPACE
from ..tokens import OFFSET, PAD, ids_to_bytes
from .common import Generation, Stopper, allowed, check_request, finish, new_counters
from .state import HASH_CONTEXT


def supports(model: BLT) -> bool:
    """Whether `model` can use this path (bltlab layout: the hf layout's pending rows are not here)."""
    return model.cfg.arch == "bltlab"


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """layers.rope with the angles' cos/sin looked up ([B, 1, 1, hd/2]) instead of recomputed."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


def _fused_qkv(layer: Block) -> torch.Tensor:
    """[3D, D]: the query, key and value projections as one matrix (one GEMV instead of three)."""
    a = layer.attn
    return torch.cat((a.wq.weight, a.wk.weight, a.wv.weight)).detach()


def _block(layer: Block, wqkv, x, rot, kc, vc, at, mask, rows, slots=None) -> torch.Tensor:
    """One layer over one new position per row. x: [B, 1, D], wqkv: `_fused_qkv(layer)`, rot: RoPE
    (cos, sin) at the rows' positions, kc/vc: [B, H, S, hd] static caches written at index `at`
    [B], mask: [B, 1, 1, S]."""
    B, _, D = x.shape
    if layer.cross is not None:
        x = x + layer.cross(layer.cross_norm(x), slots)
    a = layer.attn
    qkv = F.linear(layer.attn_norm(x), wqkv).view(B, 3, a.heads, 1, D // a.heads).transpose(0, 1)
    qk = _rope(qkv[:2], *rot)  # [2, B, H, 1, hd]: queries and keys in one pass
    q, k, v = qk[0], qk[1], qkv[2]
    kc[rows, :, at] = k[:, :, 0]
    vc[rows, :, at] = v[:, :, 0]
    o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask)
    x, hn = layer.ffn_norm(x, a.wo(o.transpose(1, 2).reshape(B, 1, D)))
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
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self._rot: dict = {}
        blocks = [*model.entropy.layers, *model.enc_layers, *model.global_layers, *model.dec_layers]
        self.wqkv = {id(layer): _fused_qkv(layer) for layer in blocks}

    def rot(self, layers, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin of `layers` at positions pos [B] -> 2 x [B, 1, 1, hd/2], from a table
        computed once exactly as layers.rope computes the angles."""
        a = layers[0].attn
        hd = a.wq.out_features // a.heads
        key = (a.theta, hd)
        if key not in self._rot:
            inv = 1.0 / a.theta ** (torch.arange(0, hd, 2, device=self.dev, dtype=torch.float32) / hd)
            ang = torch.arange(self.T, device=self.dev).float()[:, None] * inv  # [T, hd/2]
            self._rot[key] = (ang.cos(), ang.sin())
        cos, sin = self._rot[key]
        return cos[pos][:, None, None], sin[pos][:, None, None]

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
        for layer in (*self.m.entropy.layers, *self.m.enc_layers, *self.m.global_layers, *self.m.dec_layers):
            self.wqkv[id(layer)].copy_(_fused_qkv(layer))  # the weights may have changed since
        self._decide()
        self.signal.copy_(torch.stack((self.ids[self.rows, self.t], self.opens.long()), 1))

    # ---- the step ------------------------------------------------------------------------------
    def _decide(self) -> None:
        """opens[b]: byte t opens a patch (patch_starts' rule, one position at a time)."""
        b, t, pc = self.rows, self.t, self.cfg.patch
        if pc.rule == "global":
            nat = self.ent[b, t] > pc.threshold
        elif pc.rule == "relative":
            nat = (self.ent[b, t] - self.ent[b, t - 1]) > pc.threshold
        elif pc.rule == "fixed":
            nat = (t - 1) % pc.stride == 0
        else:
            nat = torch.isin(self.ids[b, t - 1], self.ws) & ~torch.isin(self.ids[b, t], self.ws)
        nat = nat | (t <= 1)
        if pc.max_patch > 0:  # patch_starts' closed form, counted from the open patch's start
            nat = nat | (t - self.cur >= pc.max_patch)
        self.opens.copy_(nat)

    def _mask(self, limit: torch.Tensor, window: int) -> torch.Tensor:
        m = self.kpos[None] <= limit[:, None]
        if window > 0:
            m = m & (limit[:, None] - self.kpos[None] < window)
        return m[:, None, None]  # [B, 1, 1, S]

    def step(self, with_global: bool = True) -> None:
        """Advance every row by one byte (in place; no host synchronisation)."""
        m, cfg = self.m, self.cfg
        b, t = self.rows, self.t
        tok = self.ids[b, t]  # [B]
        self.olog[b, t] = self.opens
        # entropy model: H_{t+1}
        x = m.entropy.emb(tok[:, None])
        mask = self._mask(t, m.entropy.cfg.window)
        rot = self.rot(m.entropy.layers, t)
        for layer, (kc, vc) in zip(m.entropy.layers, self.ent_kv):
            x = _block(layer, self.wqkv[id(layer)], x, rot, kc, vc, t, mask, b)
        self.ent[b, t + 1] = entropy_of_logits(m.entropy.head(m.entropy.norm(x)))[:, 0].float()
        # local encoder: h_t
        ctx = t[:, None] + torch.arange(-HASH_CONTEXT, 1, device=self.dev)  # [B, 9]
        full = torch.where(ctx >= 0, self.ids.gather(1, ctx.clamp(min=0)), PAD)
        x = m.embed(full[:, -1:], full[:, :-1])
        mask = self._mask(t, cfg.local_window)
        rot = self.rot(m.enc_layers, t)  # the decoder's too (same shapes and base)
        for layer, (kc, vc) in zip(m.enc_layers, self.enc_kv):
            x = _block(layer, self.wqkv[id(layer)], x, rot, kc, vc, t, mask, b)
        self.h[b, t] = x[:, 0]
        # global model on the patch that byte t closes (written for every row, kept where it opened)
        if with_global:
            idx = self.cur[:, None] + torch.arange(self.lmax, device=self.dev)  # [B, L]
            valid = idx < t[:, None]
            bytes_ = self.h[b[:, None], idx.clamp(max=self.T - 1)]  # [B, L, d]
            g = m.pool.from_layout(bytes_[:, None], valid[:, None])  # [B, 1, d_global]
            gmask = self._mask(self.ncomp, 0)
            grot = self.rot(m.global_layers, self.ncomp)
            for layer, (kc, vc) in zip(m.global_layers, self.glob_kv):
                g = _block(layer, self.wqkv[id(layer)], g, grot, kc, vc, self.ncomp, gmask, b)
            self.table[b, self.ncomp + 1] = m.slot_rows(m.global_norm(g))[:, 0]
            self.ncomp += self.opens & (t > 0)  # BOS opens patch 0 but closes none
            self.cur.copy_(torch.where(self.opens, t, self.cur))
        # decoder at t: table row p(t) = ncomp
        slots = self.table[b, self.ncomp][:, None]  # [B, 1, k, d]
        x = self.h[b, t][:, None]
        for layer, (kc, vc) in zip(m.dec_layers, self.dec_kv):
            x = _block(layer, self.wqkv[id(layer)], x, rot, kc, vc, t, mask, b, slots)
        self.logits.copy_(m.head(m.dec_norm(x))[:, 0])
        nxt = allowed(self.logits.float()).argmax(-1)
        self.ids[b, t + 1] = torch.where(t + 1 < self.plen, self.given[b, t + 1], nxt)  # prompt first
        self.t += 1
        self._decide()
        self.signal.copy_(torch.stack((self.ids[b, self.t], self.opens.long()), 1))

    # ---- CUDA graphs -------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, with_global: bool = True) -> None:
        """One step: replays its CUDA graph on a GPU (captured on first use), eager elsewhere."""
        if self.dev.type != "cuda":
            return self.step(with_global)
        g = self.graphs.get(with_global)
        if g is None:
            live = (self.ids, self.ent, self.t, self.cur, self.ncomp, self.opens, self.signal)
            saved = [x.clone() for x in live]
            s = torch.cuda.Stream(self.dev)
            s.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(s):  # warm-up: compiles the Triton kernels outside the capture
                self.step(with_global)
            torch.cuda.current_stream(self.dev).wait_stream(s)
            g = self.graphs[with_global] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.step(with_global)
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


def _push_stats(cfg, stats: dict, t: int, ncomp: int, opened: bool, n_tables: int) -> None:
    """SeqState.push's cost counters for one byte at position t (see state.py)."""
    dl, w = cfg.d_local, cfg.local_window
    stats["kv_read"] += 2 * cfg.entropy.n_layers * t * cfg.entropy.dim
    stats["n_loc"] += 1
    stats["hash_rows"] += 1 + n_tables
    stats["kv_read"] += 2 * (cfg.n_enc_layers + cfg.n_dec_layers) * min(t, w) * dl
    if opened:
        stats["kv_read"] += 2 * cfg.n_global_layers * ncomp * cfg.d_global


def _prefill(s: StaticState, prompts: list[list[int]]) -> None:
    """Run the prompts through the step; at batch 1 the global step only where a patch opens."""
    s.reset(prompts)
    opens = True
    for _ in range(max(len(p) for p in prompts)):
        s.run(with_global=opens)
        if s.B == 1:
            opens = bool(s.signal[0, 1])


@torch.no_grad()
def generate_static(model: BLT, prompt: str | bytes, max_bytes: int = 64, stop: str | bytes | None = None) -> Generation:
    """Greedy `blt` for one prompt: the same bytes, counters and trace as `generate_blt`."""
    ids = check_request(prompt, max_bytes, model.cfg.max_bytes)
    cfg, n_tables = model.cfg, len(model.embed.tables)
    s = static_state(model, 1)
    _prefill(s, [ids])
    n = len(ids)
    starts = s.olog[0, :n].tolist()
    ncomp = sum(starts) - 1
    # what one eager prefill pass counts (SeqState.push over the prompt)
    counters = {"n_dec": 1, "n_enc": int(ncomp > 0), "n_ent": 1}
    stats = {"n_loc": 1, "kv_read": 0, "hash_rows": n * (1 + n_tables)}
    prefill = {**counters, **stats}
    stopper = Stopper(max_bytes, stop)
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
    trace = [{"type": "prefill", "bytes": len(ids) - 1, "patch_starts": [i for i, x in enumerate(starts) if x],
              "entropy": [round(h, 4) for h in ent[:len(ids)]], "counters": prefill}]
    for pos, byte, opened, snap in events:
        trace.append({"type": "byte", "pos": pos, "byte": byte - OFFSET, "entropy": round(ent[pos], 4),
                      "patch_start": opened, "counters": snap})
    if stopper.reason in ("max_bytes", "stop"):
        trace.append({"type": "byte", "pos": n, "byte": tok - OFFSET, "entropy": round(ent[n], 4),
                      "patch_start": None, "counters": {**counters, **stats}})
    return finish("blt", ids, stopper, counters, trace, stats)


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
