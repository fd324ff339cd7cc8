"""Quality measurements: bits per byte, patch statistics, and translation chrF/BLEU."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import load_documents, translation_pairs, validation_windows
from .decode import generate
from .model import BLT
from .patching import mean_patch_length
from .tokens import BOS, OFFSET, PAD
from .train import evaluate_bpb


def byte_windows(data: bytes, length: int) -> torch.Tensor:
    """Split any bytes into [N, length] id windows, each BOS + up to length-1 bytes (PAD after).
    Context restarts at every window."""
    if not data:
        raise ValueError("no bytes to evaluate (the input is empty)")
    step = length - 1
    chunks = [data[i:i + step] for i in range(0, len(data), step)]
    out = torch.full((len(chunks), length), PAD, dtype=torch.long)
    for r, c in enumerate(chunks):
        out[r, 0] = BOS
        out[r, 1:len(c) + 1] = torch.tensor(list(c), dtype=torch.long) + OFFSET
    return out


def bits_per_byte(model: BLT, data: bytes) -> float:
    """Bits per byte of the model's next-byte predictions over `data` (any bytes)."""
    return evaluate_bpb(model, byte_windows(data, model.cfg.max_bytes))


@torch.no_grad()
def patch_stats(model: BLT, source: str = "code", windows: int = 32) -> dict:
    """Mean patch length and patches per window on validation text of one source."""
    ids = validation_windows(load_documents(source, "val"), model.cfg.max_bytes, windows)
    ids = ids.to(next(model.parameters()).device)
    lengths = (ids != PAD).sum(1)
    starts = model.patch(ids, lengths)
    return {"mean_patch_length": mean_patch_length(starts, lengths), "threshold": model.cfg.patch.threshold,
            "rule": model.cfg.patch.rule}


def translate_eval(model: BLT, lang: str = "fr", limit: int | None = None, mode: str = "blt",
                   progress: bool = True) -> dict:
    """Greedy EN->lang translation of held-out pairs; chrF and BLEU (sacrebleu)."""
    import sacrebleu

    pairs = translation_pairs(lang, "val")[:limit]
    tag = lang.upper()
    hyps = []
    for en, _ in tqdm(pairs, desc=f"translate EN->{tag}", disable=not progress):
        prompt = f"EN: {en}\n{tag}: "
        budget = min(4 * len(en.encode()) + 16, model.cfg.max_bytes - len(prompt.encode()) - 1)
        hyps.append(generate(model, prompt, mode, max_bytes=max(budget, 1), stop="\n").text.strip())
    refs = [t for _, t in pairs]
    return {"pairs": len(pairs), "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "examples": [{"en": e, "ref": r, "hyp": h} for (e, r), h in list(zip(pairs, hyps))[:5]]}


def report(model: BLT, pairs: int | None = None, windows: int = 64, progress: bool = True) -> dict:
    """The figures the README quotes for a model."""
    docs = {s: load_documents(s, "val") for s in ("code", "fr", "de")}
    bpb = {s: evaluate_bpb(model, validation_windows(d, model.cfg.max_bytes, windows)) for s, d in docs.items()}
    return {"params": model.param_counts(), "val_bpb": bpb, "patching_code": patch_stats(model, "code", windows),
            "patching_fr": patch_stats(model, "fr", windows), "translation_fr": translate_eval(model, "fr", pairs,
                                                                                            progress=progress)}
