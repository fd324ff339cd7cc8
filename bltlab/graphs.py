"""Static-shape steps, replayed (gpt-fast's pattern): a step is a method of an object whose buffers
never move, like the decoding state. On a GPU its first call is captured into a CUDA graph, which
every later call replays: the whole step is one launch for the host, which then reads only the few
numbers it needs. With a compile backend the step goes through torch.compile first, traced over the
PyTorch reference ops, which the compiler fuses into kernels of its own. Elsewhere a step runs as
eager ops. Nothing here knows what a step computes (docs/model.md, "Decoding").
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from . import kernels


class Steps:
    """Runs an object's steps: `steps(obj.method, *args)`, one CUDA graph per method and arguments.
    `live` are the buffers the steps update and the host reads: the two untimed runs that a capture
    needs (a warm-up, which also compiles the Triton kernels, and the capture itself) are undone on
    them. Whatever else those runs write must be harmless: in the decoding state it lies past each
    row's position, unread until a real step rewrites it."""

    def __init__(self, device: torch.device, live: tuple[torch.Tensor, ...], compile_backend: str | None = None):
        self.device, self.live, self.compile_backend = device, live, compile_backend
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.compiled: dict[str, Callable] = {}

    def __call__(self, step: Callable, *args) -> None:
        run = self._compile(step) if self.compile_backend else step
        if self.device.type != "cuda":
            return run(*args)
        key = (step.__name__, *args)
        g = self.graphs.get(key)
        if g is None:
            saved = [x.clone() for x in self.live]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                run(*args)
            torch.cuda.current_stream(self.device).wait_stream(side)
            g = self.graphs[key] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run(*args)
            for x, y in zip(self.live, saved):
                x.copy_(y)
        g.replay()

    def _compile(self, step: Callable) -> Callable:
        """`step` through torch.compile (once per method), run with the reference ops."""
        fn = self.compiled.get(step.__name__)
        if fn is None:
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, 64)  # a variant per pass length and kind
            fn = self.compiled[step.__name__] = torch.compile(step, backend=self.compile_backend)

        def run(*args):
            with kernels.backend("reference"):
                fn(*args)
        return run
