"""The shipped model: it loads, the README's figures are the committed report's, the report
describes exactly these weight files, and the fast decoders keep their contract on real weights."""
import hashlib
import json
from pathlib import Path

import pytest

from bltlab.checkpoint import SHIPPED, load_model
from bltlab.decode import MODES, generate, generate_batch, generate_reference

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "results" / "report_small.json"


@pytest.fixture(scope="module")
def shipped():
    return load_model(SHIPPED)


def test_shipped_model_loads_and_is_small(shipped):
    model, meta = shipped
    size = sum(f.stat().st_size for f in SHIPPED.glob("*.safetensors"))
    assert size <= 40e6
    assert meta["trained"]["preset"] == "small" and meta["trained"]["objective"] == "hybrid"
    assert 1.0 < model.cfg.patch.threshold < 6.0


def test_report_matches_shipped_files_and_readme():
    rep = json.loads(REPORT.read_text())
    for f, digest in rep["sha256"].items():
        assert hashlib.sha256((SHIPPED / f).read_bytes()).hexdigest() == digest, f"{f} changed since the report"
    readme = (ROOT / "README.md").read_text()
    for figure in (f"{rep['val_bpb']['code']:.3f}", f"{rep['val_bpb']['fr']:.3f}",
                   f"{rep['patching_code']['mean_patch_length']:.2f}", f"{rep['translation_fr']['chrf']:.1f}",
                   f"{rep['translation_fr']['bleu']:.1f}"):
        assert figure in readme, f"README does not quote {figure} from {REPORT.name}"


PROMPTS = ["def __init__(self, name):\n        self.", "import sys\n\n\ndef main(", "EN: Save file\nFR: ",
           "EN: Close all tabs\nFR: ", "EN: Settings\nDE: ", "    for i in range(len(", "# Copyright", "x = [",
           "class Parser:\n    \"\"\"", "return None if"]


def test_fast_decoders_keep_their_contract_on_real_weights(shipped):
    model, _ = shipped
    for p in PROMPTS[:4]:
        assert generate(model, p, "blt", max_bytes=24).output == generate_reference(model, p, 24).output
    for p in PROMPTS:
        ref = generate(model, p, "blt", max_bytes=40).output
        assert generate(model, p, "blt-s16", max_bytes=40).output == ref
        assert generate(model, p, "blt-s8", max_bytes=40).output == ref


def full_rounds(g) -> int:
    """Verifications that accepted their whole draft and were not the last (so the patch they
    closed for the next block stayed closed)."""
    return sum(e["accepted"] == len(e["draft"]) for e in [e for e in g.trace if e["type"] == "verify"][:-1])


def test_static_engine_equals_eager_on_real_weights(shipped):
    from test_static import same_generation

    model, _ = shipped
    ties, full = [], 0
    for mode in MODES:
        for p in PROMPTS[::3]:
            eager = generate(model, p, mode, max_bytes=40, engine="eager")
            full += full_rounds(eager) if mode == "blt-dv4" else 0
            same_generation(eager, generate(model, p, mode, max_bytes=40, engine="static"), ties)
    assert not ties, ties
    assert full >= 5  # blt-dv4 keeps the patch its verification closed


def test_batched_diffusion_drafts_equal_one_prompt_at_a_time(shipped):
    """blt-dv4 on real weights, where whole drafts are accepted (the tiny test models reject
    nearly every one): a row that rejected closes its patch again, the others keep the closed one."""
    from test_decode import own_reads

    model, _ = shipped
    alone = [generate(model, p, "blt-dv4", max_bytes=40, engine="eager") for p in PROMPTS]
    assert sum(map(full_rounds, alone)) >= 20 and sum(full_rounds(g) == 0 for g in alone) >= 1
    batch = generate_batch(model, PROMPTS, "blt-dv4", max_bytes=40)
    assert [(g.output, g.stop_reason, own_reads(g)) for g in batch] == \
           [(g.output, g.stop_reason, own_reads(g)) for g in alone]
