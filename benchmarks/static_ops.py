"""What one static-engine step asks of the device: the PyTorch operations each step kind runs
(those that launch work; views are not counted), and how torch.compile traces it (graphs and
graph breaks). Runs on a CPU: a proxy for the kernels a CUDA graph of the step replays (on a
GPU, RMSNorm, SwiGLU, the entropy and the hash embedding are one Triton kernel each instead).

    python benchmarks/static_ops.py [--model DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bltlab.checkpoint import SHIPPED, load_model
from bltlab.decode.static import StaticState
from bltlab.tokens import encode

VIEWS = {"view", "_unsafe_view", "unsqueeze", "squeeze", "permute", "t", "transpose", "slice", "select", "expand",
         "alias", "detach", "as_strided", "split", "unbind", "_reshape_alias", "lift_fresh"}


class CountOps(TorchDispatchMode):
    """Counts the aten operations run under it, views left out."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHIPPED), help="model directory (default: the shipped model)")
    ap.add_argument("--json", default=None, help="also write the table as JSON to this file")
    args = ap.parse_args()
    model = load_model(args.model)[0]
    s = StaticState(model, 1)
    s.prefill([encode("def add(a, b):\n    return a + b\n")])
    steps = {"advance(1), global step": lambda: s.advance(1, True), "advance(1)": lambda: s.advance(1, False),
             "advance(8)": lambda: s.advance(8, True), "draft": s.draft, "close": s.close,
             "denoise(8)": lambda: (s.begin_block(False, 0.9), s.denoise(8, False))}
    rows = []
    with torch.no_grad():
        for name, step in steps.items():
            saved = [x.clone() for x in s.live]
            with CountOps() as c:
                step()
            for x, y in zip(s.live, saved):
                x.copy_(y)
            e = torch._dynamo.explain(step)()
            for x, y in zip(s.live, saved):
                x.copy_(y)
            rows.append({"step": name, "ops": sum(c.ops.values()), "graphs": e.graph_count,
                         "graph_breaks": e.graph_break_count, "top": dict(c.ops.most_common(6))})
    print("| step | operations | compiled graphs | graph breaks | most frequent |\n|---|---|---|---|---|")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in r["top"].items())
        print(f"| {r['step']} | {r['ops']} | {r['graphs']} | {r['graph_breaks']} | {top} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.cfg.name, "torch": torch.__version__, "rows": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
