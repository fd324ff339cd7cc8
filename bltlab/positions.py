"""Where a query may look, and how a position turns a vector: the attention mask rule (`causal_mask`,
`AttnMask`, which the attention kernel computes on the fly) and RoPE (`rope`, `rotate`). Below both
layers.py and the kernels, which use them."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def rope_angles(pos: torch.Tensor, hd: int, theta: float) -> torch.Tensor:
    """RoPE's angles [..., hd/2] at integer positions pos [...]."""
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, device=pos.device, dtype=torch.float32) / hd)
    return pos.float()[..., None] * inv


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding. x: [B, H, L, hd], pos: [B, L] (any integer positions)."""
    ang = rope_angles(pos, x.shape[-1], theta)[:, None]  # [B, 1, L, hd/2]
    return rotate(x, ang.cos(), ang.sin())


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation of x [..., hd] by angles given as cos/sin [..., hd/2] (broadcast)."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int = 0) -> torch.Tensor:
    """[B, 1, Lq, Lk] bool: key position <= query position (and within `window` if > 0)."""
    d = q_pos[:, None, :, None] - k_pos[:, None, None, :]
    m = d >= 0
    if window > 0:
        m &= d < window
    return m


@dataclass(eq=False)
class AttnMask:
    """An attention mask given by positions and block ids, so a kernel can compute it on the fly.

    Query i may attend key j when
      key j is clean (k_blk = -1), k_pos[j] <= q_lim[i] and (window = 0 or q_pos[i] - k_pos[j] < window),
      or key j is in the query's own noisy block (k_blk[j] == q_blk[i] >= 0).
    Clean queries have q_lim = q_pos and q_blk = -1 (causal, sliding window); a noisy block at s has
    q_lim = s - 1 (the clean prefix before it). Keys with k_blk < -1 are never read (padding).
    Tensors are long, [B or 1, Lq] for q_*, [B or 1, Lk] for k_*."""

    q_pos: torch.Tensor
    q_lim: torch.Tensor
    q_blk: torch.Tensor
    k_pos: torch.Tensor
    k_blk: torch.Tensor
    window: int = 0
    _dense: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def causal(cls, q_pos: torch.Tensor, k_pos: torch.Tensor, window: int = 0) -> "AttnMask":
        """Key position <= query position (and within `window` if > 0): causal_mask's rule."""
        return cls(q_pos, q_pos, torch.full_like(q_pos, -1), k_pos, torch.full_like(k_pos, -1), window)

    def dense(self) -> torch.Tensor:
        """[B or 1, 1, Lq, Lk] bool (True = may attend), built once."""
        if self._dense is None:
            kb, kp = self.k_blk[:, None, :], self.k_pos[:, None, :]
            clean = (kb == -1) & (kp <= self.q_lim[:, :, None])
            if self.window > 0:
                clean &= self.q_pos[:, :, None] - kp < self.window
            own = (kb >= 0) & (kb == self.q_blk[:, :, None])
            self._dense = (clean | own)[:, None]
        return self._dense


class CacheMasks:
    """Additive attention masks (0: may read, -inf: may not) over static caches of S keys at positions
    0 .. S - 1, for queries at any positions: gathered from tables built once, so that a decoding pass
    builds no mask of its own and a CUDA graph replays the gather. Two rules:
      - `causal`: causal_mask's rule (key <= query, within a window), by the offset q - k;
      - `block`: a noisy block at t (AttnMask's rule): slot i reads the clean keys before t within the
        local window and the whole block (whose keys lie less than size <= max_block < local_window
        behind any of its queries, or ahead)."""

    def __init__(self, T: int, S: int, windows: set[int], local_window: int, max_block: int, like: torch.Tensor):
        dev = like.device
        self.bias = like.new_tensor([0.0, float("-inf")])  # [allowed, forbidden]
        keys = torch.arange(S, device=dev)
        self.back = S - 1 - keys  # index of the offset q - k in a band: q + back[k]
        off = torch.arange(1 - S, T, device=dev)  # q - k
        self.bands = {w: self.additive((off >= 0) & ((off < w) | (w == 0))) for w in windows}
        d = torch.arange(S + T, device=dev) - T  # k - t
        self.slots = torch.arange(max_block, device=dev)
        i = self.slots[:, None]
        self.blocks = self.additive((d < i[:, None] + 1) & (i - d < local_window))  # [size - 1, i, T + k - t]
        self.koff = keys + T  # koff - t: a key's index in `blocks`

    def additive(self, allow: torch.Tensor) -> torch.Tensor:
        """A bool mask in additive form (what attention adds: built once per pass, where a bool mask
        would be converted in every layer)."""
        return torch.where(allow, self.bias[0], self.bias[1])

    def causal(self, pos: torch.Tensor, *windows: int) -> list[torch.Tensor]:
        """[B, 1, L, S] for queries at pos [B, L], one per window (0: none)."""
        at = (pos[..., None] + self.back)[:, None]
        return [self.bands[w][at] for w in windows]

    def block(self, t: torch.Tensor, size: int) -> torch.Tensor:
        """[B, 1, size, S] for the blocks of `size` at t [B]."""
        return self.blocks[size - 1][self.slots[:size, None], (self.koff - t[:, None])[:, None]][:, None]
