"""Offline corpora (no downloads): Python stdlib source ("code") and EN->FR/DE UI strings ("fr", "de").

Documents carry a fixed train/val split from a stable hash of their name, and
`ByteBatcher` / `validation_windows` turn them into id tensors (see tokens.py).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from .tokens import BOS, EOS, OFFSET, PAD

SOURCES = ("code", "fr", "de")
SPLITS = ("train", "val")
VAL_FRACTION = {"code": 0.05, "fr": 0.1, "de": 0.1}  # translation is small: bigger val share
LANG_PACKS = {"fr": "fr_FR", "de": "de_DE"}
# Tests, the IDE and vendored packages are excluded: tests are huge and repetitive.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}


@dataclass(frozen=True)
class Document:
    """One training unit: a stdlib file or one translation pair."""

    name: str  # stdlib-relative posix path, or "<lang>:<english>" for a pair
    text: bytes
    source: str  # "code" | "fr" | "de"


def split_of(name: str, val_fraction: float = 0.05) -> str:
    """Deterministic "train"/"val" from a sha1 of `name` (Python's hash() is salted per process)."""
    h = int.from_bytes(hashlib.sha1(name.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def _check(source: str, split: str | None) -> None:
    if source not in (*SOURCES, "translation"):
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES + ('translation',)}")
    if split not in (None, *SPLITS):
        raise ValueError(f"unknown split {split!r}; expected None, 'train' or 'val'")


def stdlib_dir() -> Path:
    """The running interpreter's standard library directory, or `$BLTLAB_STDLIB` if set (a copy
    of another interpreter's, so that a machine with another Python trains on the same code)."""
    return Path(os.environ.get("BLTLAB_STDLIB") or sysconfig.get_paths()["stdlib"])


def _load_code() -> list[Document]:
    root = stdlib_dir()
    docs = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)  # prune: site-packages alone is ~150 MB
        for f in files:
            if f.endswith(".py"):
                p = Path(d, f)
                docs.append(Document(p.relative_to(root).as_posix(), p.read_bytes(), "code"))
    return docs


def catalog_dir(lang: str) -> Path:
    """Folder of the gettext-style JSON catalogs of the jupyterlab language pack for `lang`."""
    loc = LANG_PACKS[lang]
    spec = importlib.util.find_spec(f"jupyterlab_language_pack_{loc}")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"language pack missing: pip install jupyterlab-language-pack-{loc.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0], "locale", loc, "LC_MESSAGES")


def _pairs(lang: str) -> list[tuple[str, str]]:
    pairs = set()
    for f in sorted(catalog_dir(lang).glob("*.json")):
        for key, val in json.loads(f.read_text("utf-8")).items():
            if not isinstance(val, list) or not val:
                continue  # "" key holds the catalog header
            en = key.split("\x04")[-1].strip()  # drop gettext context "ctx\x04msgid"
            tr = str(val[0]).strip()  # plural entries: msgid is the singular, so keep form 0
            if en and tr and not any(c in s for s in (en, tr) for c in "\r\n"):
                pairs.add((en, tr))
    return sorted(pairs)


@functools.lru_cache(maxsize=None)
def _load(source: str) -> tuple[Document, ...]:
    if source == "code":
        docs = _load_code()
    else:
        tag = source.upper()
        docs = [Document(f"{source}:{en}", f"EN: {en}\n{tag}: {tr}\n".encode("utf-8"), source)
                for en, tr in _pairs(source)]
    return tuple(sorted(docs, key=lambda d: (d.name, d.text)))


def load_documents(source: str, split: str | None = None) -> list[Document]:
    """Documents of `source` ("code", "fr", "de" or "translation" = fr+de), optionally one split, sorted."""
    _check(source, split)
    srcs = ("fr", "de") if source == "translation" else (source,)
    return [d for s in srcs for d in _load(s) if split is None or split_of(d.name, VAL_FRACTION[s]) == split]


def translation_pairs(lang: str, split: str | None = None) -> list[tuple[str, str]]:
    """(english, target) pairs for lang "fr" or "de"; the split is keyed on the English side."""
    if lang not in LANG_PACKS:
        raise ValueError(f"unknown language {lang!r}; expected 'fr' or 'de'")
    _check(lang, split)
    return [p for p in _pairs(lang) if split is None or split_of(f"{lang}:{p[0]}", VAL_FRACTION[lang]) == split]


def to_stream(docs: list[Document]) -> torch.Tensor:
    """[BOS] + byte ids + [EOS] per doc, concatenated into one int16 tensor (ids < 2**15)."""
    lens = torch.tensor([len(d.text) for d in docs], dtype=torch.long)
    out = torch.full((int(lens.sum()) + 2 * len(docs),), PAD, dtype=torch.int16)
    if not docs:
        return out
    raw = torch.frombuffer(bytearray(b"".join(d.text for d in docs)), dtype=torch.uint8)
    starts = torch.cumsum(lens + 2, 0) - (lens + 2)  # BOS position of each doc
    out[starts], out[starts + lens + 1] = BOS, EOS
    doc_of = torch.repeat_interleave(torch.arange(len(docs)), lens)  # vectorised: no per-byte Python
    out[torch.arange(len(raw)) + 2 * doc_of + 1] = raw.to(torch.int16) + OFFSET
    return out


class ByteBatcher:
    """Random [batch_size, seq_len] windows; each row is [BOS] + stream[o : o + seq_len - 1].

    Prepending BOS at a random offset (instead of snapping to doc starts) gives the model
    mid-document contexts while keeping column 0 uniform. With `weights`, each row first picks
    a source with that probability (docs of sources missing from `weights` are never drawn);
    without, all docs form one stream, so sources are drawn in proportion to their bytes.
    DDP workers pass `rank`/`world_size` so that each seeds its own generator.
    """

    def __init__(self, docs: list[Document], seq_len: int, batch_size: int, seed: int = 0,
                 weights: dict[str, float] | None = None, rank: int = 0, world_size: int = 1) -> None:
        if seq_len < 2 or batch_size < 1 or not docs:
            raise ValueError("need seq_len >= 2, batch_size >= 1 and at least one document")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.seq_len, self.batch_size = seq_len, batch_size
        if weights is None:
            groups = {"all": docs}
            probs = [1.0]
        else:
            groups = {s: [d for d in docs if d.source == s] for s, w in weights.items() if w > 0}
            empty = [s for s, g in groups.items() if not g]
            if empty or not groups:
                raise ValueError(f"weighted sources without documents: {empty or list(weights)}")
            probs = [weights[s] for s in groups]
        self.names = list(groups)
        self.streams = [to_stream(g) for g in groups.values()]
        self.probs = torch.tensor(probs, dtype=torch.double) / sum(probs)
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + rank)  # distinct per (seed, rank)

    def next(self) -> torch.Tensor:
        """One batch of ids, [batch_size, seq_len] long, column 0 all BOS."""
        n = self.seq_len - 1
        src = torch.multinomial(self.probs, self.batch_size, replacement=True, generator=self.gen)
        out = torch.full((self.batch_size, self.seq_len), PAD, dtype=torch.long)
        out[:, 0] = BOS
        for k, stream in enumerate(self.streams):
            rows = (src == k).nonzero().flatten()
            if len(rows) == 0:
                continue
            hi = max(len(stream) - n, 0) + 1  # short stream: one window, PAD-filled past its end
            o = torch.randint(0, hi, (len(rows),), generator=self.gen)
            idx = o[:, None] + torch.arange(n)
            win = stream[idx.clamp(max=len(stream) - 1)].long()
            out[rows, 1:] = win.masked_fill(idx >= len(stream), PAD)
        return out

    __next__ = next

    def __iter__(self) -> "ByteBatcher":
        return self


def validation_windows(docs: list[Document], seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping [N, seq_len] long windows of the docs' stream, each [BOS] + seq_len-1 ids, PAD at the end.

    With `max_windows`, keep evenly spaced windows (not the first ones, which would all be
    alphabetically-first files), so the subset still covers every source.
    """
    stream, n = to_stream(docs).long(), seq_len - 1
    count = max(-(-len(stream) // n), 1)
    body = torch.full((count * n,), PAD, dtype=torch.long)
    body[: len(stream)] = stream
    out = torch.cat([torch.full((count, 1), BOS, dtype=torch.long), body.view(count, n)], 1)
    if max_windows is not None and max_windows < count:
        out = out[torch.linspace(0, count - 1, max_windows).round().long()]
    return out


def corpus_stats() -> list[dict]:
    """One row per (source, split): docs, bytes and mean bytes per doc."""
    rows = []
    for s in SOURCES:
        for sp in SPLITS:
            docs = load_documents(s, sp)
            nb = sum(len(d.text) for d in docs)
            rows.append({"source": s, "split": sp, "docs": len(docs), "bytes": nb,
                         "mean_bytes": nb / len(docs) if docs else 0.0})
    return rows


def format_stats(rows: list[dict]) -> str:
    """Aligned text table of `corpus_stats()` rows."""
    head = ["source", "split", "docs", "bytes", "mean_bytes"]
    cells = [head] + [[str(r["source"]), str(r["split"]), f"{r['docs']:,}", f"{r['bytes']:,}",
                       f"{r['mean_bytes']:,.1f}"] for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(head))]
    fmt = lambda c: "  ".join(x.ljust(w[i]) if i < 2 else x.rjust(w[i]) for i, x in enumerate(c))
    return "\n".join([fmt(cells[0]), "  ".join("-" * x for x in w)] + [fmt(c) for c in cells[1:]])
