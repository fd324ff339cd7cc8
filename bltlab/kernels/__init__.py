"""Triton kernels behind one switch, each next to the pure-PyTorch reference it must equal.

The library calls the ops below (`rms_norm`, `swiglu`, `norm_linear`, `norm_qkv`, `logit_entropy`,
`confidence`, `hash_embedding`, `patch_max`, `attend`, `step_end`, `denoise_end`; named apart
from the modules that hold them). Each op sends its tensors either to the reference (the exact
PyTorch code the model always ran) or to a Triton kernel. The backend:

- `auto` (default): Triton for CUDA tensors, the reference otherwise, so a CPU run computes
  bit for bit what it computed before the kernels existed; except the ops in `AUTO_REFERENCE`,
  whose kernel measured slower than the reference on the GPU (benchmarks/gpu/kernels.md), and
  everything where Triton is not installed (it has Linux wheels only: `has_triton()`);
- `triton`: always Triton; on CPU tensors this needs Triton's interpreter
  (`TRITON_INTERPRET=1`, set before the first kernel module is imported: it decides at
  definition time whether a kernel is compiled or interpreted), else a clear error, as
  without Triton;
- `reference`: always PyTorch.

Pick it with `set_backend(name)`, the context manager `backend(name)`, or the environment
variable `BLTLAB_KERNELS` (read once at import). One module per kernel: entropy.py,
hash_embed.py, pooling.py, norm_ffn.py, norm_proj.py, attention.py, step.py; bltlab/bench_kernels.py times
them, compile_check.py compiles them for a GPU without one (docs/kernels.md). They take Triton
from _triton.py, which stands in for it where it is not installed, so that the references, which
live beside the kernels, import everywhere; Triton itself is imported only with them.
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "triton", "reference")
# 'auto' runs these on PyTorch on a GPU too: the block-diffusion attention kernel took 2.2-2.7x
# the time of PyTorch's fused attention on an H100, forward and backward (benchmarks/gpu/kernels.md)
AUTO_REFERENCE = frozenset({"attention"})


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {name!r}")
    return name


_backend = _check(os.environ.get("BLTLAB_KERNELS", "auto").strip().lower() or "auto")


def set_backend(name: str) -> None:
    """Choose the backend for the whole process: 'auto', 'triton' or 'reference'."""
    global _backend
    _backend = _check(name)


def get_backend() -> str:
    return _backend


@contextmanager
def backend(name: str):
    """`with kernels.backend("reference"): ...` — the backend for a block, restored afterwards."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_triton() -> bool:
    """Whether Triton could be imported. Asking imports it (through _triton.py), as the first
    kernel module does anyway, and is answered from _LOADED afterwards."""
    return _module("_triton", False).HAS_TRITON


def require_triton() -> None:
    """Raise the one clear error (Triton is Linux-only) where Triton is not installed."""
    if not has_triton():
        raise RuntimeError(_module("_triton", False).MISSING)


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors goes to its Triton kernel under the current backend."""
    if _backend == "reference":
        return False
    on_gpu = all(t.is_cuda for t in tensors)
    if _backend == "auto":
        return on_gpu and has_triton()  # a GPU without Triton (e.g. Windows + CUDA) runs the references
    require_triton()
    if not on_gpu and not interpreting():
        raise RuntimeError("kernel backend 'triton' was asked for on CPU tensors, but Triton can only run them "
                           "in its interpreter: set TRITON_INTERPRET=1 in the environment before bltlab is "
                           "imported, or use backend 'auto' / 'reference' (BLTLAB_KERNELS)")
    return True


_LOADED: dict = {}  # kernel modules imported so far (a dict lookup, which torch.compile traces)


def _module(name: str, on_cpu: bool):
    """Import a kernel module on first use (it imports triton, or its stand-in, and defines its kernels)."""
    mod = _LOADED.get(name)
    if mod is None:
        mod = _LOADED[name] = importlib.import_module(f"{__name__}.{name}")
    if on_cpu and not getattr(mod, "INTERPRETED", False):
        raise RuntimeError(f"bltlab.kernels.{name} defined its kernels before TRITON_INTERPRET=1 was set, so "
                           "they cannot run on CPU tensors: set the variable before importing bltlab")
    return mod


def _pick(name: str, *tensors: torch.Tensor):
    """(module, use the Triton path?) for an op on `tensors` (a kernel module's name)."""
    fast = use_triton(*tensors) and not (_backend == "auto" and name in AUTO_REFERENCE)
    return _module(name, fast and not tensors[0].is_cuda), fast


def _forward_only(*tensors) -> bool:
    """Whether a forward-only kernel may take these (tensors, None or tuples of tensors): no gradient
    is asked of them."""
    flat = [u for t in tensors for u in (t if isinstance(t, tuple) else (t,)) if u is not None]
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in flat))


# ---- the ops the library calls --------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """RMSNorm of x (or of x + residual, returned too): see norm_ffn.rms_norm_reference."""
    mod, fast = _pick("norm_ffn", x, weight)
    return (mod.rms_norm_triton if fast else mod.rms_norm_reference)(x, weight, eps, residual)


def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                residual: torch.Tensor | tuple | None = None, swiglu: bool = False):
    """(x + residual or x, the projection `weight` of its RMSNorm; with swiglu, silu(gate) * up of
    weight = [gate; up]): see norm_proj.norm_linear_reference. residual: a tensor like x, or (h, P)
    for h @ P.T, computed inside the kernel. The kernel is forward only, so a call that needs a
    gradient goes to the reference."""
    mod, fast = _pick("norm_proj", x, weight)
    fast = fast and _forward_only(x, norm_weight, weight, residual)
    fn = mod.norm_linear_triton if fast else mod.norm_linear_reference
    return fn(x, norm_weight, eps, weight, residual, swiglu)


def norm_qkv(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
             residual: torch.Tensor | tuple | None, rot: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor,
             rows: torch.Tensor):
    """Self-attention's input side in decoding: norm_linear's (s, query|key|value) with RoPE on the
    queries and keys at positions pos [B, L] (rot [T, hd/2, 2]: cos, sin of each position's
    angles), the keys and values written into the cache kv [2, B', H, S, hd] at rows [B] and
    positions pos; returns (s, queries [B, H, L, hd]):
    see norm_proj.norm_qkv_reference. Forward only, as norm_linear."""
    mod, fast = _pick("norm_proj", x, weight)
    fast = fast and _forward_only(x, norm_weight, weight, residual)
    fn = mod.norm_qkv_triton if fast else mod.norm_qkv_reference
    return fn(x, norm_weight, eps, weight, residual, rot, pos, kv, rows)


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b, the SwiGLU activation."""
    mod, fast = _pick("norm_ffn", a, b)
    return (mod.swiglu_triton if fast else mod.swiglu_reference)(a, b)


def logit_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax over the last dim; -inf logits count 0."""
    mod, fast = _pick("entropy", logits)
    return mod.confidence_triton(logits)[0] if fast else mod.entropy_reference(logits)


def confidence(logits: torch.Tensor):
    """(entropy, max probability, argmax) over the last dim, in one pass on the Triton path."""
    mod, fast = _pick("entropy", logits)
    return (mod.confidence_triton if fast else mod.confidence_reference)(logits)


def hash_embedding(full: torch.Tensor, n_new: int, sizes: tuple, vocab: int, byte_weight: torch.Tensor,
               tables: list) -> torch.Tensor:
    """Byte embedding of the last n_new ids of `full` plus its hashed n-gram rows."""
    mod, fast = _pick("hash_embed", byte_weight)
    return (mod.hash_embed_triton if fast else mod.hash_embed_reference)(full, n_new, sizes, vocab, byte_weight,
                                                                         tables)


def patch_max(h: torch.Tensor, pids: torch.Tensor, n_patches: int, gathered=None) -> torch.Tensor:
    """Max of each patch's byte states (empty patches 0); `gathered` is PatchPooling's layout."""
    mod, fast = _pick("pooling", h)
    return mod.patch_max_triton(h, pids, n_patches) if fast else mod.patch_max_reference(h, pids, n_patches,
                                                                                         gathered)


def step_end(ids: torch.Tensor, t: torch.Tensor, signal: torch.Tensor | None, olog: torch.Tensor | None,
             ent: torch.Tensor, forced: torch.Tensor, cur: torch.Tensor, is_ws: torch.Tensor, rule: str,
             threshold: float, stride: int, max_patch: int, advance: tuple | None = None) -> None:
    """The end of a static decoding step, in place: with `advance` = (logits, forbid, keep, pred,
    given, plen, move) the greedy bytes after a decoder pass, the next ids and positions; then
    (unless signal is None) signal = (byte t, does it open a patch), logged in olog[t]: see
    step.step_end_reference."""
    mod, fast = _pick("step", ids)
    (mod.step_end_triton if fast else mod.step_end_reference)(ids, t, signal, olog, ent, forced, cur, is_ws, rule,
                                                              threshold, stride, max_patch, advance)


def denoise_end(logits: torch.Tensor, forbid: torch.Tensor, noisy: torch.Tensor, ids: torch.Tensor,
                t: torch.Tensor, move: torch.Tensor, knob: torch.Tensor, by_entropy: bool, nstep: torch.Tensor,
                filled: torch.Tensor, scores: torch.Tensor, left: torch.Tensor, in_order: bool = False) -> None:
    """The end of a static denoising step, in place: the unmasking rule (α, or γ with by_entropy;
    in_order: a left-to-right run) fills the chosen slots and logs them: see step.denoise_end_reference."""
    mod, fast = _pick("step", logits)
    (mod.denoise_end_triton if fast else mod.denoise_end_reference)(logits, forbid, noisy, ids, t, move, knob,
                                                                    by_entropy, nstep, filled, scores, left, in_order)


def attend(q, k, v, mask, is_causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention; mask: None, a dense bool mask, or a layers.AttnMask."""
    mod, fast = _pick("attention", q)
    return (mod.attention_triton if fast else mod.attention_reference)(q, k, v, mask, is_causal)
