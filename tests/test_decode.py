"""Every decoder against the slow reference it accelerates, plus knobs, stops and counters."""
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bltlab.config import PatchConfig, get_config
from bltlab.decode import MODES, Sampler, generate, generate_reference
from bltlab.model import BLT
from bltlab.tokens import OFFSET


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = BLT(get_config("tiny")).eval()
    ids = torch.randint(OFFSET, 260, (4, 64))
    m.cfg.patch.threshold = float(m.entropy.entropies(ids)[:, 1:].median())  # real, varied patches
    return m


def varied_prompts(n: int = 52) -> list:
    g = torch.Generator().manual_seed(1)
    base = ["def add(a, b):\n    return", "import os\nfor name in os.listdir('.'):", "EN: Save file\nFR: ",
            "EN: Open a new tab\nDE: ", "The quick brown fox jumps over", "Bonjour, comment ça va ?", "x", "",
            "héllo wörld ✓ 😀", b"\xff\xfe\x00invalid", b"\x80", "    ", "\n\n\n", "a" * 40, "0123456789" * 3]
    out = list(base)
    while len(out) < n:
        k = int(torch.randint(1, 48, (1,), generator=g))
        out.append(bytes(torch.randint(0, 256, (k,), generator=g).tolist()))
    return out


PROMPTS = varied_prompts()


def own_reads(g) -> dict:
    """A generation's per-sequence cost counters (a batch row's own, not shared with the batch)."""
    return {k: g.counters[k] for k in ("kv_read", "hash_rows")}


def test_cached_blt_equals_no_cache_reference(model):
    for p in PROMPTS:
        ref = generate_reference(model, p, 16)
        fast = generate(model, p, "blt", max_bytes=16)
        assert fast.output == ref.output, p
        assert fast.stop_reason == ref.stop_reason


@pytest.mark.parametrize("mode", ["blt-s8", "blt-s16", "blt-dv4", "blt-dv16"])
def test_speculation_equals_blt_greedy(model, mode):
    for p in PROMPTS:
        assert generate(model, p, mode, max_bytes=24).output == generate(model, p, "blt", max_bytes=24).output, p


@settings(max_examples=15, deadline=None)
@given(st.binary(max_size=40), st.sampled_from(["blt-s8", "blt-s16"]), st.integers(1, 30))
def test_speculation_property(prompt, mode, n):
    torch.manual_seed(0)
    m = BLT(get_config("tiny")).eval()
    m.cfg.patch = PatchConfig(rule="fixed", stride=3)
    assert generate(m, prompt, mode, max_bytes=n).output == generate(m, prompt, "blt", max_bytes=n).output


@pytest.mark.parametrize("rule", ["relative", "space", "fixed"])
def test_cached_blt_equals_reference_under_every_rule(model, rule):
    m = BLT(model.cfg.__class__.from_dict(model.cfg.to_dict()))
    m.load_state_dict(model.state_dict())
    m.eval().cfg.patch = PatchConfig(rule=rule, threshold=0.01, stride=3, max_patch=5)
    for p in PROMPTS[:12]:
        assert generate(m, p, "blt", max_bytes=12).output == generate_reference(m, p, 12).output


@pytest.mark.parametrize("mode", ["blt-d4", "blt-d16", "blt-h"])
def test_entropy_bound_zero_and_alpha_above_one_unmask_one_per_pass(model, mode):
    for kw in ({"gamma": 0.0}, {"alpha": 1.5}):  # by the paper's rule (in order, α > 1 would fill none)
        g = generate(model, "abc", mode, max_bytes=20, eta=10.0, **kw, **PAPER)  # η = 10 nats: always diffuse
        steps = [s for e in g.trace if e["type"] == "block" for s in e["steps"]]
        assert steps and all(len(s["unmasked"]) == 1 for s in steps)


def test_looser_knobs_unmask_more(model):
    tight = generate(model, "abc", "blt-d16", max_bytes=32, gamma=0.0).counters["n_dec"]
    loose = generate(model, "abc", "blt-d16", max_bytes=32, alpha=0.0).counters["n_dec"]
    assert loose < tight


PAPER = {"in_order": False, "exact_first": False}  # the paper's unmasking rule (the default is in order)


def fixed_model(model):
    m = BLT(model.cfg.__class__.from_dict(model.cfg.to_dict()))
    m.load_state_dict(model.state_dict())
    m.eval().cfg.patch = PatchConfig(rule="fixed", stride=4, max_patch=8)
    return m


def test_counters_by_hand_blt(model):
    """Prompt 'abc' = ids 0..3, stride-4 patches start at 0, 1, 5, 9. Prefill: one pass of each part
    (the BOS patch is complete); bytes at 4..10 are pushed (the 8th is emitted, never pushed);
    the patch 1..4 completes at 5 and 5..8 at 9."""
    g = generate(fixed_model(model), "abc", "blt", max_bytes=8)
    assert g.stop_reason == "max_bytes"
    assert (g.counters["n_dec"], g.counters["n_ent"], g.counters["n_enc"]) == (8, 8, 3)


def test_counters_by_hand_diffusion(model):
    """blt-d4, α > 1 (one slot per pass): prefill 1/1/1; block 1 closes the patch 1..3 (enc 2), takes
    4 passes (dec 5) and is pushed (dec 6, ent 2; starts 4 forced and 5 by stride: patch [4] closes,
    enc 3), and that push's global step closes 5..7 for block 2 (enc 4) and its decoder pass is block
    2's first; 3 more passes (dec 9); the budget ends it unpushed."""
    g = generate(fixed_model(model), "abc", "blt-d4", max_bytes=8, alpha=1.5, **PAPER)
    assert g.stop_reason == "max_bytes"
    assert (g.counters["n_dec"], g.counters["n_ent"], g.counters["n_enc"]) == (9, 2, 4)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_emits_bytes_and_respects_budget_and_stop(model, mode):
    for p in ("def f(", "", b"\xff", "EN: Hi\nFR: "):
        g = generate(model, p, mode, max_bytes=10)
        assert len(g.output) <= 10 and g.stop_reason in ("max_bytes", "eos")
        json.dumps(g.to_json())  # the trace is JSON-serialisable
        if len(g.output) >= 4:
            stop = g.output[2:4]
            cut = generate(model, p, mode, max_bytes=10, stop=stop)
            assert cut.stop_reason == "stop" and stop not in cut.output
            assert g.output.startswith(cut.output)


@pytest.mark.parametrize("mode", ["blt", "blt-s8", "blt-d8", "blt-dv8", "blt-h"])
def test_sampling_is_seeded(model, mode):
    a = generate(model, "x", mode, max_bytes=12, temperature=1.0, seed=3)
    b = generate(model, "x", mode, max_bytes=12, temperature=1.0, seed=3)
    assert a.output == b.output


def test_top_p_keeps_a_nucleus():
    s = Sampler(temperature=1.0, top_p=0.5)
    logits = torch.full((1, 260), -10.0)
    logits[0, 10], logits[0, 11], logits[0, 12] = 5.0, 4.0, 0.0
    p = s.probs(logits)
    assert p[0, 10] > 0 and p[0, 11] == 0 and abs(float(p.sum()) - 1) < 1e-6
    assert (p[0, :4] == 0).all()


@pytest.mark.parametrize("kw,msg", [
    (dict(mode="nope"), "unknown mode"),
    (dict(max_bytes=0), "positive"),
    (dict(max_bytes=10_000), "context"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(mode="blt-d8", alpha=3.0), "alpha"),
    (dict(mode="blt-d8", gamma=-1.0), "gamma"),
    (dict(mode="blt-d8", alpha=0.5, gamma=1.0), "not both"),
    (dict(mode="blt-h", eta=-1.0), "eta"),
    (dict(mode="blt-h", block=5), "block"),
])
def test_bad_requests_raise_clear_errors(model, kw, msg):
    args = dict(mode="blt", max_bytes=4) | kw
    with pytest.raises(ValueError, match=msg):
        generate(model, "x", **args)


def test_oversized_prompt(model):
    with pytest.raises(ValueError, match="context"):
        generate(model, "a" * model.cfg.max_bytes, "blt", max_bytes=1)


@pytest.mark.parametrize("mode", ["blt", "blt-s8", "blt-d4", "blt-dv4", "blt-h"])
def test_stream_yields_typed_events_as_they_happen(model, mode):
    """stream() yields each event before the generation ends (a prefill first, Done last), the same
    events generate() collects; closing the stream early stops the work and frees the state."""
    from bltlab.decode import Done, Prefill, stream
    from bltlab.decode import state

    events = list(stream(model, "abc", mode, max_bytes=30, eta=2.0))
    assert isinstance(events[0], Prefill) and isinstance(events[-1], Done) and len(events) > 3
    g = events[-1].generation
    assert [e.to_json() for e in events[:-1]] == g.trace == generate(model, "abc", mode, max_bytes=30, eta=2.0).trace
    json.dumps([e.to_json() for e in events])
    it = stream(model, "abc", mode, max_bytes=200, eta=2.0)
    first = [next(it) for _ in range(3)]
    it.close()  # what Gradio does on Stop
    assert isinstance(first[0], Prefill)
    assert not any(s.busy for pool in state._STATES[model].values() for s in pool)


def test_events_carry_real_bytes_and_eos_apart(model):
    """EOS is no byte: every byte field of every event is 0-255 (or None), and EOS shows in `eos`
    fields; a tiny model that prefers EOS ends drafts and blocks with it."""
    m = BLT(model.cfg.__class__.from_dict(model.cfg.to_dict()))
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        m.eval().head.weight[2] += 0.3 * m.head.weight[OFFSET + 97]  # EOS likely after some bytes
    seen_eos = set()
    for mode in ("blt-s8", "blt-d8", "blt-dv8", "blt-h"):
        for p in PROMPTS[:12]:
            for e in generate(m, p, mode, max_bytes=40, eta=2.0).trace:
                for key in ("draft", "bytes"):
                    if isinstance(e.get(key), list):
                        assert all(0 <= b < 256 for b in e[key]), e
                for key in ("byte", "rejected", "correction"):
                    assert e.get(key) is None or 0 <= e[key] < 256, e
                seen_eos |= {e["type"] for k in ("eos", "rejected_eos", "correction_eos") if e.get(k)}
    assert seen_eos & {"verify", "block"}, seen_eos


def test_entropy_bound_uses_real_entropies(model):
    """A loose entropy budget unmasks more per pass than γ = 0 (entropies are finite, not NaN)."""
    tight = generate(model, "abc", "blt-d16", max_bytes=32, gamma=0.0)
    loose = generate(model, "abc", "blt-d16", max_bytes=32, gamma=50.0)
    assert loose.counters["n_dec"] < tight.counters["n_dec"]
    steps = [s for e in loose.trace if e["type"] == "block" for s in e["steps"]]
    assert all(h == h for s in steps for h in s["entropy"])  # no NaN
    json.dumps(loose.to_json(), allow_nan=False)


def test_trace_reports_every_emitted_byte(model):
    g = generate(model, "abc", "blt", max_bytes=9)
    emitted = [e["byte"] for e in g.trace if e["type"] == "byte"]
    assert bytes(emitted) == g.output


# (no entropy-bound case: a random model's masked slots all have entropy ≈ ln 257, so their order
# is decided at the 1e-7 level, where padded batch arithmetic may differ from one row's)
@pytest.mark.parametrize("mode,kw", [("blt", {}), ("blt-d4", {"alpha": 0.3}), ("blt-d8", {"alpha": 0.5})])
def test_batch_equals_one_row_at_a_time(model, mode, kw):
    """Ragged prompts, per-row stopping (a stop string some rows hit, EOS, budgets)."""
    from bltlab.decode import generate_batch

    prompts = PROMPTS[:10]
    single = [generate(model, p, mode, max_bytes=14, **kw) for p in prompts]
    stop = next((g.output[3:5] for g in single if len(g.output) > 6), None)
    single = [generate(model, p, mode, max_bytes=14, stop=stop, **kw) for p in prompts]
    batch = generate_batch(model, prompts, mode, max_bytes=14, stop=stop, **kw)
    assert [g.output for g in batch] == [g.output for g in single]
    assert [g.stop_reason for g in batch] == [g.stop_reason for g in single]
    assert [own_reads(g) for g in batch] == [own_reads(g) for g in single]  # each row's KV-cache and hash reads
    assert len({len(g.output) for g in batch}) > 1  # rows really stopped at different points
    assert batch[0].counters["batch"] == 10


def test_batch_rejects_other_modes(model):
    from bltlab.decode import generate_batch

    with pytest.raises(ValueError, match="unknown mode"):
        generate_batch(model, ["a"], "blt-x")
    with pytest.raises(ValueError, match="no prompts"):
        generate_batch(model, [], "blt")
