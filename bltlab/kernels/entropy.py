"""Entropy, confidence and argmax of logit rows in one pass.

Patching (entropy of the next byte), BLT-D unmasking (max probability, or entropy for the
entropy-bounded rule) and greedy choice (argmax) all read the same [N, V] logits. The kernel
reads each row once with an online softmax: a running max m, s = sum exp(x - m) and
t = sum exp(x - m) (x - m), rescaled whenever m grows. Then
    entropy = log s - t / s  (nats),   max probability = 1 / s,   argmax = first index of m.
-inf logits (forbidden ids) contribute nothing, as in bltlab.entropy.entropy_of_logits.
Inference only (no backward). Rows whose logits are all -inf give NaN, like the reference.
"""
from __future__ import annotations

import os

import torch

from ._triton import tl, triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---- references ------------------------------------------------------------------------------
def entropy_reference(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dim (fp32)."""
    logp = logits.float().log_softmax(-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)  # -inf logits contribute 0, not NaN


def confidence_reference(logits: torch.Tensor):
    """(entropy, max probability, argmax) over the last dim."""
    return entropy_reference(logits), logits.float().softmax(-1).amax(-1), logits.argmax(-1)


# ---- kernel --------------------------------------------------------------------------------
@triton.jit
def _confidence_kernel(x_ptr, ent_ptr, conf_ptr, arg_ptr, V, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * stride
    m = tl.zeros([], dtype=tl.float32) - float("inf")  # running max
    s = tl.zeros([], dtype=tl.float32)  # sum exp(x - m)
    t = tl.zeros([], dtype=tl.float32)  # sum exp(x - m) * (x - m)
    best = tl.zeros([], dtype=tl.int32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        cm = tl.max(x, 0)
        best = tl.where(cm > m, start + tl.argmax(x, 0), best)  # strict: the first maximum wins
        m_new = tl.maximum(m, cm)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        finite = x != float("-inf")
        d = tl.where(finite, x - m_safe, 0.0)
        e = tl.where(finite, tl.exp(d), 0.0)
        a = tl.exp(m - m_safe)  # 0 while nothing finite was seen
        shift = tl.where(s > 0, m - m_safe, 0.0)
        t = a * (t + shift * s) + tl.sum(e * d, 0)
        s = a * s + tl.sum(e, 0)
        m = m_new
    tl.store(ent_ptr + row, tl.log(s) - t / s)
    tl.store(conf_ptr + row, 1.0 / s)
    tl.store(arg_ptr + row, best.to(tl.int64))


def confidence_triton(logits: torch.Tensor):
    """[..., V] logits (any float dtype) -> (entropy fp32, max probability fp32, argmax int64), [...]."""
    shape, V = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, V)
    if x.stride(-1) != 1:
        x = x.contiguous()
    N = x.shape[0]
    ent = torch.empty(N, dtype=torch.float32, device=x.device)
    conf = torch.empty_like(ent)
    arg = torch.empty(N, dtype=torch.int64, device=x.device)
    if N:
        _confidence_kernel[(N,)](x, ent, conf, arg, V, x.stride(0), BLOCK=min(triton.next_power_of_2(V), 4096))
    return ent.view(shape), conf.view(shape), arg.view(shape)
