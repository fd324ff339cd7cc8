"""The ends of static decoding steps, each in one kernel where PyTorch takes a dozen or more
small operations (each its own launch in a CUDA graph). One program per row; inference only.

`step_end`: after a decoder pass over L bytes from t, the greedy byte after each (kept in
`pred`), then every row takes its next id (the prompt's while it lasts, else the greedy byte
after the pass) and the rows that move advance t by L; then, after every step but a draft's,
the two numbers the host reads: byte t and whether it opens a patch (logged in `olog` too).
That decision is patch_starts' rule at one position (patching.py): by entropy ("global",
"relative"), every `stride` bytes ("fixed") or after whitespace ("space"), or a forced start,
or the open patch (from `cur`) reaching `max_patch` bytes.

`denoise_end`: after a denoising pass over a block of L <= 16 slots, BLT-D's unmasking rule
(`unmask_rule`: the slots above confidence α, or the longest prefix by entropy within the
bound γ; with `in_order`, only a left-to-right run of them) and its bookkeeping: the chosen slots take their greedy ids, the step and scores are
logged, and the masked slots left are counted (the number the host reads).
"""
from __future__ import annotations

import os

import torch

from ..config import PatchConfig
from ..patching import natural_starts
from ..tokens import MASK
from ._triton import tl, triton
from .entropy import confidence_reference

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
RULES = ("global", "relative", "fixed", "space")  # the kernel's RULE: an index into this


def check_rule(rule: str) -> int:
    if rule not in RULES:
        raise ValueError(f"patch rule must be one of {RULES}, got {rule!r}")
    return RULES.index(rule)


def sum_less_max(x: torch.Tensor) -> torch.Tensor:
    """[..., L] float32 -> each prefix's sum less its largest term, for BLT-D's γ rule (the unmasking
    rule's reference and kernel below): accumulated in float64 and rounded once per prefix on every
    device (torch.cumsum adds float32 in float64 on a CPU but in float32 on a GPU, which could move
    a sum by an ulp across γ). In ascending order the largest term is the last one."""
    return x.double().cumsum(-1).float() - x.cummax(-1).values


# ---- reference -------------------------------------------------------------------------------
def step_end_reference(ids: torch.Tensor, t: torch.Tensor, signal: torch.Tensor | None, olog: torch.Tensor | None,
                       ent: torch.Tensor, forced: torch.Tensor, cur: torch.Tensor, is_ws: torch.Tensor, rule: str,
                       threshold: float, stride: int, max_patch: int, advance=None) -> None:
    """In place. ids [B, T] long, t [B] long, signal [B, 2] long and olog [B, T] bool (None: both
    left alone; else signal = (ids[t], opens) and olog[t] = opens), ent [B, T + 1] fp32, forced
    [B, T] bool, cur [B] long, is_ws [V] bool (ids that are whitespace). advance: None,
    or after a decoder pass over L bytes from t, (logits [B, L, V], forbid [V] fp32 (0 or -inf),
    keep [B, V], pred [B, T] long, given [B, T] long, plen [B] long, move [B] bool): each position's
    greedy id (argmax of logits + forbid, the first maximum) goes to pred at t + j, the last logits
    to keep where move; then where move, ids[t + L] = given there if t + L < plen else the last greedy
    id, and t += L (a row that waits keeps its ids: a block of its own may lie there)."""
    b = torch.arange(ids.shape[0], device=ids.device)
    check_rule(rule)
    if advance is not None:
        logits, forbid, keep, pred, given, plen, move = advance
        L = logits.shape[1]
        greedy = (logits.float() + forbid).argmax(-1)  # [B, L]
        pred[b[:, None], t[:, None] + torch.arange(L, device=t.device)] = greedy
        # waiting rows keep theirs (detached: an out= op takes no input that needs a gradient)
        torch.where(move[:, None], logits[:, -1].detach(), keep, out=keep)
        t1 = t + L
        ids[b, t1] = torch.where(move, torch.where(t1 < plen, given[b, t1], greedy[:, -1]), ids[b, t1])
        t.add_(move, alpha=L)
    if signal is None:
        return
    cfg = PatchConfig(rule=rule, threshold=threshold, max_patch=max_patch, stride=stride)
    nat = natural_starts(cfg, t, lambda p: ent[b, p], lambda p: is_ws[ids[b, p]]) | forced[b, t]
    if max_patch > 0:  # cur < t <= cur + max_patch unless t starts a patch already
        nat = nat | (t - cur == max_patch)
    signal[:, 0] = ids[b, t]
    signal[:, 1] = nat
    olog[b, t] = nat


# ---- kernel --------------------------------------------------------------------------------
@triton.jit
def _step_end(ids_ptr, t_ptr, sig_ptr, olog_ptr, ent_ptr, forced_ptr, cur_ptr, ws_ptr, x_ptr, forbid_ptr, keep_ptr,
              pred_ptr, given_ptr, plen_ptr, move_ptr, s_ids, s_olog, s_ent, s_forced, s_xb, s_xl, s_keep, s_pred,
              s_given, L, V, threshold, stride, max_patch, RULE: tl.constexpr, ADVANCE: tl.constexpr,
              SIGNAL: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    row = ids_ptr + b * s_ids
    t = tl.load(t_ptr + b)
    if ADVANCE:
        v = tl.arange(0, BLOCK_V)
        inside = v < V
        forbid = tl.load(forbid_ptr + v, mask=inside, other=float("-inf"))
        nxt = tl.zeros([], dtype=tl.int64)
        for j in range(L):
            x = tl.load(x_ptr + b * s_xb + j * s_xl + v, mask=inside, other=float("-inf")).to(tl.float32)
            nxt = tl.argmax(x + forbid, 0).to(tl.int64)  # the first maximum, as torch.argmax
            tl.store(pred_ptr + b * s_pred + t + j, nxt)
        moves = tl.load(move_ptr + b).to(tl.int32)  # 0 or 1
        last = tl.load(x_ptr + b * s_xb + (L - 1) * s_xl + v, mask=inside)
        tl.store(keep_ptr + b * s_keep + v, last, mask=v < V * moves)
        t1 = t + L
        new = tl.where(t1 < tl.load(plen_ptr + b), tl.load(given_ptr + b * s_given + t1), nxt)
        tl.store(row + t1, new, mask=moves != 0)
        t += moves * L
        tl.store(t_ptr + b, t)
        # byte t: the id just stored where the row moved (not read back: other threads of the
        # program need not see that store yet), else the one that was there
        byte = tl.where(moves != 0, new, tl.load(row + t, mask=moves == 0, other=0))
    else:
        byte = tl.load(row + t)
    if SIGNAL:
        prev = tl.maximum(t - 1, 0)
        if RULE == 0:
            nat = tl.load(ent_ptr + b * s_ent + t) > threshold
        elif RULE == 1:
            nat = (tl.load(ent_ptr + b * s_ent + t) - tl.load(ent_ptr + b * s_ent + prev)) > threshold
        elif RULE == 2:
            nat = (t - 1) % stride == 0  # (-1) % stride is 0 for stride 1 only, with C's % as with Python's
        else:
            nat = (tl.load(ws_ptr + tl.load(row + prev)) != 0) & (tl.load(ws_ptr + byte) == 0)
        nat = nat | (t <= 1) | (tl.load(forced_ptr + b * s_forced + t) != 0)  # patching.natural_starts' rules
        if max_patch > 0:
            nat = nat | (t - tl.load(cur_ptr + b) == max_patch)
        tl.store(sig_ptr + 2 * b, byte)
        tl.store(sig_ptr + 2 * b + 1, nat.to(tl.int64))
        tl.store(olog_ptr + b * s_olog + t, nat.to(tl.uint8))


def step_end_triton(ids: torch.Tensor, t: torch.Tensor, signal: torch.Tensor | None, olog: torch.Tensor | None,
                    ent: torch.Tensor, forced: torch.Tensor, cur: torch.Tensor, is_ws: torch.Tensor, rule: str,
                    threshold: float, stride: int, max_patch: int, advance=None) -> None:
    """step_end_reference in one launch (every tensor as there; rows may be strided, the logits'
    and keep's last dim, t, cur, signal, forbid and the advance's plen and move contiguous)."""
    code = check_rule(rule)
    if advance is None:
        logits = keep = pred = given = plen = move = forbid = t  # unread
        L = V = 1
        strides = (0,) * 5
    else:
        logits, forbid, keep, pred, given, plen, move = advance
        L, V = logits.shape[1:]
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        strides = (logits.stride(0), logits.stride(1), keep.stride(0), pred.stride(0), given.stride(0))
    as_u8 = lambda x: x.view(torch.uint8) if x.dtype == torch.bool else x
    signals = signal is not None
    if not signals:
        signal = olog = t  # unread
    _step_end[(ids.shape[0],)](ids, t, signal, as_u8(olog), ent, as_u8(forced), cur, as_u8(is_ws), logits, forbid,
                               keep, pred, given, plen, as_u8(move), ids.stride(0), olog.stride(0), ent.stride(0),
                               forced.stride(0), *strides, L, V, float(threshold), int(stride), int(max_patch),
                               RULE=code, ADVANCE=advance is not None, SIGNAL=signals,
                               BLOCK_V=triton.next_power_of_2(V))


# ---- the end of a denoising step ---------------------------------------------------------------
def unmask_rule(logits: torch.Tensor, masked: torch.Tensor, knob: torch.Tensor, by_entropy: bool,
                in_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLT-D's unmasking rule (decode/diffusion.py) for a batch. logits: [B, L, V] (allowed, float32),
    masked: [B, L] bool, knob: [B] float64 (α, or γ with by_entropy). The masked slots are listed
    by entropy for γ, by slot with in_order, and the rule takes a prefix of that list, at least its
    first slot: by γ the longest whose entropy sum less its largest term stays below γ; by α in
    order, the run of slots above α (Fast-dLLM's threshold rule, left to right). In order, "at
    least one" holds only while no slot is filled: a block with a filled slot may get none, and
    then ends there (decode/diffusion.py). By α otherwise it takes every slot above α, wherever it
    lies, at least the most confident. Returns the chosen
    slots [B, L] bool, each slot's order [B, L] in the list, and the entropy and confidence [B, L]
    of every slot (tests/test_state.py: `choose_unmask`, the rule on one block's list of slots, is
    its oracle)."""
    ent, conf, _ = confidence_reference(logits)
    slot = torch.arange(masked.shape[1], device=masked.device).expand_as(masked)
    if by_entropy or in_order:
        order = (slot.float() if in_order else ent).masked_fill(~masked, float("inf")).argsort(dim=1, stable=True)
        listed = slot < masked.sum(1, keepdim=True)  # the list's masked slots come first
        if by_entropy:
            fits = sum_less_max(ent.masked_fill(~masked, float("inf")).gather(1, order)) < knob[:, None].float()
        else:  # conf compared in float64, as Python compares
            fits = (conf.double() > knob[:, None]).gather(1, order)
        fits &= listed
        n = fits.long().cumprod(1).sum(1) if in_order else fits.sum(1)  # (sums by entropy only grow)
        least = masked.all(1).long() if in_order else 1  # in order: none once a slot is filled
        n = torch.where(knob > 0, n.clamp(min=least), least) if by_entropy else n.clamp(min=least)
        rank = torch.empty_like(order).scatter_(1, order, slot)
        return masked & (rank < n[:, None]), rank, ent, conf
    chosen = masked & (conf.double() > knob[:, None])
    best = conf.masked_fill(~masked, float("-inf")).argmax(1, keepdim=True)
    return chosen | (masked & (slot == best) & ~chosen.any(1, keepdim=True)), slot, ent, conf


def denoise_end_reference(logits: torch.Tensor, forbid: torch.Tensor, noisy: torch.Tensor, ids: torch.Tensor,
                          t: torch.Tensor, move: torch.Tensor, knob: torch.Tensor, by_entropy: bool,
                          nstep: torch.Tensor, filled: torch.Tensor, scores: torch.Tensor, left: torch.Tensor,
                          in_order: bool = False) -> None:
    """In place, after a denoising pass over the blocks at t: logits [B, L, V] of the block's slots
    (forbid [V]: 0 or -inf, added first), noisy [B, L] long (MASK where not filled yet), ids
    [B, T] long, t [B] long, move [B] bool (rows that take part), knob [B] float64. The slots
    `unmask_rule` chooses take their greedy ids in noisy and in ids at t + slot; filled [B, 2, >= L]
    long logs (step, order) and scores [B, 2, >= L] fp32 (confidence, entropy) for them; nstep [B]
    counts the passes of rows that had a masked slot; left [B]: masked slots left."""
    B, L = noisy.shape
    logits = logits.float() + forbid
    masked = noisy == MASK
    chosen, order, ent, conf = unmask_rule(logits, masked & move[:, None], knob, by_entropy, in_order)
    pick = logits.argmax(-1)
    b, pos = torch.arange(B, device=ids.device)[:, None], t[:, None] + torch.arange(L, device=ids.device)
    ids[b, pos] = torch.where(chosen, pick, ids[b, pos])  # never a MASK
    noisy.copy_(torch.where(chosen, pick, noisy))
    log = torch.stack((nstep[:, None].expand(-1, L), order), 1)
    filled[..., :L] = torch.where(chosen[:, None], log, filled[..., :L])
    scores[..., :L] = torch.where(chosen[:, None], torch.stack((conf, ent), 1), scores[..., :L])
    nstep += masked.any(1)
    left.copy_((noisy == MASK).sum(1))


@triton.jit
def _denoise_end(x_ptr, forbid_ptr, noisy_ptr, ids_ptr, t_ptr, move_ptr, knob_ptr, nstep_ptr, filled_ptr,
                 scores_ptr, left_ptr, L, V, s_xb, s_xl, s_noisy, s_ids, s_fb, s_fk, s_sb, s_sk, MASK_ID,
                 BY_ENTROPY: tl.constexpr, IN_ORDER: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK_L)
    v = tl.arange(0, BLOCK_V)
    inside = j < L
    x = tl.load(x_ptr + b * s_xb + j[:, None] * s_xl + v[None, :], mask=inside[:, None] & (v < V)[None, :],
                other=float("-inf")).to(tl.float32)
    x = x + tl.load(forbid_ptr + v, mask=v < V, other=0.0)[None, :]
    # entropy, max probability and argmax of each slot, as entropy._confidence_kernel computes them
    m = tl.max(x, 1)
    pick = tl.argmax(x, 1)  # the first maximum
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    finite = x != float("-inf")
    d = tl.where(finite, x - m_safe[:, None], 0.0)
    e = tl.where(finite, tl.exp(d), 0.0)
    s = tl.where(inside, tl.sum(e, 1), 1.0)  # >= 1 in a slot (its max counts 1); padding: 1
    ent = tl.log(s) - tl.sum(e * d, 1) / s
    conf = 1.0 / s
    noisy = tl.load(noisy_ptr + b * s_noisy + j, mask=inside, other=0)
    was = inside & (noisy == MASK_ID)
    masked = was & (tl.load(move_ptr + b) != 0)
    knob = tl.load(knob_ptr + b)
    if BY_ENTROPY or IN_ORDER:
        # each slot's rank in a stable sort of the masked slots by entropy (IN_ORDER: by slot), the
        # unmasked ones last (as +inf)
        if IN_ORDER:
            h = tl.where(masked, 0.0, float("inf"))
        else:
            h = tl.where(masked, ent, float("inf"))
        hi, hk = h[:, None], h[None, :]
        before = (hk < hi) | ((hk == hi) & (j[None, :] < j[:, None]))
        order = tl.sum(before.to(tl.int64), 1)
        n_masked = tl.sum(masked.to(tl.int64))
        if BY_ENTROPY:
            # the prefix sums and maxima by rank, accumulated one rank at a time in float64 (as
            # `sum_less_max`); the unmasked slots, ranked last, add 0 (their sums are not used)
            h = tl.where(masked, ent, 0.0)
            acc = tl.zeros([], dtype=tl.float64)
            top = tl.zeros([], dtype=tl.float32) - float("inf")
            csum = tl.zeros([BLOCK_L], dtype=tl.float32)
            cmax = tl.zeros([BLOCK_L], dtype=tl.float32)
            for p in tl.static_range(BLOCK_L):
                hp = tl.sum(tl.where(order == p, h, 0.0))
                acc += hp.to(tl.float64)
                top = tl.maximum(top, hp)
                csum = tl.where(order == p, acc.to(tl.float32), csum)
                cmax = tl.where(order == p, top, cmax)
            fits = ((csum - cmax) < knob.to(tl.float32)) & (order < n_masked)
        else:
            fits = (conf.to(tl.float64) > knob) & (order < n_masked)
        if IN_ORDER:  # the leading run of the list: up to the first slot that does not pass
            n = tl.minimum(tl.min(tl.where(fits | (order >= n_masked), BLOCK_L, order), 0), n_masked)
        else:
            n = tl.sum(fits.to(tl.int64))
        if IN_ORDER:  # at least one only while no slot is filled
            least = (n_masked == tl.sum(inside.to(tl.int64))).to(tl.int64)
        else:
            least = 1
        if BY_ENTROPY:
            n = tl.where(knob > 0, tl.maximum(n, least), least)
        else:
            n = tl.maximum(n, least)
        chosen = (masked.to(tl.int32) & (order < n).to(tl.int32)) != 0  # (the interpreter wants int1 here)
    else:
        order = j.to(tl.int64)
        chosen = masked & (conf.to(tl.float64) > knob)
        best = tl.argmax(tl.where(masked, conf, float("-inf")), 0)
        fallback = masked & (j == best) & (tl.max(chosen.to(tl.int32), 0) == 0)
        chosen = (chosen.to(tl.int32) | fallback.to(tl.int32)) != 0  # (as above)
    t = tl.load(t_ptr + b)
    pick = pick.to(tl.int64)
    tl.store(ids_ptr + b * s_ids + t + j, pick, mask=chosen)
    tl.store(noisy_ptr + b * s_noisy + j, pick, mask=chosen)
    nstep = tl.load(nstep_ptr + b)
    tl.store(filled_ptr + b * s_fb + j, tl.zeros([BLOCK_L], dtype=tl.int64) + nstep, mask=chosen)
    tl.store(filled_ptr + b * s_fb + s_fk + j, order, mask=chosen)
    tl.store(scores_ptr + b * s_sb + j, conf, mask=chosen)
    tl.store(scores_ptr + b * s_sb + s_sk + j, ent, mask=chosen)
    tl.store(nstep_ptr + b, nstep + (tl.max(was.to(tl.int64), 0) > 0).to(tl.int64))
    tl.store(left_ptr + b, tl.sum((was & ~chosen).to(tl.int64)))


def denoise_end_triton(logits: torch.Tensor, forbid: torch.Tensor, noisy: torch.Tensor, ids: torch.Tensor,
                       t: torch.Tensor, move: torch.Tensor, knob: torch.Tensor, by_entropy: bool,
                       nstep: torch.Tensor, filled: torch.Tensor, scores: torch.Tensor, left: torch.Tensor,
                       in_order: bool = False) -> None:
    """denoise_end_reference in one launch (a program per row; noisy, filled and scores with their
    last dim contiguous)."""
    B, L = noisy.shape
    V = logits.shape[-1]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    _denoise_end[(B,)](logits, forbid, noisy, ids, t, move.view(torch.uint8), knob, nstep, filled, scores, left, L,
                       V, logits.stride(0), logits.stride(1), noisy.stride(0), ids.stride(0), filled.stride(0),
                       filled.stride(1), scores.stride(0), scores.stride(1), MASK, BY_ENTROPY=by_entropy, IN_ORDER=in_order,
                       BLOCK_L=triton.next_power_of_2(L), BLOCK_V=triton.next_power_of_2(V))
