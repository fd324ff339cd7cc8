"""Where a static-engine step's time goes: each step kind (static_ops.step_kinds) replayed N times
from its CUDA graph under torch.profiler, with per kind the wall time of a replay (the host
waits for the device after the N), the device time of its kernels, how many kernels a replay
runs, and the kernels that take most of it. Wall time well above device time is launch latency
and idle gaps between kernels; device time is what fusing or tuning kernels can cut.

    PYTHONPATH=. python benchmarks/profile_static.py [--batch 1] [--replays 40] [--json OUT]

On a GPU this is the figure to take before tuning (layers.LATER_MAX_BYTES, block sizes). On a
CPU (`--device cpu`: no graphs, eager steps) the same table gives the self CPU time of the
PyTorch operations, a check of the script rather than a GPU figure.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from tqdm import tqdm

from bltlab.checkpoint import SHIPPED, load_model
from bltlab.decode.state import DecodeState
from bltlab.tokens import encode
from static_ops import PROMPT, step_kinds  # the step kinds whose operations static_ops.py counts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(setup, replay, n: int, device: torch.device) -> dict:
    """Wall time of n replays after one untimed one (capture, compilation), then the time of
    each kernel over n more under the profiler (whose own overhead the wall time leaves out)."""
    setup()
    replay()
    setup()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        replay()
    _sync(device)
    wall = time.perf_counter() - t0
    setup()
    _sync(device)
    on_gpu = device.type == "cuda"
    acts = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * on_gpu
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            replay()
        _sync(device)
    per = collections.defaultdict(lambda: [0.0, 0])  # name -> [µs, calls] over the n replays
    for e in prof.key_averages():
        if on_gpu and e.device_type == DeviceType.CUDA:
            us = e.self_device_time_total
        elif not on_gpu and e.key.startswith("aten::"):
            us = e.self_cpu_time_total
        else:
            continue
        per[e.key][0] += us
        per[e.key][1] += e.count
    total = sum(us for us, _ in per.values())
    top = sorted(per.items(), key=lambda kv: -kv[1][0])
    return {"wall_us": 1e6 * wall / n, "device_us": total / n, "kernels": sum(c for _, c in per.values()) / n,
            "top": [{"name": k, "us": us / n, "calls": c / n} for k, (us, c) in top]}


def format_table(res: dict, top: int = 4) -> str:
    what = "kernels" if res["device"] != "cpu" else "CPU operations"
    lines = [f"{res['model']} on {res['device']} ({res['dtype']}), batch {res['batch']}, {res['replays']} replays "
             f"per step kind, torch {res['torch']}", "",
             f"| step | wall µs per replay | {what}: µs per replay | {what} per replay | busy % | "
             f"most time (µs per replay) |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        most = ", ".join(f"{t['name'][:48]} {t['us']:.1f}" for t in r["top"][:top])
        lines.append(f"| {r['step']} | {r['wall_us']:.1f} | {r['device_us']:.1f} | {r['kernels']:.0f} | "
                     f"{100 * r['device_us'] / r['wall_us']:.0f} | {most} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHIPPED), help="model directory (default: the shipped model)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (eager steps: a check of the script)")
    ap.add_argument("--batch", type=int, default=1, help="rows of the static state (default 1)")
    ap.add_argument("--replays", type=int, default=40,
                    help="timed replays per step kind (default 40; advance(8) needs 8 bytes of context each)")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu to check the script)")
    device = torch.device(args.device)
    model = load_model(args.model, device=device)[0]
    room = model.cfg.max_bytes - len(encode(PROMPT)) - 1
    if not 1 <= args.replays <= room // 8:
        raise SystemExit(f"--replays must be between 1 and {room // 8} (advance(8) runs out of context after that)")
    if args.batch < 1:
        raise SystemExit(f"--batch must be >= 1, got {args.batch}")
    s = DecodeState(model, args.batch)
    rows = []
    with torch.no_grad():
        for name, (setup, replay) in tqdm(step_kinds(s).items(), desc="steps", unit="step"):
            rows.append({"step": name, **profile_step(setup, replay, args.replays, device)})
    res = {"model": model.cfg.name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "dtype": str(next(model.parameters()).dtype), "batch": args.batch,
           "replays": args.replays, "rows": rows}
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
