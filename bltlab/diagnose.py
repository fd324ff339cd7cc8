"""The diagnostic benchmark of issue 22: where block diffusion loses to autoregression on a model,
and which decoding rule could pay. `python -m bltlab diagnose` prints tables and writes JSON.

Part A (heads), on held-out text (each source's validation split): blocks of B bytes start at the
model's own patch starts (training's `sample_blocks` picks them, so the condition is the one the
head was trained on and the one decoding meets: a diffusion block always opens a patch). One
training forward scores every block B times, copy j with slots 0..j-1 revealed and slots j..B-1
masked. That triangle holds each slot's masked-block prediction with its prefix revealed (copy j
for slot j: left to right, one byte per pass), with nothing revealed (copy 0: what the first
denoising pass sees), with only the first byte revealed (copy 1: the draft of `blt-dv`), and the
teacher-forced outcome of any left-to-right rule (`run_rule`, `run_rule_fallback`). Beside it, the autoregressive head
at the same bytes: the clean stream of the same forward, the model's ordinary next-byte
prediction with the true prefix. Both heads are read as decoding reads them (`allowed` ids only).

Part B (modes), on held-out prompts (`bench.make_prompts`), greedy: per mode and knob, decoder
passes per byte, chrF, the output's bits/byte under the model's own autoregressive path, and the
share of outputs identical to `blt`'s, all measured by `bench.run_mode` as `bench` measures them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .bench import identical_share, make_prompts, mean_bpb, reference_scores, run_mode
from .data import load_documents, validation_windows
from .decode import MODES
from .decode.common import allowed
from .model import BLT
from .tokens import MASK, is_byte
from .train import sample_blocks

BLOCKS = (4, 8, 16)  # the trained block sizes
SOURCES = ("code", "fr")  # held-out text: stdlib code, EN->FR pairs
TASKS = ("code", "translation")  # held-out prompts (bench.make_prompts)
DIFFUSION = ("blt-d4", "blt-d8", "blt-d16")  # the modes the α grid applies to
DEFAULT_MODES = ("blt", *DIFFUSION, "blt-dv4", "blt-dv8", "blt-dv16", "blt-h")
ALPHAS = (0.5, 0.7, 0.9, 0.99)
ETAS = (0.05, 0.3, 1.0)
TAUS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # thresholds of the left-to-right rule (> τ commits)
BINS = 10  # equal-width confidence bins of the reliability diagram


@dataclass
class Triangle:
    """Teacher-forced predictions on N blocks of B bytes (ids of the model's outputs, 0..259)."""

    conf: torch.Tensor  # [N, B copy j, B slot k] masked head's top probability; copy j reveals slots < j
    pred: torch.Tensor  # [N, B, B] its argmax
    ar_conf: torch.Tensor  # [N, B] autoregressive head's top probability for the byte at slot k
    ar_pred: torch.Tensor  # [N, B] its argmax
    target: torch.Tensor  # [N, B] the true ids
    row: torch.Tensor  # [N] window each block comes from
    start: torch.Tensor  # [N] its first byte's position (a patch start)

    @classmethod
    def cat(cls, parts: list["Triangle"]) -> "Triangle":
        """The blocks of several Triangles of one block size, in order."""
        return cls(*(torch.cat([vars(t)[name] for t in parts]) for name in cls.__dataclass_fields__))

    @property
    def ok(self) -> torch.Tensor:
        """[N, B, B] bool: the masked head is right."""
        return self.pred == self.target[:, None]

    @property
    def ar_ok(self) -> torch.Tensor:
        """[N, B] bool: the autoregressive head is right."""
        return self.ar_pred == self.target

    @property
    def diag(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(conf, ok, pred) [N, B] of slot k with slots < k revealed: the prefix-revealed condition."""
        k = torch.arange(self.conf.shape[1])
        return self.conf[:, k, k], self.ok[:, k, k], self.pred[:, k, k]


@torch.no_grad()
def score_blocks(model: BLT, ids: torch.Tensor, block: int, gen: torch.Generator, rows: int = 4,
                 max_noisy: int = 2048) -> Triangle:
    """Part A's one measurement: [W, T] windows -> the Triangle of every block that training's
    `sample_blocks` draws from them (up to T / (2 block) per window, as in training) and whose
    bytes are all real (no document boundary inside, as in a decoded block). `rows` windows share
    a forward: the clean stream plus B copies of each of its blocks, at most `max_noisy` noisy
    positions (the mask is dense, so one long forward costs more than a few short ones). A copy
    attends only to itself and the clean bytes before its block (the model's block mask), so the
    copies never see each other."""
    dev = next(model.parameters()).device
    rev = torch.arange(block, device=dev) < torch.arange(block, device=dev)[:, None]  # [j, k]: k < j revealed
    per = max(1, max_noisy // block ** 2)  # blocks per forward
    parts: list[tuple] = []
    for r0 in range(0, len(ids), rows):
        x = ids[r0:r0 + rows].to(dev)  # [R, T]
        starts = model.patch(x)  # [R, T] the model's own patches
        bst_all, _, clean_all, _, _ = sample_blocks(x, starts, block, max(1, x.shape[1] // (2 * block)), gen)
        for g0 in range(0, bst_all.shape[1], per):
            bst, clean = bst_all[:, g0:g0 + per], clean_all[:, g0:g0 + per]  # [R, nb] (-1: none), [R, nb, B]
            R, nb = bst.shape
            noisy = torch.where(rev, clean[:, :, None], torch.full_like(clean[:, :, None], MASK))  # [R, nb, B, B]
            lc, ln = model(x, starts, bst.repeat_interleave(block, 1), noisy.flatten(1, 2))  # [R,T,V], [R,nb B,B,V]
            conf, pred = allowed(ln.float()).softmax(-1).max(-1)  # [R, nb B, B]
            at = bst.clamp(min=0)[..., None] + torch.arange(block, device=dev) - 1  # [R, nb, B] row predicting s + k
            ar = allowed(lc.float()).softmax(-1)[torch.arange(R, device=dev)[:, None, None], at]  # [R, nb, B, V]
            ar_conf, ar_pred = ar.max(-1)
            keep = (bst >= 0) & is_byte(clean).all(-1)  # [R, nb]
            where = torch.arange(R, device=dev)[:, None].expand(R, nb) + r0
            parts.append((conf.view(R, nb, block, block)[keep], pred.view(R, nb, block, block)[keep],
                          ar_conf[keep], ar_pred[keep], clean[keep], where[keep], bst[keep]))
    return Triangle(*(torch.cat(p).cpu() for p in zip(*parts)))


def _rate(x: torch.Tensor) -> float | None:
    """Mean of a tensor as a float (a share for bools); None when empty."""
    return float(x.float().mean()) if x.numel() else None


def calibration(conf: torch.Tensor, ok: torch.Tensor, bins: int = BINS) -> dict:
    """Reliability diagram and expected calibration error of one head: confidences [n] in equal-width
    bins on [0, 1], each with its count, mean confidence and accuracy; ECE = Σ_b (n_b / n) |acc_b − conf_b|."""
    conf, ok = conf.flatten().double(), ok.flatten().double()
    idx = (conf * bins).long().clamp(0, bins - 1)  # [n]
    n = torch.zeros(bins, dtype=torch.double).index_add_(0, idx, torch.ones_like(conf))
    c = torch.zeros(bins, dtype=torch.double).index_add_(0, idx, conf)
    a = torch.zeros(bins, dtype=torch.double).index_add_(0, idx, ok)
    ece = float(((a - c).abs()).sum() / max(len(conf), 1))  # Σ_b |n_b acc_b − n_b conf_b| / n
    rows = [{"lo": b / bins, "hi": (b + 1) / bins, "n": int(n[b]),
             "conf": float(c[b] / n[b]) if n[b] else None, "acc": float(a[b] / n[b]) if n[b] else None}
            for b in range(bins)]
    return {"n": len(conf), "acc": _rate(ok), "conf": _rate(conf), "ece": ece, "bins": rows}


def slot_table(tri: Triangle) -> list[dict]:
    """Per slot k: the masked head's accuracy and mean confidence with slots < k revealed (prefix),
    with nothing revealed (masked), with only slot 0 revealed (first; slot 0 has none), the
    autoregressive head's at the same bytes, and how often the prefix-revealed masked head picks
    the autoregressive head's byte."""
    d_conf, d_ok, d_pred = tri.diag
    ok, ar_ok = tri.ok, tri.ar_ok
    out = []
    for k in range(tri.conf.shape[1]):
        out.append({"slot": k, "n": len(tri.target), "acc_prefix": _rate(d_ok[:, k]), "acc_masked": _rate(ok[:, 0, k]),
                    "acc_first": _rate(ok[:, 1, k]) if k >= 1 else None, "acc_ar": _rate(ar_ok[:, k]),
                    "conf_prefix": _rate(d_conf[:, k]), "conf_masked": _rate(tri.conf[:, 0, k]),
                    "conf_first": _rate(tri.conf[:, 1, k]) if k >= 1 else None, "conf_ar": _rate(tri.ar_conf[:, k]),
                    "agree_prefix_ar": _rate(d_pred[:, k] == tri.ar_pred[:, k])})
    return out


def thresholds(tri: Triangle, taus: tuple = TAUS, first: bool = False) -> list[dict]:
    """Slots k >= 1 (slot 0 is exact in the rules of issue 22), prefix revealed (or, with `first`,
    only slot 0 revealed: what one pass after an exact first byte sees): per τ, the share of
    predictions whose confidence exceeds τ, the masked head's accuracy on them, the autoregressive
    head's on the same bytes, and how often the two pick the same byte."""
    if first:
        conf, ok, pred = tri.conf[:, 1, 1:], tri.ok[:, 1, 1:], tri.pred[:, 1, 1:]
    else:
        conf, ok, pred = (t[:, 1:] for t in tri.diag)
    ar_ok, ar_pred = tri.ar_ok[:, 1:], tri.ar_pred[:, 1:]
    out = []
    for tau in taus:
        sel = conf > tau
        out.append({"tau": tau, "coverage": _rate(sel), "acc": _rate(ok[sel]), "acc_ar_same": _rate(ar_ok[sel]),
                    "agree_ar": _rate(pred[sel] == ar_pred[sel])})
    return out


def tau_matching_ar(tri: Triangle) -> float | None:
    """The smallest τ on a 0.01 grid at which the prefix-revealed masked head, counted where its
    confidence exceeds τ, is right at least as often as the autoregressive head on all slots k >= 1;
    None if no τ < 1 gets there."""
    conf, ok, _ = (t[:, 1:] for t in tri.diag)
    target = float(tri.ar_ok[:, 1:].float().mean())
    for i in range(100):
        sel = conf > i / 100
        if sel.any() and float(ok[sel].float().mean()) >= target:
            return i / 100
    return None


def run_rule(tri: Triangle, taus: tuple = TAUS) -> list[dict]:
    """Teacher-forced outcome of "exact first byte + a confident left-to-right run": slot 0 takes the
    autoregressive head's byte (which the previous block's last pass computed); then each denoising
    pass, with the slots committed so far revealed, commits the first masked slot and the slots
    after it while their confidence exceeds τ; one more pass pushes the finished block. τ = 1 is
    one byte per pass (the prefix-revealed diagonal, `blt`'s cost); τ = 0 one pass (blt-dv's draft,
    unverified). While the committed bytes are right, the revealed prefix is the true one, so the
    rule's accuracy up to its first error is exactly what decoding would see.

    Per τ: decoder passes per byte ((passes + 1) / B), the rule's accuracy over all slots beside the
    autoregressive head's, and the share of slots where the rule picks the autoregressive byte."""
    N, B = tri.target.shape
    k = torch.arange(B)
    out = []
    for tau in taus:
        done = torch.ones(N, dtype=torch.long)  # slots committed (slot 0: exact)
        pred = tri.pred[:, 0].clone()  # [N, B] the rule's bytes
        pred[:, 0] = tri.ar_pred[:, 0]
        ok = tri.ar_ok.clone()  # [N, B] the rule is right
        passes = torch.zeros(N, dtype=torch.long)
        while bool((done < B).any()):
            live = done < B  # [N]
            j = done.clamp(max=B - 1)  # the copy with the committed slots revealed
            conf = tri.conf[torch.arange(N), j]  # [N, B]
            run = ((conf > tau) | (k == j[:, None]) | (k < j[:, None])).long().cumprod(1).bool()
            new = run & (k >= j[:, None]) & live[:, None]  # [N, B] committed by this pass
            pred = torch.where(new, tri.pred[torch.arange(N), j], pred)
            ok = torch.where(new, tri.ok[torch.arange(N), j], ok)
            done = done + new.sum(1)
            passes = passes + live.long()
        out.append({"tau": tau, "passes_per_byte": float((passes + 1).sum()) / (N * B) if N else None,
                    "acc": _rate(ok), "acc_ar": _rate(tri.ar_ok), "agree_ar": _rate(pred == tri.ar_pred)})
    return out


def run_rule_fallback(tri: Triangle, taus: tuple = TAUS) -> list[dict]:
    """Teacher-forced outcome of "exact byte, then a confident left-to-right run, else fall back": each
    round takes the autoregressive head's byte at the first open slot i, then one denoising pass with
    slots <= i revealed commits the slots after i while their confidence exceeds τ, and nothing else (an
    unsure slot is left to the next round's exact byte); pushing the committed bytes gives the next
    exact byte. A round is two decoder passes as bltlab decodes now (a push, then a denoising pass),
    or one if the push and the denoising pass share it (the training forward does: clean stream and
    noisy block in one pass). τ = 1 is `blt`; τ = 0 commits a whole block per round unverified.

    Per τ: passes per byte both ways, the rule's accuracy over all slots beside the autoregressive
    head's, the share of slots where it picks the autoregressive byte, and the share the masked head
    filled."""
    N, B = tri.target.shape
    k, n = torch.arange(B), torch.arange(N)
    out = []
    for tau in taus:
        i = torch.zeros(N, dtype=torch.long)  # the first open slot: its byte is exact
        pred, ok = tri.ar_pred.clone(), tri.ar_ok.clone()  # [N, B]; slots the run fills are overwritten
        masked = torch.zeros(N, B, dtype=torch.bool)
        rounds = torch.zeros(N, dtype=torch.long)
        while bool((i < B).any()):
            live = i < B  # [N]
            j = (i + 1).clamp(max=B - 1)  # the copy with slots <= i revealed
            more = live & (i + 1 < B)
            run = ((tri.conf[n, j] > tau) | (k < j[:, None])).long().cumprod(1).bool()
            new = run & (k >= j[:, None]) & more[:, None]  # [N, B] filled by the masked head this round
            pred = torch.where(new, tri.pred[n, j], pred)
            ok = torch.where(new, tri.ok[n, j], ok)
            masked |= new
            i = i + live.long() * (1 + new.sum(1))
            rounds = rounds + live.long()
        out.append({"tau": tau, "passes_per_byte": 2 * float(rounds.sum()) / (N * B) if N else None,
                    "fused_passes_per_byte": float(rounds.sum()) / (N * B) if N else None, "acc": _rate(ok),
                    "acc_ar": _rate(tri.ar_ok), "agree_ar": _rate(pred == tri.ar_pred), "masked_share": _rate(masked)})
    return out


def head_report(tri: Triangle, bins: int = BINS) -> dict:
    """Everything Part A reports for one (source, block size)."""
    d_conf, d_ok, _ = tri.diag
    calib = {"prefix": calibration(d_conf, d_ok, bins), "masked": calibration(tri.conf[:, 0], tri.ok[:, 0], bins),
             "first": calibration(tri.conf[:, 1, 1:], tri.ok[:, 1, 1:], bins),
             "ar": calibration(tri.ar_conf, tri.ar_ok, bins)}
    return {"blocks": len(tri.target), "slots": slot_table(tri), "calibration": calib,
            "thresholds_prefix": thresholds(tri), "thresholds_first": thresholds(tri, first=True),
            "tau_matching_ar": tau_matching_ar(tri), "run_rule": run_rule(tri),
            "run_rule_fallback": run_rule_fallback(tri)}


def diagnose_heads(model: BLT, sources: tuple = SOURCES, blocks: tuple = BLOCKS, windows: int = 16, seed: int = 0,
                   rows: int = 4, progress: bool = True) -> dict:
    """Part A on `windows` evenly spaced validation windows of each source (model.cfg.max_bytes long)."""
    if model.cfg.arch == "hf":
        raise ValueError("weights in transformers' layout have no masked-block head to diagnose")
    out: dict = {}
    bar = tqdm(total=len(sources) * len(blocks) * windows, desc="heads", disable=not progress)
    for src in sources:
        ids = validation_windows(load_documents(src, "val"), model.cfg.max_bytes, windows)  # [W, T]
        out[src] = {"windows": len(ids)}
        for b in blocks:
            gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
            tris = []
            for r0 in range(0, len(ids), rows):  # one forward per `rows` windows, the bar moving after each
                tris.append(score_blocks(model, ids[r0:r0 + rows], b, gen, rows))
                tris[-1].row += r0  # window index within ids
                bar.update(len(ids[r0:r0 + rows]))
            tri = Triangle.cat(tris)
            out[src][str(b)] = head_report(tri)
    bar.close()
    return out


def mode_grid(modes: tuple = DEFAULT_MODES, alphas: tuple = ALPHAS, etas: tuple = ETAS) -> list[tuple[str, dict]]:
    """(mode, knobs) pairs: `blt` first, each blt-d* at every α, by the paper's rule (any order, no exact
    first byte) and in order with an exact first byte (the rule that falls back where the head is
    unsure: the library's default), blt-h at every η by both rules (α and block at their defaults),
    the other modes with their defaults."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    grid: list[tuple[str, dict]] = [("blt", {})]
    for m in modes:
        if m == "blt":
            continue
        if m in DIFFUSION:
            grid += [(m, {"alpha": a, "in_order": False, "exact_first": False}) for a in alphas]
            grid += [(m, {"alpha": a, "in_order": True, "exact_first": True}) for a in alphas]
        elif m == "blt-h":
            grid += [(m, {"eta": e, "in_order": False}) for e in etas]
            grid += [(m, {"eta": e, "in_order": True}) for e in etas]
        else:
            grid.append((m, {}))
    return grid


def label(mode: str, knobs: dict) -> str:
    """'blt-d4 α=0.9 any-order' (the paper's rule), 'blt-d4 α=0.99 in-order exact-first', 'blt-h η=0.3',
    'blt'."""
    names = {"alpha": "α", "eta": "η", "gamma": "γ", "block": "B", "in_order": "in-order",
             "exact_first": "exact-first"}
    words = [mode] + [names[k] if v is True else f"{names.get(k, k)}={v:g}" for k, v in knobs.items()
                      if not isinstance(v, bool) or v]
    return " ".join(words + (["any-order"] if knobs.get("in_order") is False else []))


def diagnose_modes(model: BLT, tasks: tuple = TASKS, prompts: int = 8, seed: int = 0, max_bytes: int = 48,
                   grid: list | None = None, progress: bool = True) -> list[dict]:
    """Part B: every (mode, knobs) of `grid` on `prompts` held-out prompts per task, greedy (batched:
    the same bytes and per-prompt counters as one prompt at a time)."""
    grid = grid or mode_grid()
    rows: list[dict] = []
    sets = {t: make_prompts(t, prompts, seed) for t in tasks}
    bar = tqdm(total=len(grid) * sum(len(p) for p in sets.values()), desc="modes", disable=not progress)
    for task, ps in sets.items():
        base: list[bytes] | None = None
        for mode, knobs in grid:
            run = run_mode(model, ps, mode, max_bytes, knobs, batch=True, bar=bar)
            outs, tot = run["outputs"], run["counters"]
            base = outs if base is None else base  # grid[0] is blt
            n = sum(len(o) for o in outs)
            rows.append({"task": task, "mode": mode, "knobs": knobs, "label": label(mode, knobs), "prompts": len(ps),
                         "bytes": n, "n_dec": tot["n_dec"], "n_enc": tot["n_enc"],
                         "passes_per_byte": tot["n_dec"] / n if n else None,
                         "enc_per_byte": tot["n_enc"] / n if n else None, "gen_bpb": mean_bpb(run["bpb"]),
                         "identical_to_blt": identical_share(outs, base), **reference_scores(outs, ps),
                         "example": outs[0].decode("utf-8", errors="replace")})
    bar.close()
    return rows


def run_diagnose(model: BLT, sources: tuple = SOURCES, blocks: tuple = BLOCKS, windows: int = 16, tasks: tuple = TASKS,
                 prompts: int = 8, max_bytes: int = 48, grid: list | None = None, seed: int = 0,
                 heads: bool = True, modes: bool = True, progress: bool = True) -> dict:
    """Both parts; the JSON `python -m bltlab diagnose` writes."""
    if heads and (windows < 1 or any(b < 2 or b > model.cfg.max_bytes // 2 for b in blocks) or not blocks):
        raise ValueError(f"heads need windows >= 1 and block sizes in [2, {model.cfg.max_bytes // 2}], "
                         f"got {windows} and {list(blocks)}")
    if modes and (prompts < 1 or max_bytes < 1):
        raise ValueError(f"modes need prompts >= 1 and max_bytes >= 1, got {prompts} and {max_bytes}")
    dev = next(model.parameters()).device
    torch.manual_seed(seed)
    res: dict = {"model": model.cfg.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "seed": seed, "patch_rule": model.cfg.patch.rule, "patch_threshold": model.cfg.patch.threshold}
    if heads:
        res["heads"] = {"sources": list(sources), "blocks": list(blocks), "window_bytes": model.cfg.max_bytes,
                        "taus": list(TAUS), "bins": BINS,
                        "results": diagnose_heads(model, sources, blocks, windows, seed, progress=progress)}
    if modes:
        res["modes"] = {"tasks": list(tasks), "prompts_per_task": prompts, "max_bytes": max_bytes,
                        "rows": diagnose_modes(model, tasks, prompts, seed, max_bytes, grid, progress)}
    return res


def _f(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_report(res: dict) -> str:
    """Markdown tables of a run_diagnose result."""
    out = [f"# diagnose: model {res['model']} on {res['device']}, seed {res['seed']}"]
    heads = res.get("heads", {}).get("results", {})
    if heads:
        out += ["", "## heads, in short (accuracy: mean over slots ≥ 1; slot 0: masked / AR; ECE over all slots)", "",
                "| source | B | blocks | masked, prefix revealed | masked, nothing revealed | AR | slot 0 "
                "| ECE prefix / masked / AR | τ matching AR | fallback τ=0.9: passes/byte (fused), acc |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for src, per in heads.items():
            for b, r in per.items():
                if b == "windows":
                    continue
                rest = r["slots"][1:]
                mean = lambda key: sum(x[key] for x in rest) / len(rest)  # noqa: E731 (slots share one n)
                c, s0 = r["calibration"], r["slots"][0]
                fb = next((v for v in r["run_rule_fallback"] if v["tau"] == 0.9), None)
                out.append(f"| {src} | {b} | {r['blocks']} | {_f(mean('acc_prefix'))} | {_f(mean('acc_masked'))} | "
                           f"{_f(mean('acc_ar'))} | {_f(s0['acc_prefix'])} / {_f(s0['acc_ar'])} | "
                           f"{_f(c['prefix']['ece'])} / {_f(c['masked']['ece'])} / {_f(c['ar']['ece'])} | "
                           f"{_f(r['tau_matching_ar'], 2)} | " + (f"{_f(fb['passes_per_byte'])} "
                           f"({_f(fb['fused_passes_per_byte'])}), {_f(fb['acc'])} |" if fb else "– |"))
    for src, per in heads.items():
        for b, r in per.items():
            if b == "windows":
                continue
            c = r["calibration"]
            out += ["", f"## heads: {src}, B = {b} ({r['blocks']} blocks from {per['windows']} windows)", "",
                    "accuracy of the masked-block head by what is revealed, beside the autoregressive (AR) head:", "",
                    "| slot | prefix revealed | nothing revealed | slot 0 revealed | AR | masked = AR byte "
                    "| conf prefix | conf AR |", "|---|---|---|---|---|---|---|---|"]
            out += [f"| {s['slot']} | {_f(s['acc_prefix'])} | {_f(s['acc_masked'])} | {_f(s['acc_first'])} | "
                    f"{_f(s['acc_ar'])} | {_f(s['agree_prefix_ar'])} | {_f(s['conf_prefix'])} | {_f(s['conf_ar'])} |"
                    for s in r["slots"]]
            out += ["", "calibration (all slots): " + ", ".join(
                f"{h} acc {_f(c[h]['acc'])} conf {_f(c[h]['conf'])} ECE {_f(c[h]['ece'])}"
                for h in ("prefix", "masked", "first", "ar")),
                f"τ at which the prefix-revealed masked head (conf > τ) matches AR's accuracy on slots ≥ 1: "
                f"{_f(r['tau_matching_ar'], 2)}", "",
                "prefix revealed, slots ≥ 1: the masked head where its confidence > τ, beside AR on the same bytes; "
                "two teacher-forced rules (accuracy over all slots; AR's: "
                f"{_f(r['run_rule'][0]['acc_ar'])}): *run* = exact first byte, then each pass commits the first "
                "masked slot and the run after it while conf > τ (+1 push per block); *fallback* = each round an "
                "exact byte, then only the confident run, the rest left to the next exact byte (2 passes a round, "
                "1 if fused):", "",
                "| τ | share conf > τ | masked acc there | AR acc there | run: passes/byte | run: acc "
                "| run: = AR byte | fallback: passes/byte (fused) | fallback: acc | fallback: masked share |",
                "|---|---|---|---|---|---|---|---|---|---|"]
            out += [f"| {t['tau']:g} | {_f(t['coverage'])} | {_f(t['acc'])} | {_f(t['acc_ar_same'])} | "
                    f"{_f(u['passes_per_byte'])} | {_f(u['acc'])} | {_f(u['agree_ar'])} | "
                    f"{_f(v['passes_per_byte'])} ({_f(v['fused_passes_per_byte'])}) | {_f(v['acc'])} | "
                    f"{_f(v['masked_share'])} |"
                    for t, u, v in zip(r["thresholds_prefix"], r["run_rule"], r["run_rule_fallback"])]
    if "modes" in res:
        out += ["", f"## modes (greedy, {res['modes']['prompts_per_task']} held-out prompts per task, "
                f"at most {res['modes']['max_bytes']} bytes)", "",
                "| task | mode | bytes | decoder passes/byte | chrF | gen bits/byte | identical to blt |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['task']} | {r['label']} | {r['bytes']} | {_f(r['passes_per_byte'])} | {_f(r.get('chrf'), 1)} | "
                f"{_f(r['gen_bpb'])} | {_f(r['identical_to_blt'], 2)} |" for r in res["modes"]["rows"]]
    return "\n".join(out)


def figure(res: dict, source: str = "code", block: int = 4):
    """Plotly figure for notebook 04: left, per-slot accuracy of the masked-block head (prefix revealed,
    solid; nothing revealed, dotted) and of the autoregressive head (dashed) for every block size;
    right, the reliability diagram of the heads at `block` (accuracy against confidence per bin)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    per = res["heads"]["results"][source]
    fig = make_subplots(1, 2, subplot_titles=(f"accuracy per block slot ({source})",
                                              f"reliability, B = {block} ({source})"))
    for i, b in enumerate(k for k in per if k != "windows"):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        slots = [s["slot"] for s in per[b]["slots"]]
        for key, dash, name in (("acc_prefix", "solid", "masked, prefix revealed"),
                                ("acc_masked", "dot", "masked, nothing revealed"), ("acc_ar", "dash", "AR")):
            fig.add_trace(go.Scatter(x=slots, y=[s[key] for s in per[b]["slots"]], mode="lines+markers",
                                     line={"color": color, "dash": dash}, name=f"B={b}: {name}",
                                     legendgroup=f"B={b}"), 1, 1)
    calib = per[str(block)]["calibration"]
    for key, name in (("prefix", "masked, prefix revealed"), ("masked", "masked, nothing revealed"),
                      ("first", "masked, slot 0 revealed"), ("ar", "AR")):
        pts = [x for x in calib[key]["bins"] if x["n"]]
        fig.add_trace(go.Scatter(x=[x["conf"] for x in pts], y=[x["acc"] for x in pts], mode="lines+markers",
                                 name=f"{name} (ECE {calib[key]['ece']:.3f})", legendgroup="calib",
                                 text=[f"n={x['n']}" for x in pts]), 1, 2)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "gray", "dash": "dot"},
                             name="calibrated", showlegend=False), 1, 2)
    fig.update_xaxes(title_text="block slot", row=1, col=1)
    fig.update_xaxes(title_text="confidence (top probability)", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="accuracy", range=[0, 1])
    fig.update_layout(template="plotly_white", title=f"Masked-block head against the autoregressive head "
                      f"({res['model']})")
    return fig


def modes_figure(res: dict):
    """Plotly figure: decoder passes per byte against chrF, per mode and knob, one trace per task."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for task in res["modes"]["tasks"]:
        rows = [r for r in res["modes"]["rows"] if r["task"] == task and r.get("chrf") is not None]
        fig.add_trace(go.Scatter(x=[r["passes_per_byte"] for r in rows], y=[r["chrf"] for r in rows],
                                 text=[r["label"] for r in rows], mode="markers", name=task,
                                 hovertemplate="%{text}: %{x:.2f} passes/byte, chrF %{y:.1f}"))
    fig.update_layout(template="plotly_white", xaxis_title="decoder passes per byte", yaxis_title="chrF",
                      title="Cost against quality per mode and knob")
    return fig
