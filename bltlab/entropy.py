"""The entropy model: a small causal byte LM whose next-byte entropy places patches."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import kernels
from .config import EntropyConfig
from .layers import Block, RMSNorm
from .positions import AttnMask
from .tokens import N_IDS


def entropy_of_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dim (-inf logits contribute 0, not NaN).
    PyTorch, or one Triton pass on CUDA: kernels/entropy.py."""
    return kernels.logit_entropy(logits)


class EntropyModel(nn.Module):
    def __init__(self, cfg: EntropyConfig, eps: float = 1e-5, theta: float = 10000.0):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(N_IDS, cfg.dim)
        theta = cfg.rope_theta or theta
        self.layers = nn.ModuleList(Block(cfg.dim, cfg.n_heads, 8 / 3, theta, eps, ffn=cfg.ffn)
                                    for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, eps)
        self.head = nn.Linear(cfg.dim, N_IDS, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [B, L] -> logits [B, L, 260] for the byte after each position. (Decoding runs the
        same layers over a KV cache: decode/state.py.)"""
        B, L = ids.shape
        pos = torch.arange(L, device=ids.device).expand(B, L)
        x = self.emb(ids)
        causal = not 0 < self.cfg.window < L
        mask = None if causal else AttnMask.causal(pos, pos, self.cfg.window)  # the sliding window
        for layer in self.layers:
            x, _ = layer(x, pos, mask, is_causal=causal)
        return self.head(self.norm(x))

    @torch.no_grad()
    def entropies(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T] H where H[:, t] is the entropy of the prediction of byte t
        from bytes < t (H[:, 0] = 0: nothing predicts BOS)."""
        h = entropy_of_logits(self(ids))
        return torch.nn.functional.pad(h[:, :-1], (1, 0))
