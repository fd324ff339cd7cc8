"""Triton if it is installed, else a stand-in that lets the kernel modules import without it.

Triton publishes Linux wheels only, and each kernel module keeps its `@triton.jit` kernels next
to the PyTorch reference the CPU path runs, so the modules take `triton` and `tl` from here:

    from ._triton import tl, triton

Without Triton, `triton.jit` keeps the function (to read) but launching it (`kernel[grid](...)`)
or calling it raises MISSING, `tl.constexpr` exists for the annotations and the module constants
that use it, and any other attribute (`triton.cdiv`, `tl.program_id`, ...) is a function raising
MISSING. Nothing reaches those on purpose: bltlab.kernels reads HAS_TRITON first, so backend
'auto' runs the references and backend 'triton' stops with MISSING before any kernel.
"""
from __future__ import annotations

import functools
import types

MISSING = ("Triton is not installed; it has Linux wheels only: pip install triton, or use the reference backend "
           "(BLTLAB_KERNELS=reference or bltlab.kernels.set_backend('reference'))")

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError as e:  # no wheel for this platform, or a broken install: say which
    HAS_TRITON = False
    MISSING = f"{MISSING} [import triton: {e}]"

    def _missing(*args, **kwargs):
        raise RuntimeError(MISSING)

    class _Kernel:
        """What `@triton.jit` makes without Triton: the function, which cannot be launched."""

        def __init__(self, fn):
            functools.update_wrapper(self, fn)

        def __getitem__(self, grid):  # kernel[grid](...)
            return _missing

        __call__ = _missing

    def _jit(fn=None, **options):  # @triton.jit and @triton.jit(...)
        return _Kernel(fn) if fn is not None else _Kernel

    class _Stub(types.ModuleType):
        """A module whose every attribute not set here raises MISSING when called."""

        def __getattr__(self, name):
            if name.startswith("__"):  # keep introspection (copy, pickle, doctest) honest
                raise AttributeError(name)
            return _missing

    class _constexpr:
        """`tl.constexpr`: an annotation, and a wrapper for module constants (attention.BIG)."""

        def __init__(self, value=None):
            self.value = value

    triton = _Stub("triton", "stand-in: Triton is not installed")
    triton.jit = _jit
    tl = _Stub("triton.language", "stand-in: Triton is not installed")
    tl.constexpr = _constexpr
