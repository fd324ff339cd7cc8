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

from .cost import bandwidth, cost_stats, new_counters, nocache_baseline, part_params, project
from .data import load_documents, translation_pairs
from .decode import MODES, generate, generate_batch
from .model import BLT
from .tokens import PAD, encode


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


def generated_bpb(model: BLT, prompt: str, output: bytes) -> float:
    """Bits per byte of `output` after `prompt` under the model's own autoregressive path."""
    return generated_bpbs(model, [prompt], [output])[0]


@torch.no_grad()
def generated_bpbs(model: BLT, prompts: list[str], outputs: list[bytes]) -> list[float]:
    """`generated_bpb` of each (prompt, output) pair, in one forward: the rows are right-padded with PAD,
    which no real position reads (every part is causal, and a byte reads finished patches only).
    NaN for an empty output."""
    rows = [encode(prompt.encode() + output) for prompt, output in zip(prompts, outputs)]
    x = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)  # [N, T]
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
    x = x.to(next(model.parameters()).device)
    logits = model(x, model.patch(x))  # [N, T, V]: logits[:, t] predicts x[:, t + 1]
    out = []
    for i, (r, output) in enumerate(zip(rows, outputs)):
        n, end = len(output), len(r)
        ce = F.cross_entropy(logits[i, end - 1 - n:end - 1].float(), x[i, end - n:end], reduction="sum")
        out.append(float(ce) / n / math.log(2) if n else float("nan"))
    return out


def run_mode(model: BLT, prompts: list[dict], mode: str, max_bytes: int = 64, knobs: dict | None = None,
             batch: bool = False, bar=None) -> dict:
    """Greedy generations of one mode on every prompt, with what every report of them needs: the
    outputs, the counters summed over the prompts, the seconds spent decoding, and each output's
    bits/byte under the model's own autoregressive path (`generated_bpb`). One function, so that
    `run_bench` and `bltlab.diagnose` measure modes the same way.

    batch=True decodes the prompts that share a stop string and a budget together (generate_batch:
    the same greedy bytes and per-prompt counters, several times faster on a CPU); `run_bench`
    keeps batch 1, since it reports bytes/s at batch 1. `bar` (tqdm) advances once per prompt."""
    knobs = knobs or {}
    tot = new_counters() | cost_stats()
    outs: list[bytes] = [b""] * len(prompts)
    groups: dict = {}
    for i, row in enumerate(prompts):
        budget = min(max_bytes, model.cfg.max_bytes - len(encode(row["prompt"])))
        groups.setdefault((row.get("stop"), budget) if batch else i, (budget, []))[1].append(i)
    secs = 0.0
    for budget, idx in groups.values():
        stop = prompts[idx[0]].get("stop")
        t0 = time.perf_counter()
        if batch:
            gens = generate_batch(model, [prompts[i]["prompt"] for i in idx], mode, max_bytes=budget, stop=stop,
                                  **knobs)
        else:
            gens = [generate(model, prompts[idx[0]]["prompt"], mode, max_bytes=budget, stop=stop, **knobs)]
        secs += time.perf_counter() - t0
        for i, g in zip(idx, gens):
            for k in tot:
                tot[k] += g.counters.get(k, 0)
            outs[i] = g.output
        if bar is not None:
            bar.update(len(idx))
    bpbs = [float("nan")] * len(prompts)
    for _, idx in groups.values():
        for i, b in zip(idx, generated_bpbs(model, [prompts[i]["prompt"] for i in idx], [outs[i] for i in idx])):
            bpbs[i] = b
    return {"outputs": outs, "counters": tot, "seconds": secs, "bpb": bpbs}


def mean_bpb(bpbs: list[float]) -> float:
    """Mean of per-output bits/byte, skipping empty outputs (NaN)."""
    return sum(b for b in bpbs if b == b) / max(1, sum(b == b for b in bpbs))


def identical_share(outs: list[bytes], base: list[bytes]) -> float:
    """Share of prompts whose output equals the baseline's byte for byte."""
    return sum(a == b for a, b in zip(outs, base)) / len(outs)


def reference_scores(outs: list[bytes], prompts: list[dict]) -> dict:
    """Corpus chrF and BLEU (sacrebleu) of the outputs against the prompts' references, both sides
    stripped; {} unless every prompt has a reference."""
    refs = [row.get("reference") for row in prompts]
    if not all(isinstance(x, str) for x in refs):
        return {}
    import sacrebleu

    hyps = [o.decode("utf-8", errors="replace").strip() for o in outs]
    refs = [[x.strip() for x in refs]]
    return {"chrf": sacrebleu.corpus_chrf(hyps, refs).score, "bleu": sacrebleu.corpus_bleu(hyps, refs).score}


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
        run = run_mode(model, prompts, mode, max_bytes, knobs, bar=bar)
        tot, outs, secs = run["counters"], run["outputs"], run["seconds"]
        outputs[mode] = outs
        n_bytes = sum(len(o) for o in outs)
        bw = bandwidth(tot, params, model.cfg.d_local)
        per_byte = lambda gb: gb / max(n_bytes, 1)
        r = {"prompts": len(prompts), "bytes": n_bytes, "n_dec": tot["n_dec"], "n_enc": tot["n_enc"],
             "n_ent": tot["n_ent"], "bandwidth_gb_paper": bw["paper"], "bandwidth_gb_full": bw["full"],
             "gb_1b": project(tot, "paper-1b"), "gb_3b": project(tot, "paper-3b"),
             "identical_to_blt": identical_share(outs, outputs["blt"]), "gen_bpb": mean_bpb(run["bpb"]),
             "seconds": secs, "bytes_per_s": n_bytes / secs if secs else 0.0}
        base = result.get("blt", r)
        r["rel_bandwidth"] = per_byte(r["bandwidth_gb_paper"]) / (base["bandwidth_gb_paper"] / max(base["bytes"], 1))
        r["rel_bandwidth_full"] = per_byte(r["bandwidth_gb_full"]) / (base["bandwidth_gb_full"] / max(base["bytes"], 1))
        r["rel_bandwidth_1b"] = per_byte(r["gb_1b"]) / (base["gb_1b"] / max(base["bytes"], 1))
        r["rel_bandwidth_3b"] = per_byte(r["gb_3b"]) / (base["gb_3b"] / max(base["bytes"], 1))
        r["rel_bandwidth_nocache_3b"] = per_byte(r["gb_3b"]) / nocache_baseline(1, "paper-3b")
        r.update(reference_scores(outs, prompts))
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
