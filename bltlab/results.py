"""The results page: the paper's table reproduced on our model, from `bench` JSON files.

`python -m bltlab results --bench translation=benchmarks/translation.json --bench code=... --out docs/results.md`
writes the markdown page and a plotly figure of bandwidth against quality beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

PAPER = {  # Fast BLT, 3B, estimated bandwidth relative to the per-byte BLT (docs/results.md, "Two baselines")
    "blt-d4": "< 0.5, about matched BLEU / pass@1", "blt-d16": "0.08–0.13, lower code pass@1",
    "blt-dv16": "≈ 0.19, quality recovered", "blt-s16": "≈ 0.23, output identical to BLT",
}

DIAGNOSE = (  # the page's note on the diagnostic benchmark (bltlab/diagnose.py); its numbers live in its JSON
    "`python -m bltlab diagnose` (bltlab/diagnose.py; JSON in `benchmarks/diagnose_small.json`) measures two "
    "things on held-out data. *Heads*: on validation windows of code and EN→FR text, blocks of B = 4, 8 and 16 "
    "bytes start at the model's own patch starts (as in training and decoding), and one training forward scores "
    "each block B times, copy j with its first j bytes revealed; per block slot it reports the masked-block "
    "head's accuracy with the slot's prefix revealed (left to right, one byte per pass), with nothing revealed "
    "(the first denoising pass) and with only the first byte revealed (`blt-dv`'s draft), beside the "
    "autoregressive head's accuracy at the same bytes; each head's reliability diagram and expected calibration "
    "error; and the teacher-forced outcome of the rule \"exact first byte, then commit a left-to-right run while "
    "the confidence exceeds τ\" (decoder passes per byte against accuracy). *Modes*: every mode and knob "
    "(`blt-d*` at several α, `blt-dv*`, `blt-h` at several η) on held-out prompts, greedy: decoder passes per "
    "byte, chrF, the output's bits/byte under the model's own autoregressive path, and the share of outputs "
    "identical to `blt`'s. `bltlab.diagnose.figure` draws the per-slot accuracies and the reliability diagram.\n"
)

# the diagnostic's rows the page shows: the paper's rule, the in-order rule at its best quality, DV, the hybrid
DIAGNOSE_ROWS = ("blt", "blt-d4 α=0.9 any-order", "blt-d4 α=0.99 in-order exact-first", "blt-d16 α=0.9 any-order",
                 "blt-d16 α=0.99 in-order exact-first", "blt-dv16", "blt-h η=0.3 any-order", "blt-h η=0.3 in-order")


def _slot_mean(report: dict, key: str) -> float:
    """Mean over block slots 1.. of one head's accuracy (slot 0 is the first byte, which every rule
    may take from the exact distribution)."""
    slots = report["slots"][1:]
    return sum(s[key] for s in slots) / len(slots)


def diagnosis(diag: dict) -> str:
    """Where diffusion pays on this model and where it does not, each figure read from the diagnostic's JSON."""
    heads = diag["heads"]["results"]
    rows = {(r["task"], r["label"]): r for r in diag["modes"]["rows"]}
    lines = ["### What the diagnostic found\n"]
    for src, b in (("code", "4"), ("fr", "4")):
        r = heads[src][b]
        lines.append(f"- {src}, blocks of {b}: the masked-block head is right on {_slot_mean(r, 'acc_prefix'):.2f} of "
                     f"slots 1..{int(b) - 1} with the slots before revealed (left to right, one byte per pass) "
                     f"and on {_slot_mean(r, 'acc_masked'):.2f} with nothing revealed (a first denoising pass), "
                     f"where the autoregressive head is right on {_slot_mean(r, 'acc_ar'):.2f} of the same bytes.")
    lines.append("\n| task | mode and knobs | decoder passes / byte | encoder + global passes / byte | chrF | "
                 "gen bits/byte | identical to blt |\n|---|---|---|---|---|---|---|")
    for task in diag["modes"]["tasks"]:
        for name in DIAGNOSE_ROWS:
            r = rows.get((task, name))
            if r:
                lines.append(f"| {task} | `{name}` | {r['passes_per_byte']:.2f} | {r['enc_per_byte']:.2f} | "
                             f"{r['chrf']:.1f} | {r['gen_bpb']:.2f} | {r['identical_to_blt']:.2f} |")
    paper, ordered = "blt-d4 α=0.9 any-order", "blt-d4 α=0.99 in-order exact-first"
    got = [(t, rows[(t, "blt")], rows[(t, paper)], rows[(t, ordered)]) for t in diag["modes"]["tasks"]
           if (t, paper) in rows and (t, ordered) in rows]
    lines.append(
        "\nThe paper's rule commits at least one guess per pass, and the head's guesses are far from the "
        "autoregressive head's: the output's bits/byte under the model's own autoregressive path rises "
        "several-fold (`" + paper + "`: " + "; ".join(
            f"{t} {p['gen_bpb']:.2f} against `blt`'s {b['gen_bpb']:.2f}" for t, b, p, _ in got) + "). "
        "Committing only the run of slots above α from the left and taking the exact byte where the head is "
        "unsure (`in_order`, `exact_first`; the app's 'Left to right, exact where unsure') keeps the output "
        "near `blt`'s (`" + ordered + "`: " + "; ".join(
            f"{t} chrF {o['chrf']:.1f} against {b['chrf']:.1f}, bits/byte {o['gen_bpb']:.2f} against "
            f"{b['gen_bpb']:.2f}, {o['passes_per_byte']:.2f} decoder passes per byte against "
            f"{b['passes_per_byte']:.2f}" for t, b, _, o in got) + "). "
        "A block the head cuts short is followed by `blt`'s steps until the entropy rule opens a patch, where "
        "the next block starts, so blocks begin patches where the text does (encoder + global passes per byte: "
        + "; ".join(f"{t} {o['enc_per_byte']:.2f} against `blt`'s {b['enc_per_byte']:.2f}" for t, b, _, o in got)
        + "). A block filled to its end is followed at once by the next, whose first denoising pass rides on the "
        "pass that pushes the block before it (the training forward runs a clean stream and its noisy blocks "
        "together in the same way); a block after `blt`'s steps needs a pass of its own to learn whether the "
        "head is sure, and on this model it seldom is, which is what the rule costs over `blt` (decoder passes "
        "per byte " + ", ".join(f"{o['passes_per_byte'] / b['passes_per_byte'] - 1:+.0%} on {t}"
                                for t, b, _, o in got) + "). "
        "`blt-dv*` writes `blt`'s bytes exactly; its cost depends on how much of each draft is accepted. The "
        "cure the numbers point to is a better masked-block head (the recipe: README, 'Reproducing the "
        "shipped model').\n")
    return "\n".join(lines)


COLUMNS = [("rel_bandwidth", "rel. BW (ours)"), ("rel_bandwidth_3b", "rel. BW (3B, cached BLT)"),
           ("rel_bandwidth_nocache_3b", "rel. BW (3B, per-byte BLT)"), ("rel_bandwidth_full", "rel. bytes read (full)"),
           ("identical_to_blt", "identical to blt"), ("chrf", "chrF"), ("bleu", "BLEU"), ("gen_bpb", "gen bpb"),
           ("bytes_per_s", "bytes/s (CPU)")]


def table(res: dict) -> str:
    head = "| mode | " + " | ".join(c for _, c in COLUMNS) + " | paper (3B, per-byte BLT) |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for mode, r in res["modes"].items():
        cells = [f"{r[k]:.3g}" if isinstance(r.get(k), (int, float)) else "–" for k, _ in COLUMNS]
        rows.append(f"| `{mode}` | " + " | ".join(cells) + f" | {PAPER.get(mode, '')} |")
    return "\n".join(rows)


def figure(benches: dict[str, dict]):
    """Plotly figure: relative bandwidth (3B, per-byte baseline) against chrF per mode."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for task, res in benches.items():
        modes = [m for m, r in res["modes"].items() if "chrf" in r]
        fig.add_trace(go.Scatter(
            x=[res["modes"][m]["rel_bandwidth_nocache_3b"] for m in modes],
            y=[res["modes"][m]["chrf"] for m in modes], text=modes, mode="markers+text",
            textposition="top center", name=task))
    fig.update_layout(xaxis_title="bandwidth relative to per-byte BLT (paper formula, 3B counts)",
                      yaxis_title="chrF", template="plotly_white", title="Bandwidth against quality")
    return fig


def write_page(benches: dict[str, dict], out: str | Path, command: str, diag: dict | None = None) -> None:
    """The results page from bench results ({task: JSON}) and, if given, the diagnostic's JSON."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    any_res = next(iter(benches.values()))
    parts = [
        "# Results: the Fast BLT table on bltlab's shipped model\n",
        f"Generated by `{command}` (model `{any_res['model']}`, device `{any_res['device']}`, greedy, "
        f"at most {any_res['max_bytes']} bytes per prompt, knobs {any_res['knobs'] or 'default'}). "
        "Numbers are only as good as the shipped checkpoint: see the README for how it was trained.\n",
        "## Two baselines\n",
        "The paper prices a generation as parameters read per pass: "
        "`N_dec·P_dec + N_enc·(P_enc + P_glob)`. *rel. BW (3B, per-byte BLT)* divides a mode's cost per "
        "byte by that of a BLT that runs encoder + global for **every byte** (as the official generator "
        "does): 1 decoder pass + 1 encoder/global pass per byte. *rel. BW (3B, cached BLT)* divides instead "
        "by our cached `blt`, which runs encoder + global **once per patch**, so it already saves most of the "
        "global model's reads; the fast modes then save less in relative terms. Both use the same pass "
        "counts priced with the paper's 3B parameter counts (global 2.82 B, encoder 26 M, decoder 160 M). "
        "*rel. BW (ours)* prices them with our model's own parameter counts, and *rel. bytes read (full)* "
        "also counts the entropy model, the local encoder's byte layers, embedding rows and KV-cache reads "
        "at fp32. The paper's own figures (last column) are against the per-byte BLT: the fewest passes per byte "
        "a mode can run, priced at 3B, already exceed them against cached BLT (notebook 07 works it out).\n",
    ]
    for task, res in benches.items():
        parts += [f"## {task} ({res['modes']['blt']['prompts']} held-out prompts, `{res.get('prompts_file', '')}`)\n",
                  table(res) + "\n"]
    fig_path = out.with_suffix(".html")
    # plotly.js next to the page (written once, then left as it is), never from a CDN: it opens offline
    figure(benches).write_html(str(fig_path), include_plotlyjs="directory")
    parts.append(f"Figure: [{fig_path.name}]({fig_path.name}) (plotly; bandwidth against chrF per mode).\n")
    parts += ["## Why diffusion loses here: `python -m bltlab diagnose`\n", DIAGNOSE]
    if diag is not None:
        parts.append(diagnosis(diag))
    out.write_text("\n".join(parts))


def load_benches(specs: list[str]) -> dict[str, dict]:
    """'task=path.json' specs -> {task: bench result}."""
    out = {}
    for spec in specs:
        task, _, path = spec.partition("=")
        if not path:
            raise ValueError(f"--bench takes TASK=FILE.json, got {spec!r}")
        out[task] = json.loads(Path(path).read_text())
    return out
