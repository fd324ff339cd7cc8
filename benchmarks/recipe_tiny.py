"""Training-recipe knobs of the masked-block head (issue 22, deliverable 3), measured on the `tiny`
preset on a CPU before any GPU retrain.

One tiny entropy model is trained (or reused with --entropy-dir), then the tiny BLT with the hybrid
objective once per recipe: same steps, seed, batches, initial weights and block-size draws, only the
knob differs (bltlab.train.TrainConfig: mask_rate, t_weight_cap, diffusion_weight). For each it
reports the next-byte head's validation bits/byte (train()'s own validation) and, from
`bltlab.diagnose.diagnose_heads` (score_blocks -> Triangle -> slot_table, as `python -m bltlab
diagnose` computes them), the masked-block head's accuracy with the block's prefix revealed beside
the autoregressive head's at the same bytes, on the same held-out blocks for every recipe.

    OMP_NUM_THREADS=1 python benchmarks/recipe_tiny.py --threads 1      # every recipe, seed 0: ~7 min on one core
    OMP_NUM_THREADS=1 python benchmarks/recipe_tiny.py --threads 1 --seed 1 2 --recipes baseline,clip,cap5 --append

(the two commands that wrote benchmarks/recipe_tiny.json). A recipe change is worth a GPU retrain only if
it raises the masked head's accuracy (prefix revealed) by more than the seed-to-seed spread without
costing the next-byte head's bits/byte: a gap to AR that narrows because AR got worse is no help.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bltlab.checkpoint import load_model
from bltlab.diagnose import BLOCKS, SOURCES, diagnose_heads
from bltlab.train import TrainConfig, train

# BD3-LM clips t to U(beta, omega) with beta ≈ 0.3, omega ≈ 0.8 (we take exactly those); with the clip,
# 1/t <= 1/0.3 ≈ 3.3, so a cap of 5 matters only without it.
RECIPES: dict[str, dict] = {
    "baseline": {},
    "clip": {"mask_rate": (0.3, 0.8)},
    "cap5": {"t_weight_cap": 5.0},
    "dw2": {"diffusion_weight": 2.0},
    "clip+dw2": {"mask_rate": (0.3, 0.8), "diffusion_weight": 2.0},
}


def _git() -> dict:
    """The commit measured, and whether bltlab/ had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return ""
    return {"commit": git("rev-parse", "HEAD"), "bltlab_dirty": bool(git("status", "--porcelain", "bltlab"))}


def summarize(heads: dict) -> dict:
    """diagnose_heads' result -> per source: per block size and averaged over the block sizes, the mean over
    slots >= 1 of the masked head's accuracy with the prefix revealed (acc_prefix), with nothing revealed
    (acc_masked) and of the AR head's at the same bytes (acc_ar), and slot 0 (masked head vs AR)."""
    out: dict = {}
    for src, per in heads.items():
        rows = {}
        for b, r in per.items():
            if b == "windows":
                continue
            rest = r["slots"][1:]
            rows[b] = {"blocks": r["blocks"], **{k: sum(s[k] for s in rest) / len(rest)
                                                 for k in ("acc_prefix", "acc_masked", "acc_ar")},
                       "slot0_masked": r["slots"][0]["acc_prefix"], "slot0_ar": r["slots"][0]["acc_ar"],
                       "tau_matching_ar": r["tau_matching_ar"]}
        mean = {k: sum(v[k] for v in rows.values()) / len(rows)
                for k in ("acc_prefix", "acc_masked", "acc_ar", "slot0_masked", "slot0_ar")}
        out[src] = {"mean": {**mean, "gap": mean["acc_ar"] - mean["acc_prefix"]}, "by_block": rows}
    return out


def run_recipe(name: str, knobs: dict, seed: int, args: argparse.Namespace, entropy_dir: Path, work: Path) -> dict:
    """Train the tiny BLT under one recipe with one seed and measure it."""
    out = work / f"{name.replace('+', '_')}_{seed}"
    tc = TrainConfig(what="blt", preset="tiny", steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                     lr=args.lr, warmup=max(1, args.steps // 10), eval_every=args.steps, eval_windows=args.eval_windows,
                     seed=seed, out=str(out), entropy_dir=str(entropy_dir), device="cpu", threads=args.threads,
                     **knobs)
    t0 = time.time()
    metrics = train(tc)
    secs = time.time() - t0
    model, _ = load_model(out, device="cpu")
    heads = diagnose_heads(model, SOURCES, BLOCKS, windows=args.windows, seed=0, progress=False)
    return {"recipe": name, "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()},
            "seed": seed, "steps": metrics["step"], "train_seconds": round(secs, 1),
            "val_bpb_code": metrics.get("val_bpb_code"), "val_bpb_fr": metrics.get("val_bpb_fr"),
            "train_ce": metrics.get("train_ce"), "train_diff": metrics.get("train_diff"), "heads": summarize(heads)}


METRICS = (("val bpb", "val_bpb"), ("masked (prefix)", "acc_prefix"), ("AR", "acc_ar"))


def _metrics(r: dict) -> dict:
    """One recipe row -> {(metric, source): value} for the table."""
    out = {}
    for src in ("code", "fr"):
        out[("val_bpb", src)] = r[f"val_bpb_{src}"]
        for key in ("acc_prefix", "acc_ar"):
            out[(key, src)] = r["heads"][src]["mean"][key]
    return out


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per recipe and seed (then each recipe's mean over seeds when it has several):
    validation bits/byte, the masked head's accuracy with the prefix revealed and the AR head's at the same
    bytes (means over block sizes 4, 8, 16 and slots >= 1), each as "code, fr", and each one's change
    from the baseline trained with the same seed."""
    order = {name: i for i, name in enumerate(RECIPES)}
    rows = sorted(rows, key=lambda r: (order.get(r["recipe"], len(order)), r["seed"]))
    base = {r["seed"]: _metrics(r) for r in rows if r["recipe"] == "baseline"}
    head = " | ".join(f"{t} (code, fr)" for t, _ in METRICS)
    delta = " | ".join(f"Δ {t} vs baseline" for t, _ in METRICS)
    lines = [f"| recipe | seed | {head} | {delta} |", "|---|---|" + "---|" * 2 * len(METRICS)]

    def cells(m: dict, fmt: str) -> str:
        return " | ".join(", ".join(format(m[(key, s)], fmt) for s in ("code", "fr")) for _, key in METRICS)

    def line(name: str, seed: str, m: dict, d: dict | None) -> str:
        return f"| {name} | {seed} | {cells(m, '.3f')} | " + (cells(d, '+.3f') if d else " | ".join(["–"] * 3)) + " |"

    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        ms = [_metrics(r) for r in mine]
        ds = [{k: m[k] - base[r["seed"]][k] for k in m} if r["seed"] in base else None for r, m in zip(mine, ms)]
        lines += [line(name, str(r["seed"]), m, d) for r, m, d in zip(mine, ms, ds)]
        if len(mine) > 1:
            mean = {k: sum(m[k] for m in ms) / len(ms) for k in ms[0]}
            paired = [d for d in ds if d]
            dmean = {k: sum(d[k] for d in paired) / len(paired) for k in paired[0]} if paired else None
            lines.append(line(f"**{name}**", f"mean of {len(mine)}", mean, dmean))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Parse the flags, train and measure every recipe at every seed asked for, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400, help="BLT optimizer steps per recipe (default: 400)")
    ap.add_argument("--seed", type=int, nargs="+", default=[0],
                    help="training seed(s) of the BLT; every recipe runs once per seed (default: 0)")
    ap.add_argument("--recipes", default=",".join(RECIPES),
                    help=f"comma-separated recipes to run (default: all: {','.join(RECIPES)})")
    ap.add_argument("--out", default="benchmarks/recipe_tiny.json", help="JSON file to write")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in --out (same settings, other recipes or seeds) and add these")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per step (default: 8)")
    ap.add_argument("--seq-len", type=int, default=256, help="bytes per sequence (default: 256, tiny's maximum)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3; warm-up: steps / 10)")
    ap.add_argument("--eval-windows", type=int, default=32,
                    help="validation windows per source for bits/byte (default: 32)")
    ap.add_argument("--windows", type=int, default=32,
                    help="held-out windows per source the heads are scored on (default: 32)")
    ap.add_argument("--entropy-dir", default="",
                    help="a trained tiny entropy model to reuse (default: train one, --entropy-steps, seed 0)")
    ap.add_argument("--entropy-steps", type=int, default=300, help="entropy model steps when trained here")
    ap.add_argument("--keep", default="", help="directory to keep the trained models in (default: a temp dir)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names or args.steps < 1:
        ap.error(f"recipes must be some of {', '.join(RECIPES)} (got {unknown or names}) and --steps >= 1")
    settings = {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
                "warmup": max(1, args.steps // 10), "threads": args.threads, "eval_windows": args.eval_windows,
                "head_windows": args.windows,
                "entropy": args.entropy_dir or f"trained here, {args.entropy_steps} steps, seed 0",
                "mix": TrainConfig().mix, "blocks": list(BLOCKS), "sources": list(SOURCES)}
    out = Path(args.out)
    prev = json.loads(out.read_text()) if args.append and out.exists() else None
    if prev and prev["settings"] != settings:
        ap.error(f"--append: {out} was made with other settings ({prev['settings']})")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if args.entropy_dir:
            entropy_dir = Path(args.entropy_dir)
        else:
            entropy_dir = work / "entropy"
            train(TrainConfig(what="entropy", preset="tiny", steps=args.entropy_steps, batch_size=16, seq_len=128,
                              lr=3e-3, warmup=max(1, args.entropy_steps // 10), eval_every=args.entropy_steps,
                              eval_windows=8, seed=0, out=str(entropy_dir), device="cpu", threads=args.threads))
        rows: list[dict] = []
        for seed in args.seed:
            for name in names:
                rows.append(run_recipe(name, RECIPES[name], seed, args, entropy_dir, work))
                print(next(x for x in format_table(rows).splitlines() if x.startswith(f"| {name} | {seed} |")),
                      flush=True)  # the new row, beside the same seed's baseline when it ran first
        total = time.time() - t0
    run = {"recipes": names, "seeds": args.seed, "seconds": round(total, 1), **_git()}
    new = {(r["recipe"], r["seed"]) for r in rows}
    rows = [r for r in (prev["recipes"] if prev else []) if (r["recipe"], r["seed"]) not in new] + rows
    res = {"what": "tiny BLT, hybrid objective, one run per recipe and seed (benchmarks/recipe_tiny.py)",
           "settings": settings,
           "accuracy": "mean over block sizes of the mean over slots >= 1 (diagnose's slot_table), held-out blocks",
           "torch": torch.__version__, "python": platform.python_version(),
           "runs": (prev["runs"] if prev else []) + [run], "recipes": rows}
    print(f"\n{args.steps} steps per recipe, seeds {args.seed}, {total / 60:.1f} min\n")
    print(format_table(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    return res


if __name__ == "__main__":
    main()
