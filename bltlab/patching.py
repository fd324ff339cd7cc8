"""Entropy patching (docs/model.md, "Patching"): per-byte entropies -> patch boundaries, batched and vectorised.

Conventions: `ids` [B, T] long, right-padded with PAD, position 0 is BOS. `entropy` [B, T] float,
entropy[:, t] = H_t = entropy (nats) of the predicted distribution of byte t given bytes < t
(entropy[:, 0] is unused). A boundary mask `starts` [B, T] bool is True where a new patch starts.

Every rule guarantees: starts[:, 0] (BOS opens patch 0), starts[:, 1] (BOS is a patch on its own),
no patch longer than max_patch bytes (if max_patch > 0), and no start at padded positions.
Rules (a start at t means byte t is the first byte of a new patch):
  global    H_t > θ
  relative  H_t - H_{t-1} > θ_r            (the paper's approximate monotonic constraint)
  fixed     t = 1, 1 + stride, 1 + 2*stride, ...
  space     byte t-1 is ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r) and byte t is not, so each
            patch is a word plus its trailing whitespace ("hi  there" -> "hi  " | "there")
"""
from __future__ import annotations

import math

import torch

from .config import PatchConfig
from .tokens import OFFSET, PAD

RULES = ("global", "relative", "fixed", "space")
WHITESPACE = b" \t\n\v\f\r"


def _valid(starts: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """[B, T] bool: positions inside each row (all of them when lengths is None)."""
    if lengths is None:
        return torch.ones_like(starts, dtype=torch.bool)
    pos = torch.arange(starts.shape[-1], device=starts.device)
    return pos[None, :] < torch.as_tensor(lengths, device=starts.device)[:, None]


def _check(cfg: PatchConfig) -> None:
    if cfg.rule not in RULES:
        raise ValueError(f"unknown patching rule {cfg.rule!r}; choose one of {RULES}")
    if not math.isfinite(cfg.threshold):
        raise ValueError(f"patch threshold must be finite, got {cfg.threshold}")
    if cfg.max_patch < 0:
        raise ValueError(f"max_patch must be >= 0 (0 = unlimited), got {cfg.max_patch}")
    if cfg.stride < 1:
        raise ValueError(f"stride must be >= 1, got {cfg.stride}")


def natural_starts(cfg: PatchConfig, pos: torch.Tensor, entropy_at, space_at) -> torch.Tensor:
    """The rule's own starts (before the max length): whether the byte at each of `pos` opens a
    patch. `entropy_at(p)` gives H_p and `space_at(p)` whether byte p is ASCII whitespace, at
    positions p >= 0 shaped like pos; a rule asks only for what it reads. One statement of the
    rules for every caller: whole sequences (`patch_starts`), a decoding pass over new bytes
    (decode/state.py) and a decoding step's last byte (kernels/step.py)."""
    prev = lambda: (pos - 1).clamp(min=0)  # noqa: E731 (byte 0 reads itself: it opens patch 0 anyway)
    if cfg.rule == "global":
        s = entropy_at(pos) > cfg.threshold
    elif cfg.rule == "relative":
        s = (entropy_at(pos) - entropy_at(prev())) > cfg.threshold
    elif cfg.rule == "fixed":
        s = (pos - 1) % cfg.stride == 0
    else:
        s = space_at(prev()) & ~space_at(pos)
    return s | (pos <= 1)  # BOS opens patch 0 and stands alone


def enforce_max_patch(starts: torch.Tensor, max_patch: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Force a start wherever the current patch already holds max_patch bytes (0 = no limit).

    The greedy sequential rule has a closed form: forced starts never move the natural ones, so
    inside a natural segment opened at s they fall exactly at s + m, s + 2m, ... Hence a start at t
    iff natural, or (t - last natural start) is a positive multiple of m. No loop over T needed.
    """
    if max_patch < 0:
        raise ValueError(f"max_patch must be >= 0 (0 = unlimited), got {max_patch}")
    valid = _valid(starts, lengths)
    starts = starts & valid
    if max_patch > 0:
        pos = torch.arange(starts.shape[-1], device=starts.device).expand_as(starts)
        last = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=-1).values
        starts = starts | ((pos - last) % max_patch == 0)
    return starts & valid


def patch_starts(entropy: torch.Tensor | None, ids: torch.Tensor, cfg: PatchConfig,
                 lengths: torch.Tensor | None = None, forced: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] bool patch-start mask for `cfg.rule` (entropy may be None for fixed/space).

    lengths defaults to the count of non-PAD ids per row (ids are right-padded). `forced`
    ([B, T] bool) adds starts the rule did not choose (diffusion blocks begin patches); the
    max-length rule then counts from them too.
    """
    _check(cfg)
    if ids.dim() != 2:
        raise ValueError(f"ids must be [B, T], got shape {tuple(ids.shape)}")
    if cfg.rule in ("global", "relative"):
        if entropy is None:
            raise ValueError(f"rule {cfg.rule!r} needs per-byte entropies, got entropy=None")
        if entropy.shape != ids.shape:
            raise ValueError(f"entropy shape {tuple(entropy.shape)} != ids shape {tuple(ids.shape)}")
    if lengths is None:
        lengths = (ids != PAD).sum(-1)
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device).expand(B, T)
    ws = torch.isin(ids, torch.tensor(list(WHITESPACE), device=ids.device) + OFFSET) if cfg.rule == "space" else None
    s = natural_starts(cfg, pos, lambda p: entropy.gather(1, p), lambda p: ws.gather(1, p))
    if forced is not None:
        s = s | forced
    return enforce_max_patch(s, cfg.max_patch, lengths)


def opens_patch(h_next: torch.Tensor, h_prev: torch.Tensor | None, t, cfg: PatchConfig) -> torch.Tensor:
    """Is byte t, not seen yet, known to open a patch? For the "hf" layout, whose decoder at t - 1
    reads the patch before byte t's. h_next = H_t, h_prev = H_{t-1} (same shape; t an int or a
    tensor of positions). As in transformers: bytes 0 and 1 always open one; otherwise the entropy
    rule decides, except with a max patch length, where transformers drops that (still empty)
    patch, so nothing is known before the byte arrives."""
    _check(cfg)
    if cfg.rule not in ("global", "relative"):
        raise ValueError(f"the 'hf' layout decides a patch before seeing its first byte, so it needs an "
                         f"entropy rule (global or relative), not {cfg.rule!r}")
    if cfg.max_patch > 0:
        s = torch.zeros_like(h_next, dtype=torch.bool)
    elif cfg.rule == "global":
        s = h_next > cfg.threshold
    else:
        s = (h_next - (h_next if h_prev is None else h_prev)) > cfg.threshold
    return s | (torch.as_tensor(t, device=h_next.device) <= 1)


def patch_ids(starts: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] long: index of the patch holding each byte (cumsum - 1); -1 at padded positions."""
    pid = starts.long().cumsum(-1) - 1
    return pid if lengths is None else pid.masked_fill(~_valid(starts, lengths), -1)


def num_patches(starts: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[B] long: patches per row."""
    return (starts & _valid(starts, lengths)).sum(-1)


def starts_to_spans(starts_row: torch.Tensor, length: int) -> list[tuple[int, int]]:
    """(start, end) half-open spans of one row's patches over its first `length` positions."""
    st = torch.nonzero(starts_row[:length]).flatten().tolist()
    if length > 0 and (not st or st[0] != 0):  # bytes before the first start form a patch
        st = [0] + st
    return list(zip(st, st[1:] + [length]))


def patch_lengths(starts: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[int]]:
    """Per row, the lengths of its patches (they sum to the row length)."""
    lens = [starts.shape[-1]] * starts.shape[0] if lengths is None else torch.as_tensor(lengths).tolist()
    return [[e - s for s, e in starts_to_spans(row, int(n))] for row, n in zip(starts, lens)]


def mean_patch_length(starts: torch.Tensor, lengths: torch.Tensor | None = None, skip_bos: bool = True) -> float:
    """Mean bytes per patch over the batch; skip_bos drops the BOS patch and byte (0.0 if no patches).
    Without `lengths` every position counts as a byte: give a padded batch its row lengths, or its PAD
    (a patch of its own, or the tail of the last) inflates the mean."""
    lens = torch.full((starts.shape[0],), starts.shape[-1], device=starts.device) if lengths is None \
        else torch.as_tensor(lengths, device=starts.device)
    n = num_patches(starts, lens)
    nbytes, npatch = lens.sum().item(), n.sum().item()
    if skip_bos:
        nbytes, npatch = nbytes - (lens > 0).sum().item(), npatch - (n > 0).sum().item()
    return nbytes / npatch if npatch > 0 else 0.0


def calibrate_threshold(entropy: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor | None,
                        target_mean: float = 4.0, rule: str = "global", max_patch: int = 8,
                        iters: int = 40) -> float:
    """θ for `rule` ("global" | "relative") so mean_patch_length (skip_bos) is close to target_mean.

    Raising θ only removes natural starts, and merging segments never adds forced ones, so the mean
    is non-decreasing in θ: bisect between a θ below every score (mean ~1) and one above all.
    """
    if rule not in ("global", "relative"):
        raise ValueError(f"calibrate_threshold supports rules 'global' and 'relative', got {rule!r}")
    if not target_mean >= 1 or (max_patch > 0 and target_mean > max_patch):
        raise ValueError(f"target_mean {target_mean} unreachable: must lie in [1, max_patch={max_patch}]")
    if lengths is None:
        lengths = (ids != PAD).sum(-1)
    valid = _valid(ids, lengths) & (torch.arange(ids.shape[-1], device=ids.device) >= 2)  # t = 0, 1 always start
    score = entropy if rule == "global" else torch.cat([entropy[:, :1], entropy.diff(dim=-1)], -1)
    finite = score[valid & torch.isfinite(score)]
    span = (finite.min().item() - 1.0, finite.max().item() + 1.0) if finite.numel() else (-1.0, 1.0)

    def mean_at(theta: float) -> float:
        cfg = PatchConfig(rule=rule, threshold=theta, max_patch=max_patch)
        return mean_patch_length(patch_starts(entropy, ids, cfg, lengths), lengths)

    lo, hi = span
    m_lo, m_hi = mean_at(lo), mean_at(hi)
    if not m_lo - 1e-9 <= target_mean <= m_hi + 1e-9:
        raise ValueError(f"target_mean {target_mean} unreachable on this data: means span [{m_lo:.3f}, {m_hi:.3f}]")
    for _ in range(iters):  # invariant: mean_at(lo) <= target <= mean_at(hi)
        mid = (lo + hi) / 2
        m = mean_at(mid)
        if m == target_mean:
            return mid
        lo, m_lo, hi, m_hi = (mid, m, hi, m_hi) if m < target_mean else (lo, m_lo, mid, m)
    return lo if target_mean - m_lo <= m_hi - target_mean else hi


def patch_bounds(pids: torch.Tensor, n_patches: int):
    """pids [B, T] (-1 = ignore) -> (first byte [B, P] (T when empty), size [B, P]); patches are contiguous."""
    B, T = pids.shape
    pos = torch.arange(T, device=pids.device).expand(B, T)
    idx = torch.where(pids < 0, n_patches, pids)  # ignored bytes go to a dump row
    first = torch.full((B, n_patches + 1), T, device=pids.device).scatter_reduce(1, idx, pos, "amin")
    size = torch.zeros(B, n_patches + 1, dtype=torch.long, device=pids.device).scatter_add(1, idx, torch.ones_like(idx))
    return first[:, :n_patches], size[:, :n_patches]


def patch_layout(h: torch.Tensor, pids: torch.Tensor, n_patches: int):
    """Each patch's bytes gathered: ([B, P, L, d] states, [B, P, L] valid), L = longest patch."""
    B, T, d = h.shape
    first, size = patch_bounds(pids, n_patches)
    L = max(int(size.max()), 1)
    where = (first[..., None] + torch.arange(L, device=h.device)).clamp(max=T - 1)  # [B, P, L]
    valid = torch.arange(L, device=h.device) < size[..., None]
    return h.gather(1, where.view(B, -1, 1).expand(-1, -1, d)).view(B, n_patches, L, d), valid
