"""The end of a static decoding step in one kernel: the position moves and the signal is set.

A static step (decode/static.py) ends with a dozen scalar-sized PyTorch ops per row, each its
own launch in a CUDA graph: after a pass over L bytes from t, every row takes its next id (the
prompt's while it lasts, else the greedy byte `nxt` after the pass) and the rows that move
advance t by L; then, after every step, the two numbers the host reads: byte t and whether it
opens a patch. That decision is patch_starts' rule at one position (patching.py): by entropy
("global", "relative"), every `stride` bytes ("fixed") or after whitespace ("space"), or a
forced start, or the open patch (from `cur`) reaching `max_patch` bytes. One program per row.
Inference only (no backward).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
RULES = ("global", "relative", "fixed", "space")  # the kernel's RULE: an index into this


def check_rule(rule: str) -> int:
    if rule not in RULES:
        raise ValueError(f"patch rule must be one of {RULES}, got {rule!r}")
    return RULES.index(rule)


# ---- reference -------------------------------------------------------------------------------
def step_end_reference(ids: torch.Tensor, t: torch.Tensor, signal: torch.Tensor, ent: torch.Tensor,
                       forced: torch.Tensor, cur: torch.Tensor, is_ws: torch.Tensor, rule: str, threshold: float,
                       stride: int, max_patch: int, advance=None) -> None:
    """In place. ids [B, T] long, t [B] long, signal [B, 2] long, ent [B, T + 1] fp32, forced [B, T]
    bool, cur [B] long, is_ws [V] bool (ids that are whitespace). advance: None, or (L, nxt [B] long,
    given [B, T] long, plen [B] long, move [B] bool): first ids[t + L] = given there if t + L < plen
    else nxt (every row), and t += L where move."""
    b = torch.arange(ids.shape[0], device=ids.device)
    if advance is not None:
        L, nxt, given, plen, move = advance
        t1 = t + L
        ids[b, t1] = torch.where(t1 < plen, given[b, t1], nxt)
        t.add_(move, alpha=L)
    check_rule(rule)
    if rule == "global":
        nat = ent[b, t] > threshold
    elif rule == "fixed":
        nat = (t - 1) % stride == 0
    else:
        prev = (t - 1).clamp(min=0)
        if rule == "relative":
            nat = (ent[b, t] - ent[b, prev]) > threshold
        else:
            nat = is_ws[ids[b, prev]] & ~is_ws[ids[b, t]]
    nat = nat | forced[b, t]
    if max_patch > 0:  # cur < t <= cur + max_patch unless t starts a patch already
        nat = nat | (t - cur == max_patch)
    signal[:, 0] = ids[b, t]
    signal[:, 1] = nat


# ---- kernel --------------------------------------------------------------------------------
@triton.jit
def _step_end(ids_ptr, t_ptr, sig_ptr, ent_ptr, forced_ptr, cur_ptr, ws_ptr, nxt_ptr, given_ptr, plen_ptr,
              move_ptr, s_ids, s_ent, s_forced, s_given, s_nxt, L, threshold, stride, max_patch,
              RULE: tl.constexpr, ADVANCE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    row = ids_ptr + b * s_ids
    t = tl.load(t_ptr + b)
    if ADVANCE:
        t1 = t + L
        given = tl.load(given_ptr + b * s_given + t1)
        tl.store(row + t1, tl.where(t1 < tl.load(plen_ptr + b), given, tl.load(nxt_ptr + b * s_nxt)))
        t += tl.load(move_ptr + b).to(tl.int64) * L
        tl.store(t_ptr + b, t)
    byte = tl.load(row + t)
    prev = tl.maximum(t - 1, 0)
    if RULE == 0:
        nat = tl.load(ent_ptr + b * s_ent + t) > threshold
    elif RULE == 1:
        nat = (tl.load(ent_ptr + b * s_ent + t) - tl.load(ent_ptr + b * s_ent + prev)) > threshold
    elif RULE == 2:
        nat = (t - 1) % stride == 0  # (-1) % stride is 0 for stride 1 only, with C's % as with Python's
    else:
        nat = (tl.load(ws_ptr + tl.load(row + prev)) != 0) & (tl.load(ws_ptr + byte) == 0)
    nat = nat | (tl.load(forced_ptr + b * s_forced + t) != 0)
    if max_patch > 0:
        nat = nat | (t - tl.load(cur_ptr + b) == max_patch)
    tl.store(sig_ptr + 2 * b, byte)
    tl.store(sig_ptr + 2 * b + 1, nat.to(tl.int64))


def step_end_triton(ids: torch.Tensor, t: torch.Tensor, signal: torch.Tensor, ent: torch.Tensor,
                    forced: torch.Tensor, cur: torch.Tensor, is_ws: torch.Tensor, rule: str, threshold: float,
                    stride: int, max_patch: int, advance=None) -> None:
    """step_end_reference in one launch (every tensor as there; rows may be strided, t, cur, signal
    and the advance's plen and move contiguous)."""
    code = check_rule(rule)
    L, nxt, given, plen, move = advance if advance is not None else (0, t, ids, t, t)
    as_u8 = lambda x: x.view(torch.uint8) if x.dtype == torch.bool else x
    _step_end[(ids.shape[0],)](ids, t, signal, ent, as_u8(forced), cur, as_u8(is_ws), nxt, given, plen, as_u8(move),
                               ids.stride(0), ent.stride(0), forced.stride(0), given.stride(0), nxt.stride(0), L,
                               float(threshold), int(stride), int(max_patch), RULE=code, ADVANCE=advance is not None)
