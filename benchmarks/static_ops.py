"""What one static-engine step asks of the device: the operations each step kind runs (those
that launch work: views and allocations are not counted), once with the PyTorch references and
once with the Triton kernels as on a GPU (each kernel counted as one launch; run here by Triton's
interpreter), and how torch.compile traces the step (graphs and graph breaks). Runs on a CPU:
the second count is the number of kernels a CUDA graph of the step replays.

    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/static_ops.py [--model DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from bltlab import kernels
from bltlab.checkpoint import SHIPPED, load_model
from bltlab.decode.state import DecodeState
from bltlab.tokens import encode

FREE = {"view", "_unsafe_view", "unsqueeze", "squeeze", "permute", "t", "transpose", "slice", "select", "expand",
        "alias", "detach", "as_strided", "split", "unbind", "_reshape_alias", "lift_fresh", "empty", "empty_like",
        "empty_strided", "new_empty", "view_as_complex", "view_as_real"}  # no kernel behind them
USED = ("norm_ffn", "norm_proj", "entropy", "hash_embed", "step")  # the kernel modules a static step calls
PROMPT = "def add(a, b):\n    return a + b\n"


def step_kinds(s: DecodeState) -> dict:
    """name -> (setup, one step as the engine runs it: a CUDA-graph replay on a GPU, the eager step
    elsewhere). The setup puts the state where the step may repeat (each advance moves t on: N
    steps need N * L bytes of room); benchmarks/profile_static.py times the same steps."""
    prompt = [encode(PROMPT)] * s.B

    def fresh():
        s.prefill(prompt)

    def draft_from_t():
        fresh()
        s.dt.copy_(s.t)

    def block():
        fresh()
        s.run_close()
        s.run_begin(False, 0.9)

    return {"advance(1), global step": (fresh, lambda: s.run(1, True)), "advance(1)": (fresh, lambda: s.run(1, False)),
            "advance(8)": (fresh, lambda: s.run(8, True)), "advance(8), closing": (fresh, lambda: s.run(8, True, True)),
            "draft": (draft_from_t, s.run_draft), "close": (fresh, s.run_close),
            "begin block": (block, lambda: s.run_begin(False, 0.9)),  # the knob is set: the replay alone
            "denoise(8)": (block, lambda: s.run_denoise(8, False)),
            # blt-d*'s push of a block: closing, and the next block's first denoising pass in the same decoder pass
            "advance(8), closing, first pass of a block of 8": (fresh, lambda: s.run(8, True, True, 8, True, False, True))}


def composite(func, args) -> bool:
    """Whether `func` runs as other operations on the device of its first tensor argument: it has a
    CompositeImplicitAutograd kernel and no kernel of its own for that device (nor an explicit
    composite one), which is when the dispatcher decomposes it (rms_norm's fused form has a CUDA
    kernel, not a CPU one)."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    name = func.name()
    if not has(name, "CompositeImplicitAutograd"):
        return False
    tensor = next((a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)), None)
    device = "CPU" if tensor is None else tensor.device.type.upper()
    return not any(has(name, key) for key in (device, "CompositeExplicitAutograd",
                                              "CompositeExplicitAutogradNonFunctional"))


class CountOps(TorchDispatchMode):
    """Counts the aten operations that run kernels under it (FREE left out), and each Triton kernel
    called as one (the interpreter's own tensor work inside it is not counted).

    A composite operation (linear, reshape, type_as, scaled_dot_product_attention, rms_norm on a CPU:
    one with no kernel of its own for the device, see `composite`) is counted as the operations it
    runs, not as one: it is decomposed here, under this mode, so that its parts come back and are
    counted. Under no_grad the dispatcher decomposes it before it reaches a dispatch mode; under
    inference_mode (which skips the autograd layer where that happens) it arrives whole, and counting
    it as one would count a reshape that is a view, or miss the copy a reshape makes. Decomposing
    counts the same kernels in either mode: what the step launches (92 with the Triton kernels for a
    `blt` step with its global step, under no_grad and under inference_mode alike)."""

    def __init__(self, triton: bool):
        super().__init__()
        self.ops, self.inside, self.patched, self.depth = collections.Counter(), False, [], 0
        self.triton = triton

    def __enter__(self):
        if self.depth == 0 and self.triton:  # the outermost entry (a decomposition re-enters the mode)
            for name in USED:
                mod = kernels._module(name, on_cpu=True)
                for fn in [f for f in dir(mod) if f.endswith("_triton")]:
                    self.patched.append((mod, fn, getattr(mod, fn)))
                    setattr(mod, fn, self._launch(fn, getattr(mod, fn)))
        self.depth += 1
        return super().__enter__()

    def _launch(self, name, fn):
        def counted(*args, **kw):
            self.ops[name] += 1
            self.inside = True
            try:
                return fn(*args, **kw)
            finally:
                self.inside = False
        return counted

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            for mod, fn, orig in self.patched:
                setattr(mod, fn, orig)
            self.patched = []
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if composite(func, args):  # count its parts (they come back here)
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        name = func.overloadpacket.__name__
        if not self.inside and name not in FREE:
            self.ops[name] += 1
        return func(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHIPPED), help="model directory (default: the shipped model)")
    ap.add_argument("--json", default=None, help="also write the table as JSON to this file")
    args = ap.parse_args()
    model = load_model(args.model)[0]
    s = DecodeState(model, 1)
    rows = []
    with torch.no_grad():
        for name, (setup, step) in tqdm(step_kinds(s).items(), desc="steps", unit="step"):  # minutes: interpreted
            row = {"step": name}
            for triton in (False, True):
                setup()
                with kernels.backend("triton" if triton else "reference"), CountOps(triton) as c:
                    step()
                row["with_triton" if triton else "reference"] = sum(c.ops.values())
            setup()
            e = torch._dynamo.explain(step)()
            rows.append(row | {"graphs": e.graph_count, "graph_breaks": e.graph_break_count,
                               "top": dict(c.ops.most_common(8))})
    print("| step | operations (references) | with the Triton kernels | compiled graphs | graph breaks | "
          "most frequent (Triton) |\n|---|---|---|---|---|---|")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in r["top"].items())
        print(f"| {r['step']} | {r['reference']} | {r['with_triton']} | {r['graphs']} | {r['graph_breaks']} | {top} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.cfg.name, "torch": torch.__version__, "rows": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
