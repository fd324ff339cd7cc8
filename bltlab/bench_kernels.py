"""Kernel benchmark: each Triton kernel against its PyTorch reference, plus the copy peak.

`python -m bltlab bench-kernels` (or `python -m bltlab.bench_kernels`, which needs no tqdm).
Shapes: `small` (the shipped small model at training batch 16 x 512 bytes), `large` (paper-1b
widths, 16 x 4096 bytes), `tiny` (a few rows: for Triton's CPU interpreter, where timings mean
nothing; tests use it to check the JSON). In the same run it measures the device copy
bandwidth (a large tensor's .copy_, read + write) and reports, for the memory-bound kernels,
achieved GB/s (bytes the kernel must move / its time) and that as % of the copy peak.
Imports only torch, triton and the standard library on the GPU path (bltlab.kernels
included); triton and the kernel modules load only when a run starts.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from .checkpoint import resolve_device
from .kernels import interpreting, require_triton
from .positions import AttnMask
from .tokens import MASK

# B x T bytes (attention: attn_B x T clean bytes + nb noisy blocks of bs), d = d_local, hidden = the local
# SwiGLU width, `tables` hash tables of `vocab` rows, heads x hd attention, P patches per row
SHAPES = {
    "tiny": dict(B=2, T=16, d=32, hidden=96, tables=6, vocab=64, P=5,
                 attn_B=2, heads=2, hd=16, nb=2, bs=4, window=64),
    "small": dict(B=16, T=512, d=128, hidden=352, tables=6, vocab=4096, P=128,
                  attn_B=16, heads=4, hd=32, nb=32, bs=8, window=512),
    "large": dict(B=16, T=4096, d=1024, hidden=2752, tables=6, vocab=50002, P=1024,
                  attn_B=4, heads=16, hd=64, nb=256, bs=8, window=512),
}
V = 260  # output ids


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cuda, cpu (Triton interpreter: needs TRITON_INTERPRET=1 "
                   "and --tiny) or auto (default: cuda when present)")
    p.add_argument("--shapes", default="small,large", help="comma-separated shape sets: tiny, small, large "
                   "(default: small,large)")
    p.add_argument("--tiny", action="store_true", help="only the tiny shapes, one repeat (CPU interpreter, tests)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="activation dtype (default: bf16)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement, median kept (default: 20)")
    p.add_argument("--kernels", default="all", help="comma-separated subset of: " + ", ".join(KERNELS)
                   + " (default: all)")
    p.add_argument("--train-steps", type=int, default=0, help="also time this many hybrid training steps of the "
                   "shipped model (forward, backward, AdamW; batch 64 x 512 bytes, bf16 autocast on a GPU) with "
                   "the kernels and with the references (default: 0 = skip)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")


# ---- timing ----------------------------------------------------------------------------------
def timeit(fn, device: str, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` runs after one warm-up (compile) run."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_time(fn, repeats: int, calls: int = 10) -> float | None:
    """Median milliseconds of one fn() replayed from a CUDA graph of `calls` calls: device time
    without the host's launch work, what a kernel costs inside a captured decoding step. None
    where fn cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # capture wants a warm-up off the default stream
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError:  # an op that waits on the host cannot be captured
        torch.cuda.synchronize()
        return None
    return timeit(graph.replay, "cuda", repeats) / calls


def copy_bandwidth(device: str, repeats: int, nbytes: int) -> float:
    """GB/s of dst.copy_(src): 2 * nbytes moved per copy."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timeit(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


# ---- cases: (triton fn, reference fn, bytes a kernel must move or None, trains?) --------------------
def _leaf(*shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, device=device) * scale).to(dtype).requires_grad_()


def case_entropy(s, dt, dev):
    from .kernels import entropy
    x = torch.randn(s["B"] * s["T"], V, device=dev).to(dt)
    x[:, :4] = float("-inf")
    return (lambda: entropy.confidence_triton(x), lambda: entropy.confidence_reference(x),
            x.numel() * x.element_size() + x.shape[0] * 16, False)


def case_rms_norm(s, dt, dev):
    from .kernels import norm_ffn
    x, r = _leaf(s["B"] * s["T"], s["d"], dtype=dt, device=dev), _leaf(s["B"] * s["T"], s["d"], dtype=dt, device=dev)
    w = torch.ones(s["d"], device=dev, requires_grad=True)
    n = x.numel() * x.element_size()
    return (lambda: norm_ffn.rms_norm_triton(x, w, 1e-5, r), lambda: norm_ffn.rms_norm_reference(x, w, 1e-5, r),
            4 * n + 4 * s["d"] + 4 * x.shape[0], True)  # read x, r; write x + r, y (+ weight, rstd)


def case_swiglu(s, dt, dev):
    from .kernels import norm_ffn
    a, b = (_leaf(s["B"] * s["T"], s["hidden"], dtype=dt, device=dev) for _ in range(2))
    return (lambda: norm_ffn.swiglu_triton(a, b), lambda: norm_ffn.swiglu_reference(a, b),
            3 * a.numel() * a.element_size(), True)


def case_norm_linear(s, dt, dev):
    from .kernels import norm_proj
    N, d, F = s["B"], s["d"], s["hidden"]  # a decoding kernel: one byte of each of B rows
    x, r = (torch.randn(N, d, device=dev).to(dt) for _ in range(2))
    g, w = torch.ones(d, device=dev).to(dt), (torch.randn(2 * F, d, device=dev) / d ** 0.5).to(dt)
    n = x.element_size()
    moved = 3 * N * d * n + w.numel() * n + N * F * n  # read x, r, W; write x + r, silu(gate) * up
    return (lambda: norm_proj.norm_linear_triton(x, g, 1e-5, w, r, True),
            lambda: norm_proj.norm_linear_reference(x, g, 1e-5, w, r, True), moved, False)


def case_norm_linear_proj(s, dt, dev):
    from .kernels import norm_proj
    N, d, F = s["B"], s["d"], s["hidden"]  # as norm_linear, the residual given as the SwiGLU's down
    x, h = torch.randn(N, d, device=dev).to(dt), torch.randn(N, F, device=dev).to(dt)  # projection h @ P.T
    g, P = torch.ones(d, device=dev).to(dt), (torch.randn(d, F, device=dev) / F ** 0.5).to(dt)
    w = (torch.randn(2 * F, d, device=dev) / d ** 0.5).to(dt)
    n = x.element_size()
    moved = 2 * N * d * n + N * F * n + P.numel() * n + w.numel() * n + N * F * n  # x, h, P, W; x + h P^T, y
    return (lambda: norm_proj.norm_linear_triton(x, g, 1e-5, w, (h, P), True),
            lambda: norm_proj.norm_linear_reference(x, g, 1e-5, w, (h, P), True), moved, False)


def case_norm_qkv(s, dt, dev):
    from .kernels import norm_proj
    N, d, H, T = s["B"], s["d"], s["heads"], s["T"]  # one byte of each of B rows, caches of T positions
    hd = d // H
    x, r = (torch.randn(N, 1, d, device=dev).to(dt) for _ in range(2))
    g, w = torch.ones(d, device=dev).to(dt), (torch.randn(3 * d, d, device=dev) / d ** 0.5).to(dt)
    pos = torch.randint(0, T, (N, 1), device=dev)
    rot = torch.randn(T, hd // 2, 2, device=dev)  # angles' (cos, sin) by position
    kv, kv_ref = (torch.zeros(2, N, H, T, hd, device=dev).to(dt) for _ in range(2))
    rows, n = torch.arange(N, device=dev), x.element_size()
    moved = 6 * N * d * n + w.numel() * n  # read x, r, W; write x + r, queries, keys, values
    return (lambda: norm_proj.norm_qkv_triton(x, g, 1e-5, w, r, rot, pos, kv, rows),
            lambda: norm_proj.norm_qkv_reference(x, g, 1e-5, w, r, rot, pos, kv_ref, rows), moved, False)


def case_hash_embed(s, dt, dev):
    from .kernels import hash_embed
    full = torch.randint(4, V, (s["B"], s["T"]), device=dev)
    bw = _leaf(V, s["d"], dtype=dt, device=dev)
    tabs = [_leaf(s["vocab"], s["d"], dtype=dt, device=dev) for _ in range(s["tables"])]
    sizes = tuple(range(3, 3 + s["tables"]))
    rows = full.numel()
    moved = rows * s["d"] * bw.element_size() * (2 + s["tables"]) + rows * 8 * (1 + s["tables"])
    return (lambda: hash_embed.hash_embed_triton(full, s["T"], sizes, s["vocab"], bw, tabs),
            lambda: hash_embed.hash_embed_reference(full, s["T"], sizes, s["vocab"], bw, tabs), moved, True)


def case_patch_max(s, dt, dev):
    from .kernels import pooling
    B, T, P = s["B"], s["T"], s["P"]
    starts = torch.zeros(B, T, dtype=torch.bool, device=dev)
    starts[:, :: max(1, T // P)] = True  # P patches of T / P bytes
    pids = starts.long().cumsum(1) - 1
    n = int(pids.max()) + 1
    h = _leaf(B, T, s["d"], dtype=dt, device=dev)
    moved = h.numel() * h.element_size() + B * n * s["d"] * (h.element_size() + 8)  # read h; write max, argmax
    return (lambda: pooling.patch_max_triton(h, pids, n), lambda: pooling.patch_max_reference(h, pids, n), moved,
            True)


def case_attention(s, dt, dev):
    from .kernels import attention

    B, T, nb, bs = s["attn_B"], s["T"], s["nb"], s["bs"]
    starts = torch.arange(nb, device=dev) * (T // nb) + 1
    cpos = torch.arange(T, device=dev).expand(B, T)
    npos = (starts[:, None] + torch.arange(bs, device=dev)).reshape(1, -1).expand(B, -1)
    blk = torch.arange(nb, device=dev).repeat_interleave(bs).expand(B, -1)
    blks = torch.cat((torch.full_like(cpos, -1), blk), 1)
    pos = torch.cat((cpos, npos), 1)
    mask = AttnMask(pos, torch.cat((cpos, starts[blk[0]].expand(B, -1) - 1), 1), blks, pos, blks, s["window"])
    L = pos.shape[1]
    q, k, v = (_leaf(B, s["heads"], L, s["hd"], dtype=dt, device=dev) for _ in range(3))
    return (lambda: attention.attention_triton(q, k, v, mask), lambda: attention.attention_reference(q, k, v, mask),
            None, True)  # compute-bound: no GB/s


def case_step_end(s, dt, dev):
    from .kernels import step
    B, T = s["B"], s["T"]  # the end of one step of B rows: a decoder pass over one byte, then the signal
    ids, given = (torch.randint(4, V, (B, T), device=dev) for _ in range(2))
    t = torch.randint(0, T // 2, (B,), device=dev)
    ent, forced = torch.rand(B, T + 1, device=dev), torch.zeros(B, T, dtype=torch.bool, device=dev)
    is_ws, sig = torch.zeros(V + 1, dtype=torch.bool, device=dev), torch.zeros(B, 2, dtype=torch.long, device=dev)
    logits, keep = torch.randn(B, 1, V, device=dev).to(dt), torch.zeros(B, V, device=dev).to(dt)
    forbid, pred, plen = torch.zeros(V, device=dev), torch.zeros(B, T, dtype=torch.long, device=dev), \
        torch.full((B,), 2, device=dev)
    adv = (logits, forbid, keep, pred, given, plen, torch.zeros(B, dtype=torch.bool, device=dev))  # t stays put
    olog = torch.zeros(B, T, dtype=torch.bool, device=dev)
    args = (ids, t, sig, olog, ent, forced, t.clone(), is_ws, "global", 0.5, 4, 8, adv)
    return lambda: step.step_end_triton(*args), lambda: step.step_end_reference(*args), None, False  # latency-bound


def case_denoise_end(s, dt, dev):
    from .kernels import step
    B, T, L = s["B"], s["T"], s["bs"]  # one denoising step of B rows over blocks of bs slots, the γ rule
    logits = torch.randn(B, L, V, device=dev).to(dt)
    noisy, ids = torch.full((B, L), MASK, device=dev), torch.randint(4, V, (B, T), device=dev)
    t, knob = torch.zeros(B, dtype=torch.long, device=dev), torch.ones(B, dtype=torch.float64, device=dev)
    move = torch.zeros(B, dtype=torch.bool, device=dev)  # no row moves: every call sees the same state
    log = (torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, 2, L, dtype=torch.long, device=dev),
           torch.zeros(B, 2, L, device=dev), torch.zeros(B, dtype=torch.long, device=dev))
    args = (logits, torch.zeros(V, device=dev), noisy, ids, t, move, knob, True, *log)
    return lambda: step.denoise_end_triton(*args), lambda: step.denoise_end_reference(*args), None, False


KERNELS = {"entropy": case_entropy, "rms_norm": case_rms_norm, "swiglu": case_swiglu, "norm_linear": case_norm_linear,
           "norm_linear_proj": case_norm_linear_proj, "norm_qkv": case_norm_qkv, "hash_embed": case_hash_embed,
           "patch_max": case_patch_max, "attention": case_attention, "step_end": case_step_end,
           "denoise_end": case_denoise_end}


def _ratio(ref_ms: float | None, fast_ms: float | None) -> float | None:
    return float(f"{ref_ms / fast_ms:.4g}") if ref_ms and fast_ms else None


def _with_backward(fn):
    def run():
        out = fn()
        outs = out if isinstance(out, tuple) else (out,)
        outs = [o for o in outs if o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return run


def run(device: str = "auto", shapes: tuple = ("small", "large"), dtype: str = "bf16", repeats: int = 20,
        kernels: tuple = tuple(KERNELS), progress=None) -> dict:
    """Time every kernel x shape set (forward, and forward + backward where trained). Returns the JSON dict."""
    require_triton()  # one clear error where Triton is not installed (Linux wheels only)
    import triton

    device = resolve_device(device)
    if device == "cpu" and not interpreting():
        raise RuntimeError("the kernels run on CPU only in Triton's interpreter: set TRITON_INTERPRET=1 "
                           "(and use --tiny)")
    if device == "cpu" and set(shapes) != {"tiny"}:
        raise ValueError("on CPU (Triton's interpreter, ~1000x slower) only --tiny shapes are run")
    unknown = set(kernels) - set(KERNELS)
    if unknown or set(shapes) - set(SHAPES):
        raise ValueError(f"unknown kernels {sorted(unknown)} or shapes {shapes}; kernels: {list(KERNELS)}, "
                         f"shapes: {list(SHAPES)}")
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    copy_bytes = 1 << 30 if device == "cuda" else 1 << 20
    peak = copy_bandwidth(device, repeats, copy_bytes)
    jobs = [(sh, k) for sh in shapes for k in kernels]
    rows = []
    for sh, name in (progress(jobs) if progress else jobs):
        torch.manual_seed(0)
        fast, ref, moved, trains = KERNELS[name](SHAPES[sh], dt, device)
        passes = [("fwd", fast, ref)] + ([("fwd+bwd", _with_backward(fast), _with_backward(ref))] if trains else [])
        for what, f, r in passes:
            grad = torch.enable_grad() if what != "fwd" else torch.no_grad()
            with grad:
                t_ms, r_ms = timeit(f, device, repeats), timeit(r, device, repeats)
            row = {"kernel": name, "shapes": sh, "pass": what, "triton_ms": round(t_ms, 4),
                   "reference_ms": round(r_ms, 4), "speedup": _ratio(r_ms, t_ms)}
            if device == "cuda" and what == "fwd":
                with torch.no_grad():
                    tg, rg = graph_time(f, repeats), graph_time(r, repeats)
                row |= {"graph_triton_ms": tg, "graph_reference_ms": rg, "graph_speedup": _ratio(rg, tg)}
            if moved is not None and what == "fwd":
                gbs = moved / (t_ms * 1e-3) / 1e9
                row |= {"bytes": int(moved), "GBps": round(gbs, 2), "pct_of_copy": round(100 * gbs / peak, 1)}
            rows.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or 'cpu'}, "
            "Triton interpreter: timings are not kernel speed)", "torch": torch.__version__,
            "triton": triton.__version__, "dtype": dtype, "repeats": repeats, "copy_GBps": round(peak, 2),
            "copy_bytes": copy_bytes, "shapes": {k: SHAPES[k] for k in shapes}, "rows": rows}


def train_steps(model, ids: torch.Tensor, steps: int, block_size: int = 8) -> list[dict]:
    """Median ms of one hybrid training step (the loss of bltlab.train, backward, AdamW) on `ids`
    with each kernel backend (reference, every kernel, and 'auto': what training uses), same model
    and inputs; the entropy model stays frozen, as in training. Speed-ups are against the reference."""
    from .kernels import backend
    from .train import blt_loss

    device = ids.device.type
    model.train().entropy.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    rows = []
    for name in ("reference", "triton", "auto"):
        def step():
            with amp:
                loss, _ = blt_loss(model, model, ids, "hybrid", block_size, torch.Generator(device).manual_seed(0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with backend(name):
            rows.append({"backend": name, "ms": round(timeit(step, device, steps), 3)})
    for r in rows[1:]:
        r["speedup"] = _ratio(rows[0]["ms"], r["ms"])
    return rows


def format_table(res: dict) -> str:
    graphs = any("graph_speedup" in r for r in res["rows"])
    head = f"{'kernel':<11} {'shapes':<6} {'pass':<8} {'triton ms':>10} {'torch ms':>10} {'speedup':>8} " \
           f"{'GB/s':>8} {'% copy':>7}" + (f" {'graph speedup':>13}" if graphs else "")
    lines = [f"device: {res['device']}  torch {res['torch']}  triton {res['triton']}  dtype {res['dtype']}",
             f"copy bandwidth (read + write): {res['copy_GBps']:.1f} GB/s", head, "-" * len(head)]

    def times(x):
        return f"{x:>7.2f}x" if x is not None else f"{'':>8}"
    for r in res["rows"]:
        gbs = f"{r['GBps']:>8.1f} {r['pct_of_copy']:>6.1f}%" if "GBps" in r else f"{'':>8} {'':>7}"
        lines.append(f"{r['kernel']:<11} {r['shapes']:<6} {r['pass']:<8} {r['triton_ms']:>10.3f} "
                     f"{r['reference_ms']:>10.3f} {times(r['speedup'])} {gbs}"
                     + (f" {times(r.get('graph_speedup')):>13}" if graphs else ""))
    if graphs:
        lines.append("graph speedup: the same forward passes, each side replayed from a CUDA graph (device "
                     "time only, as inside a captured decoding step; blank: not capturable)")
    if res.get("train"):
        t = res["train"]
        lines += ["", f"training step ({t['shape']}): reference {t['rows'][0]['ms']:.1f} ms, "
                  + ", ".join(f"{r['backend']} {r['ms']:.1f} ms ({r['speedup']:.2f}x)" for r in t["rows"][1:])]
    return "\n".join(lines)


def main_args(args, progress=None) -> dict:
    """Run from parsed arguments (shared by this module's main and `python -m bltlab bench-kernels`)."""
    shapes = ("tiny",) if args.tiny else tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    names = tuple(KERNELS) if args.kernels == "all" else tuple(k.strip() for k in args.kernels.split(",") if k.strip())
    res = run(args.device, shapes, args.dtype, 1 if args.tiny else args.repeats, names, progress)
    if args.train_steps > 0:
        from .checkpoint import load_model
        from .data import load_documents, validation_windows

        device = resolve_device(args.device)
        model = load_model(device=device)[0]
        B, T = (2, 24) if args.tiny else (64, 512)
        ids = validation_windows(load_documents("code", "val"), T, B)  # real text: real patches
        res["train"] = {"shape": f"shipped model, batch {B} x {T}", "steps": args.train_steps,
                        "rows": train_steps(model, ids.to(device), args.train_steps)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(format_table(res))
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bltlab.bench_kernels", description=__doc__.split("\n")[0])
    add_arguments(p)
    try:
        main_args(p.parse_args(argv))
    except (RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
