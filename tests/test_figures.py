"""Figures quoted in prose agree with the files the repo generates (the bench JSON of `make results`,
the shipped model's report): the README's summary of docs/results.md is recomputed here from the JSON,
so a regenerated bench that moves a figure fails until the prose says the new one."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("code", "translation")
DIFFUSION = ("blt-d4", "blt-d8", "blt-d16", "blt-h")
VERIFIED = ("blt-dv4", "blt-dv8", "blt-dv16")


def _benches() -> dict[str, dict]:
    return {t: json.loads((ROOT / "benchmarks" / f"bench_{t}.json").read_text())["modes"] for t in TASKS}


def _span(values: list[float], fmt: str = ".2f") -> str:
    """'lo–hi' as the prose writes a range (one figure when both ends agree)."""
    lo, hi = f"{min(values):{fmt}}", f"{max(values):{fmt}}"
    return lo if lo == hi else f"{lo}–{hi}"


def test_the_readme_summarises_the_committed_benches():
    modes, readme = _benches(), (ROOT / "README.md").read_text(encoding="utf-8")
    rows = lambda names: [modes[t][m] for t in TASKS for m in names]  # noqa: E731
    s16 = rows(["blt-s16"])
    expected = {
        "blt-s16 against per-byte BLT at 3B": _span([r["rel_bandwidth_nocache_3b"] for r in s16]),
        "blt-s16 against cached blt at 3B": _span([r["rel_bandwidth_3b"] for r in s16]),
        "diffusion and hybrid against cached blt at 3B": _span([r["rel_bandwidth_3b"] for r in rows(DIFFUSION)]),
        "blt-dv* against cached blt at 3B": _span([r["rel_bandwidth_3b"] for r in rows(VERIFIED)]),
    }
    for what, figure in expected.items():
        assert figure in readme, f"README should quote {what} as {figure} (benchmarks/bench_*.json)"
    assert all(r["identical_to_blt"] == 1.0 for r in s16 + rows(VERIFIED)), "README: 'byte for byte on all prompts'"
    below = {(t, m): modes[t][m]["identical_to_blt"] for t in TASKS for m in DIFFUSION
             if modes[t][m]["identical_to_blt"] < 1.0}
    for (task, mode), share in below.items():  # the README names each exception with its share
        assert f"`{mode}` on {100 * share:.1f} % of the {task} prompts" in readme, (task, mode, share)


def test_the_recipe_paragraph_quotes_the_committed_recipe_runs():
    """docs/model.md's account of benchmarks/recipe_tiny.json: the clip's gain in the masked head's accuracy
    (per seed and mean, EN→FR and code), the diffusion weight's cost, the gap left to the autoregressive head."""
    runs = json.loads((ROOT / "benchmarks" / "recipe_tiny.json").read_text())["recipes"]
    by = {(r["recipe"], r["seed"]): r for r in runs}
    seeds = sorted(s for recipe, s in by if recipe == "baseline")
    acc = lambda recipe, s, task, key="acc_prefix": by[(recipe, s)]["heads"][task]["mean"][key]  # noqa: E731
    gain = {task: [acc("clip", s, task) - acc("baseline", s, task) for s in seeds] for task in ("fr", "code")}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    page = " ".join((ROOT / "docs" / "model.md").read_text(encoding="utf-8").split())
    for figure in (f"rose by {mean(gain['fr']):.3f} on EN→FR ({min(gain['fr']):.3f} to {max(gain['fr']):.3f} on each of "
                   f"{len(seeds)} seeds) and by {mean(gain['code']):.3f} on code",
                   f"a weight of 2 cost {by[('dw2', 0)]['val_bpb_code'] - by[('baseline', 0)]['val_bpb_code']:.2f} bits/byte",
                   f"(code: {mean([acc('baseline', s, 'code') for s in seeds]):.2f} against "
                   f"{mean([acc('baseline', s, 'code', 'acc_ar') for s in seeds]):.2f})"):
        assert figure in page, f"docs/model.md should say {figure!r} (benchmarks/recipe_tiny.json)"


def test_the_readme_quotes_the_committed_cpu_speed_runs():
    """README's CPU paragraph: the ranges over benchmarks/cpu/speed_run*.json (eager ops)."""
    runs = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "cpu").glob("speed_run*.json"))]
    rows = lambda mode, batch: [r for d in runs for r in d["rows"]  # noqa: E731
                                if (r["mode"], r["batch"], r["steps"]) == (mode, batch, "eager ops")]
    b1, b16, s16 = rows("blt", 1), rows("blt", 16), rows("blt-s16", 1)
    assert len(runs) == 3 and len(b1) == len(b16) == 3 and all(d["threads"] == 2 for d in runs)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    for figure in (f"`blt` writes {_span([r['bytes_per_s'] for r in b1], ',.0f')} bytes/s at batch 1, "
                   f"{_span([r['x_hf_blt'] for r in b1], '.1f')}× transformers' `BltForCausalLM` timed in the same "
                   f"run ({_span([d['hf']['hf_blt']['bytes_per_s'] for d in runs], '.0f')} bytes/s), and "
                   f"{_span([r['bytes_per_s'] for r in b16], ',.0f')} bytes/s at batch 16 "
                   f"({_span([a['bytes_per_s'] / b['bytes_per_s'] for a, b in zip(b16, b1)], '.1f')}× batch 1); "
                   f"`blt-s16` writes {_span([r['bytes_per_s'] for r in s16], ',.0f')} bytes/s at batch 1"):
        assert figure in readme, f"README should say {figure!r} (benchmarks/cpu/speed_run*.json)"
