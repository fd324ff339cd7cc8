"""The Byte Latent Transformer (docs/model.md, "BLT"): local encoder, global transformer, local decoder.

Positions: ids[:, 0] is BOS and forms patch 0 alone. `starts` [B, T] marks patch starts,
`pids` [B, T] is the patch index of each byte. The decoder at byte t predicts byte t + 1
and reads the global output of patch p(t) - 1 ("lag by one"); bytes of patch 0 read a
learned start slot instead. Block diffusion (BLT-D) appends noisy blocks of B ids that
start at patch starts: block at s reads the clean decoder states < s, its own block
bidirectionally, and the global output of patch p(s) - 1; slot j predicts byte s + j.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BLTConfig
from .entropy import EntropyModel, entropy_of_logits
from . import kernels
from .layers import Block, HashEmbedding, RMSNorm
from .patching import opens_patch, patch_layout, patch_starts
from .positions import AttnMask
from .tokens import N_IDS, N_INPUT_IDS


def patch_index(starts: torch.Tensor) -> torch.Tensor:
    """[B, T] bool starts -> [B, T] long patch index of every byte."""
    return starts.long().cumsum(1) - 1


class PatchPooling(nn.Module):
    """Max-pool each patch's byte states into a query, split it into k slots, and let the
    slots cross-attend to the bytes of their own patch only."""

    def __init__(self, cfg: BLTConfig):
        super().__init__()
        d, k = cfg.d_local, cfg.cross_k
        self.k, self.heads = k, cfg.local_heads
        self.q_proj = nn.Linear(d, k * d, bias=False)
        self.q_norm, self.kv_norm = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.wq, self.wk = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.wv, self.wo = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.out = nn.Identity() if k * d == cfg.d_global else nn.Linear(k * d, cfg.d_global, bias=False)
        self.hf = cfg.arch == "hf"  # transformers adds the residual twice

    def forward(self, h: torch.Tensor, pids: torch.Tensor, n_patches: int) -> torch.Tensor:
        """h: [B, T, d]; pids: [B, T] (-1 = ignore) -> [B, P, d_global]."""
        bytes_, valid = patch_layout(h, pids, n_patches)  # [B, P, L, d], [B, P, L]
        pooled = kernels.patch_max(h, pids, n_patches, (bytes_, valid))  # [B, P, d]; empty patches 0
        return self.attend(pooled, bytes_, self.bias(valid))

    @staticmethod
    def bias(valid: torch.Tensor) -> torch.Tensor:
        """[B, P, L] valid bytes -> the attention's additive mask: 0 where a slot reads the byte, else
        -inf. A patch with no byte (batch padding; in decoding, written past the patches really
        closed) reads its first position, so that every output stays finite: nothing reads them."""
        allow = valid.clone()
        allow[..., 0] = True
        return torch.zeros_like(valid, dtype=torch.float).masked_fill(~allow, float("-inf"))

    def attend(self, pooled: torch.Tensor, bytes_: torch.Tensor, bias: torch.Tensor,
               kv_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Slots seeded by `pooled` [B, P, d] attend to their patch's bytes [B, P, L, d] under `bias`
        [B, P, L] (`PatchPooling.bias`) -> [B, P, d_global]. Keys and values come from one projection,
        kv_weight = wk|wv (decoding keeps it fused; by default it is concatenated here)."""
        B, P, L, d = bytes_.shape
        H, hd = self.heads, d // self.heads
        kv_weight = torch.cat((self.wk.weight, self.wv.weight)) if kv_weight is None else kv_weight
        q0 = self.q_proj(pooled).view(B, P, self.k, d)  # [B, P, k, d]
        q = self.q_norm.linear(q0, self.wq.weight)[1].view(B * P, self.k, H, hd).transpose(1, 2)  # [B P, H, k, hd]
        kv = self.kv_norm.linear(bytes_, kv_weight)[1].view(B * P, L, 2, H, hd).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=bias.to(q.dtype).view(B * P, 1, 1, L))
        o = self.wo(o.transpose(1, 2).reshape(B, P, self.k, d))
        q = q0 + (o + q0 if self.hf else o)
        return self.out(q.reshape(B, P, self.k * d))


class BLT(nn.Module):
    """Entropy model + local encoder + global transformer + local decoder."""

    def __init__(self, cfg: BLTConfig):
        super().__init__()
        self.cfg = cfg
        dl, dg, eps, th = cfg.d_local, cfg.d_global, cfg.norm_eps, cfg.rope_theta
        hf = cfg.arch == "hf"
        self.entropy = EntropyModel(cfg.entropy, eps, th)
        # local encoder
        self.embed = HashEmbedding(N_IDS, dl, cfg.hash_sizes, cfg.hash_vocab, cfg.hash_functions, cfg.arch)
        self.enc_layers = nn.ModuleList(Block(dl, cfg.local_heads, cfg.ffn_mult, th, eps, ffn=cfg.enc_ffn)
                                        for _ in range(cfg.n_enc_layers))
        self.pool = PatchPooling(cfg)
        # global transformer
        self.global_layers = nn.ModuleList(Block(dg, cfg.global_heads, cfg.ffn_mult, th, eps, ffn=cfg.global_ffn)
                                           for _ in range(cfg.n_global_layers))
        self.global_norm = nn.Identity() if hf else RMSNorm(dg, eps)
        # local decoder
        self.slot_proj = nn.Linear(dg, cfg.cross_k * dl, bias=False)
        self.start_slots = nn.Parameter(torch.randn(cfg.cross_k, dl) * 0.02)  # "patch -1"
        self.noisy_embed = nn.Embedding(N_INPUT_IDS, dl)  # decoder input ids of noisy blocks (MASK incl.)
        self.dec_layers = nn.ModuleList(Block(dl, cfg.local_heads, cfg.ffn_mult, th, eps, ffn=cfg.dec_ffn, hf=hf,
                                              cross=cfg.dec_cross_all or i == 0)
                                        for i in range(cfg.n_dec_layers))
        self.dec_norm = RMSNorm(dl, eps)
        self.head = nn.Linear(dl, N_IDS, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    # ---- parts -------------------------------------------------------------------------
    @torch.no_grad()
    def patch(self, ids: torch.Tensor, lengths: torch.Tensor | None = None, cfg=None,
              forced: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] ids -> [B, T] bool patch starts under `cfg` (default: the model's rule)."""
        cfg = cfg or self.cfg.patch
        ent = self.entropy.entropies(ids) if cfg.rule in ("global", "relative") else None
        return patch_starts(ent, ids, cfg, lengths, forced)

    def encode_bytes(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Hash embeddings + causal local encoder layers: [B, T] -> [B, T, d_local]."""
        h = self.embed(ids)
        mask = self.local_mask(pos)
        for layer in self.enc_layers:
            h, _ = layer(h, pos, mask, is_causal=mask is None)
        return h

    def local_mask(self, pos: torch.Tensor) -> AttnMask | None:
        """Sliding-window causal mask, or None when plain causal attention is the same."""
        return None if pos.shape[1] <= self.cfg.local_window else AttnMask.causal(pos, pos, self.cfg.local_window)

    def global_forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, P, d_global] patch vectors -> [B, P, d_global] causal global outputs."""
        pos = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        for layer in self.global_layers:
            x, _ = layer(x, pos, None, is_causal=True)
        return self.global_norm(x)

    def slot_rows(self, g: torch.Tensor) -> torch.Tensor:
        """[B, P, d_global] global outputs -> [B, P, k, d_local] decoder cross-attention slots."""
        return self.slot_proj(g).view(*g.shape[:2], self.cfg.cross_k, self.cfg.d_local)

    def slots(self, g: torch.Tensor) -> torch.Tensor:
        """[B, P, d_global] -> [B, P + 1, k, d_local]; index p holds patch p - 1 (0: start slots)."""
        s = self.slot_rows(g)
        return torch.cat((self.start_slots.expand(g.shape[0], 1, -1, -1).to(s.dtype), s), 1)

    def next_starts(self, ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """arch "hf": [B, T] long, 1 where byte t + 1 opens a patch, so that the decoder at t reads
        table row p(t) + next[t] (the patch before byte t + 1's). The last column, past the input,
        is decided by `opens_patch` (what transformers does past its input)."""
        nxt = torch.zeros_like(starts, dtype=torch.long)
        nxt[:, :-1] = starts[:, 1:]
        ent = entropy_of_logits(self.entropy(ids)[:, -2:])  # H of the last byte and of the next one
        nxt[:, -1] = opens_patch(ent[:, -1], ent[:, 0] if ids.shape[1] > 1 else None, ids.shape[1],
                                 self.cfg.patch).long()
        return nxt

    def decode(self, x, pos, mask, slots):
        """Decoder layers + head. x: [B, L, d_local], slots: [B, L, k, d_local] -> logits [B, L, 260].
        mask None means plain causal."""
        for layer in self.dec_layers:
            x, _ = layer(x, pos, mask, slots=slots, is_causal=mask is None)
        return self.head(self.dec_norm(x))

    def latents(self, ids: torch.Tensor, starts: torch.Tensor):
        """Encoder + global: returns (byte states h [B,T,dl], pids [B,T], slot table [B,P+1,k,dl])."""
        B, T = ids.shape
        pos = torch.arange(T, device=ids.device).expand(B, T)
        h = self.encode_bytes(ids, pos)
        pids = patch_index(starts)
        n_patches = int(pids.max()) + 1
        g = self.global_forward(self.pool(h, pids, n_patches))
        return h, pids, self.slots(g)

    # ---- full passes -------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, starts: torch.Tensor, block_starts: torch.Tensor | None = None,
                noisy: torch.Tensor | None = None):
        """Next-byte logits [B, T, 260]: logits[:, t] predicts ids[:, t + 1]. With noisy blocks,
        returns forward_hybrid's pair instead (one entry point, so DDP wraps both)."""
        if noisy is not None:
            return self.forward_hybrid(ids, starts, block_starts, noisy)
        B, T = ids.shape
        h, pids, table = self.latents(ids, starts)
        pos = torch.arange(T, device=ids.device).expand(B, T)
        rows = pids + self.next_starts(ids, starts) if self.cfg.arch == "hf" else pids
        slots = table[torch.arange(B, device=ids.device)[:, None], rows]  # table row r holds patch r - 1
        return self.decode(h, pos, self.local_mask(pos), slots)

    def forward_hybrid(self, ids: torch.Tensor, starts: torch.Tensor, block_starts: torch.Tensor,
                       noisy: torch.Tensor, *, peek: int = 0):
        """Clean next-byte logits and block-diffusion logits in one decoder pass.

        block_starts: [B, nb] positions s (patch starts, -1 = unused block);
        noisy: [B, nb, Bs] input ids (bytes or MASK). Returns ([B, T, 260], [B, nb, Bs, 260]).
        peek: teaching toggle: each noisy block also sees its first `peek` answers (clean bytes
        s .. s + peek - 1); breaks the objective (notebook 10). 0, the default, is the training mask."""
        if self.cfg.arch == "hf":
            raise ValueError("arch 'hf' models have no block-diffusion decoder (training-free modes only)")
        B, T = ids.shape
        nb, bs = noisy.shape[1:]
        dev = ids.device
        h, pids, table = self.latents(ids, starts)
        rows = torch.arange(B, device=dev)[:, None]
        s = block_starts.clamp(min=0)
        # clean stream then noisy stream, as one sequence with one mask
        cpos = torch.arange(T, device=dev).expand(B, T)
        npos = (s[..., None] + torch.arange(bs, device=dev)).reshape(B, nb * bs)
        x = torch.cat((h, self.noisy_embed(noisy.reshape(B, nb * bs))), 1)
        pos = torch.cat((cpos, npos), 1)
        blk = torch.arange(nb, device=dev).repeat_interleave(bs)  # block of each noisy slot
        nstart = s.gather(1, blk.expand(B, -1))  # [B, N] block start of each noisy slot
        # clean bytes: causal + window; a noisy block: the clean bytes before its start (window), itself
        blks = torch.cat((torch.full_like(cpos, -1), blk.expand(B, -1)), 1)
        mask = AttnMask(pos, torch.cat((cpos, nstart - 1 + peek), 1), blks, pos, blks, self.cfg.local_window)
        slots = torch.cat((table[rows, pids], table[rows, pids.gather(1, nstart)]), 1)
        logits = self.decode(x, pos, mask, slots)
        return logits[:, :T], logits[:, T:].reshape(B, nb, bs, -1)

    # ---- bookkeeping -------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Parameters per part (the paper's P_enc, P_glob, P_dec, plus the entropy model)."""
        count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())
        dec = count(self.slot_proj, self.noisy_embed, self.dec_layers, self.dec_norm, self.head)
        return {"entropy": count(self.entropy), "encoder": count(self.embed, self.enc_layers, self.pool),
                "global": count(self.global_layers, self.global_norm),
                "decoder": dec + self.start_slots.numel()}

    def fused_projections(self) -> dict:
        """Copies of the projections that read the same input, as one matrix each (decoding's one
        product where there were two or three): per block (by id) query|key|value [3 D, D] and the
        SwiGLU's gate|up [2 F, D]; "slots": every decoder layer's cross-attention key|value
        [layers 2 D, D] ("hf": one per layer, which norms the slots first); "pool": the pooling's key|value."""
        def cat(*linears):
            return torch.cat([w.weight for w in linears]).detach()
        blocks = [*self.entropy.layers, *self.enc_layers, *self.global_layers, *self.dec_layers]
        out = {id(b): (cat(b.attn.wq, b.attn.wk, b.attn.wv), cat(b.ffn.w1, b.ffn.w3)) for b in blocks}
        crosses = self.crosses()
        if self.cfg.arch == "hf":
            out["slots"] = tuple(cat(c.wk, c.wv) for c in crosses)
        else:
            out["slots"] = (cat(*[w for c in crosses for w in (c.wk, c.wv)]),)
        out["pool"] = (cat(self.pool.wk, self.pool.wv),)
        return out

    def crosses(self) -> list[nn.Module]:
        """The decoder's cross-attention layers (the ones that read the slots)."""
        return [b.cross for b in self.dec_layers if b.cross is not None]

    def slot_kv(self, slots: torch.Tensor, fused: dict) -> torch.Tensor:
        """Decoder slots [B, P, k, d_local] -> every cross-attention layer's keys and values
        [B, P, layers, 2, H, k, hd], projected once per patch (decoding's table of slot rows) with
        `fused`["slots"] (fused_projections: "hf" norms the slots in each layer first)."""
        B, P, k, D = slots.shape
        crosses = self.crosses()
        if self.cfg.arch == "hf":
            kv = torch.cat([F.linear(c.kv_norm(slots), w) for c, w in zip(crosses, fused["slots"])], -1)
        else:
            kv = F.linear(slots, fused["slots"][0])
        H = crosses[0].heads
        return kv.view(B, P, k, -1, 2, H, D // H).permute(0, 1, 3, 4, 5, 2, 6)

    def weights_version(self) -> tuple:
        """Changes whenever a parameter is written in place (each write bumps its version counter) or
        replaced: how a holder of `fused_projections` knows that its copies are stale."""
        return tuple((p.data_ptr(), p._version) for p in self.parameters())
