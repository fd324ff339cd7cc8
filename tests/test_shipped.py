"""The shipped model: it loads, the README's figures are the committed report's, the report
describes exactly these weight files, and the fast decoders keep their contract on real weights."""
import hashlib
import json
from pathlib import Path

import pytest

from bltlab.checkpoint import SHIPPED, load_model
from bltlab.decode import generate, generate_batch, generate_reference

ROOT = Path(__file__).resolve().parent.parent
REPORT = SHIPPED / "report.json"


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


def test_the_state_equals_its_oracles_on_real_weights(shipped):
    """blt and blt-s* against the no-cache oracles (test_state.as_reference: bytes, the trace's
    entropies and patch starts, blt's pass counts), blt-d* against the no-cache block-diffusion
    reference (same bytes), on the shipped weights."""
    from bltlab.decode.reference import generate_reference_diffusion
    from test_state import as_reference

    model, _ = shipped
    for p in PROMPTS[::3]:
        for mode in ("blt", "blt-s8", "blt-s16"):
            as_reference(model, p, mode, max_bytes=40)
        for block in (4, 8, 16):
            g = generate(model, p, f"blt-d{block}", max_bytes=40)
            assert g.output == generate_reference_diffusion(model, p, 40, block).output


def test_batched_diffusion_drafts_equal_one_prompt_at_a_time(shipped):
    """Batched blt-dv4 on real weights, where some rows accept a whole draft in a round where
    others reject a byte (the tiny test models reject nearly every draft)."""
    from test_decode import own_reads

    model, _ = shipped
    alone = [generate(model, p, "blt-dv4", max_bytes=40) for p in PROMPTS]
    whole = [sum(e["accepted"] == len(e["draft"]) for e in g.trace[1:-1]) for g in alone]  # verifications
    assert sum(whole) >= 20 and min(whole) == 0
    batch = generate_batch(model, PROMPTS, "blt-dv4", max_bytes=40)
    assert [(g.output, g.stop_reason, own_reads(g), g.trace) for g in batch] == \
           [(g.output, g.stop_reason, own_reads(g), g.trace) for g in alone]
