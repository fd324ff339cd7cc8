"""The decoding benchmark: every mode on the same prompts, counted, priced and scored.

`python -m bltlab bench --prompts FILE.jsonl` (lines: {"prompt", "reference"?, "stop"?, "task"?}).
Cached `blt` always runs first: it is the baseline of `rel_bandwidth` and `identical_to_blt`.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .cost import bandwidth, nocache_baseline, part_params, project
from .data import load_documents, translation_pairs
from .decode import MODES, generate
from .decode.common import cost_stats, new_counters
from .model import BLT
from .tokens import encode


def read_prompts(path: str | Path) -> list[dict]:
    """Read a JSONL prompt file; clear errors for bad lines."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}:{i}: each line needs a string 'prompt'")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def make_prompts(task: str, n: int, seed: int = 0, context: int = 192, continuation: int = 64) -> list[dict]:
    """Held-out prompts: EN->FR pairs ("translation") or stdlib code continuation ("code")."""
    rng = random.Random(seed)
    if task == "translation":
        pairs = translation_pairs("fr", "val")
        pick = rng.sample(pairs, min(n, len(pairs)))
        return [{"prompt": f"EN: {en}\nFR: ", "reference": fr, "stop": "\n", "task": "translation"}
                for en, fr in pick]
    if task == "code":
        rows = []
        docs = [d for d in load_documents("code", "val") if len(d.text) > 4 * (context + continuation)]
        while len(rows) < n:
            text = rng.choice(docs).text
            lines = [i + 1 for i, b in enumerate(text[: -(context + continuation)]) if b == 10]
            at = rng.choice(lines)
            chunk = text[at:at + context + continuation]
            try:
                prompt, ref = chunk[:context].decode(), chunk[context:].decode()
            except UnicodeDecodeError:
                continue
            rows.append({"prompt": prompt, "reference": ref, "task": "code"})
        return rows
    raise ValueError(f"unknown task {task!r}: translation or code")


@torch.no_grad()
def generated_bpb(model: BLT, prompt: str, output: bytes) -> float:
    """Bits per byte of `output` after `prompt` under the model's own autoregressive path."""
    if not output:
        return float("nan")
    ids = encode(prompt.encode() + output)
    x = torch.tensor([ids], device=next(model.parameters()).device)
    logits = model(x, model.patch(x))[0, :-1]
    n = len(output)
    ce = F.cross_entropy(logits[-n:].float(), x[0, -n:], reduction="sum")
    return float(ce) / n / math.log(2)


def run_bench(model: BLT, prompts: list[dict], modes: list[str], max_bytes: int = 64, knobs: dict | None = None,
              progress: bool = True) -> dict:
    """Run every mode (greedy) on every prompt; return the JSON structure documented in the README."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    modes = ["blt"] + [m for m in modes if m != "blt"]
    knobs = knobs or {}
    params = part_params(model)
    outputs: dict[str, list[bytes]] = {}
    result = {}
    bar = tqdm(total=len(modes) * len(prompts), desc="bench", disable=not progress)
    for mode in modes:
        tot = new_counters() | cost_stats()
        outs, secs, bpbs = [], 0.0, []
        for row in prompts:
            budget = min(max_bytes, model.cfg.max_bytes - len(encode(row["prompt"])))
            t0 = time.perf_counter()
            g = generate(model, row["prompt"], mode, max_bytes=budget, stop=row.get("stop"), **knobs)
            secs += time.perf_counter() - t0
            for k in tot:
                tot[k] += g.counters.get(k, 0)
            outs.append(g.output)
            bpbs.append(generated_bpb(model, row["prompt"], g.output))
            bar.update(1)
        outputs[mode] = outs
        n_bytes = sum(len(o) for o in outs)
        bw = bandwidth(tot, params, model.cfg.d_local)
        per_byte = lambda gb: gb / max(n_bytes, 1)
        r = {"prompts": len(prompts), "bytes": n_bytes, "n_dec": tot["n_dec"], "n_enc": tot["n_enc"],
             "n_ent": tot["n_ent"], "bandwidth_gb_paper": bw["paper"], "bandwidth_gb_full": bw["full"],
             "gb_1b": project(tot, "paper-1b"), "gb_3b": project(tot, "paper-3b"),
             "identical_to_blt": sum(a == b for a, b in zip(outs, outputs["blt"])) / len(prompts),
             "gen_bpb": sum(b for b in bpbs if b == b) / max(1, sum(b == b for b in bpbs)),
             "seconds": secs, "bytes_per_s": n_bytes / secs if secs else 0.0}
        base = result.get("blt", r)
        r["rel_bandwidth"] = per_byte(r["bandwidth_gb_paper"]) / (base["bandwidth_gb_paper"] / max(base["bytes"], 1))
        r["rel_bandwidth_full"] = per_byte(r["bandwidth_gb_full"]) / (base["bandwidth_gb_full"] / max(base["bytes"], 1))
        r["rel_bandwidth_1b"] = per_byte(r["gb_1b"]) / (base["gb_1b"] / max(base["bytes"], 1))
        r["rel_bandwidth_3b"] = per_byte(r["gb_3b"]) / (base["gb_3b"] / max(base["bytes"], 1))
        r["rel_bandwidth_nocache_3b"] = per_byte(r["gb_3b"]) / nocache_baseline(1, "paper-3b")
        refs = [row.get("reference") for row in prompts]
        if all(isinstance(x, str) for x in refs):
            import sacrebleu

            hyps = [o.decode("utf-8", errors="replace").strip() for o in outs]
            r["chrf"] = sacrebleu.corpus_chrf(hyps, [[x.strip() for x in refs]]).score
            r["bleu"] = sacrebleu.corpus_bleu(hyps, [[x.strip() for x in refs]]).score
        result[mode] = r
    bar.close()
    dev = next(model.parameters()).device
    return {"model": model.cfg.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "max_bytes": max_bytes, "knobs": knobs, "params": params, "modes": result}


def format_table(res: dict) -> str:
    """A markdown table of the benchmark result."""
    cols = ["rel_bandwidth", "rel_bandwidth_3b", "rel_bandwidth_nocache_3b", "rel_bandwidth_full",
            "identical_to_blt", "chrf", "bleu", "gen_bpb", "bytes_per_s"]
    head = "| mode | bytes | n_dec | n_enc | n_ent | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode, r in res["modes"].items():
        vals = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else "–" for c in cols]
        lines.append(f"| {mode} | {r['bytes']} | {r['n_dec']} | {r['n_enc']} | {r['n_ent']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
