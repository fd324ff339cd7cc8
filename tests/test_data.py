"""Tests for bltlab.data: offline corpora, splits, batching, validation windows."""
import pytest
import torch

from bltlab import data
from bltlab.data import (ByteBatcher, Document, corpus_stats, format_stats, load_documents, split_of,
                         translation_pairs, validation_windows)
from bltlab.tokens import BOS, EOS, N_IDS, PAD, decode


def test_split_deterministic_and_fraction():
    names = [f"file_{i}.py" for i in range(4000)]
    a = [split_of(n) for n in names]
    assert a == [split_of(n) for n in names]
    assert set(a) == {"train", "val"}
    assert 0.03 < a.count("val") / len(a) < 0.07
    assert 0.08 < [split_of(n, 0.1) for n in names].count("val") / len(names) < 0.12


def test_code_split_disjoint_and_filtered():
    train, val, full = (load_documents("code", s) for s in ("train", "val", None))
    tn, vn = {d.name for d in train}, {d.name for d in val}
    assert not tn & vn and len(tn) + len(vn) == len(full) > 300
    assert all(split_of(n) == "val" for n in vn)
    for d in full:
        parts = d.name.split("/")
        assert d.source == "code" and d.name.endswith(".py")
        assert not {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"} & set(parts[:-1])
    assert "os.py" in tn | vn
    assert [d.name for d in full] == sorted(d.name for d in full)
    assert sum(len(d.text) for d in full) > 5_000_000


def test_translation_pairs_and_format():
    fr, de = translation_pairs("fr"), translation_pairs("de")
    assert 2000 < len(fr) < 6000 and 800 < len(de) < 3000
    for en, tr in fr + de:
        assert en and tr and en == en.strip() and tr == tr.strip() and "\n" not in en + tr
    assert len(set(fr)) == len(fr)
    en, tr = translation_pairs("fr", "val")[0]
    doc = next(d for d in load_documents("fr", "val") if d.name == "fr:" + en)
    assert doc.text == f"EN: {en}\nFR: {tr}\n".encode("utf-8") and doc.source == "fr"
    assert load_documents("de")[0].text.decode().split("\n")[1].startswith("DE: ")
    # same English -> same side; val share near 10 %
    tr_en = {e for e, _ in translation_pairs("fr", "train")}
    va_en = {e for e, _ in translation_pairs("fr", "val")}
    assert not tr_en & va_en and 0.05 < len(va_en) / len({e for e, _ in fr}) < 0.15
    assert len(load_documents("translation")) == len(fr) + len(de)


def test_bad_arguments():
    with pytest.raises(ValueError):
        load_documents("klingon")
    with pytest.raises(ValueError):
        load_documents("code", "test")
    with pytest.raises(ValueError):
        translation_pairs("es", None)


def test_missing_language_pack(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="jupyterlab-language-pack-fr-FR"):
        data.catalog_dir("fr")


def test_stream_layout():
    docs = [Document("a", b"hi", "code"), Document("b", b"", "code"), Document("c", b"\xff", "fr")]
    assert data.to_stream(docs).tolist() == [BOS, 104 + 4, 105 + 4, EOS, BOS, EOS, BOS, 259, EOS]


@pytest.fixture(scope="module")
def train_docs():
    return load_documents("code", "train") + load_documents("translation", "train")


def test_batcher_shapes_and_reproducibility(train_docs):
    b = ByteBatcher(train_docs, seq_len=128, batch_size=8, seed=3)
    x = b.next()
    assert x.shape == (8, 128) and x.dtype == torch.long
    assert (x[:, 0] == BOS).all() and x.min() >= 0 and x.max() < N_IDS
    assert torch.equal(x, ByteBatcher(train_docs, 128, 8, seed=3).next())
    assert not torch.equal(x, ByteBatcher(train_docs, 128, 8, seed=4).next())
    assert not torch.equal(x, ByteBatcher(train_docs, 128, 8, seed=3, rank=1, world_size=2).next())
    assert not torch.equal(x, b.next())  # successive batches differ


def test_batcher_weights(train_docs):
    b = ByteBatcher(train_docs, 64, 64, seed=0, weights={"fr": 1.0, "de": 1.0})
    text = "".join(decode(r.tolist()) for r in b.next())
    assert "FR: " in text and "DE: " in text and "def " not in text
    with pytest.raises(ValueError):
        ByteBatcher(load_documents("code", "val"), 64, 2, weights={"fr": 1.0})


def test_batcher_short_stream_pads():
    b = ByteBatcher([Document("x", b"abc", "fr")], seq_len=16, batch_size=2)
    x = b.next()
    assert x[0].tolist()[:6] == [BOS, BOS, 97 + 4, 98 + 4, 99 + 4, EOS] and (x[:, 6:] == PAD).all()


def test_validation_windows():
    docs = load_documents("de", "val")
    w = validation_windows(docs, 64)
    assert w.shape[1] == 64 and (w[:, 0] == BOS).all()
    n_ids = sum(len(d.text) + 2 for d in docs)
    assert w.shape[0] == -(-n_ids // 63) and (w[:, 1:] != PAD).sum() == n_ids
    assert w[-1, -1] == PAD or n_ids % 63 == 0
    assert torch.equal(w, validation_windows(docs, 64))
    sub = validation_windows(docs, 64, max_windows=5)
    assert sub.shape == (5, 64) and torch.equal(sub[0], w[0]) and torch.equal(sub[-1], w[-1])


def test_corpus_stats_consistent():
    rows = corpus_stats()
    assert {(r["source"], r["split"]) for r in rows} == {(s, p) for s in ("code", "fr", "de") for p in ("train", "val")}
    for s in ("code", "fr", "de"):
        docs = load_documents(s)
        mine = [r for r in rows if r["source"] == s]
        assert sum(r["docs"] for r in mine) == len(docs)
        assert sum(r["bytes"] for r in mine) == sum(len(d.text) for d in docs)
        assert all(r["docs"] > 0 and r["mean_bytes"] == pytest.approx(r["bytes"] / r["docs"]) for r in mine)
    table = format_stats(rows)
    assert len(table.splitlines()) == len(rows) + 2 and "code" in table and "val" in table


def test_stdlib_override(monkeypatch, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_bytes(b"x = 1\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "skipped.py").write_bytes(b"y = 2\n")
    monkeypatch.setenv("BLTLAB_STDLIB", str(tmp_path))
    data._load.cache_clear()
    try:
        assert data.stdlib_dir() == tmp_path
        assert [(d.name, d.text) for d in load_documents("code")] == [("pkg/mod.py", b"x = 1\n")]
    finally:
        monkeypatch.delenv("BLTLAB_STDLIB")
        data._load.cache_clear()
