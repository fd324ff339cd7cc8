import pytest
import torch

from bltlab.checkpoint import load_model
from bltlab.decode import MODES, Sampler, generate
from bltlab.tokens import EOS, encode


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir)[0]


@pytest.mark.parametrize("prompt", ["def f(", "", b"\xff\xfe invalid", "EN: Save\nFR:", "x"])
def test_blt_respects_budget_and_emits_bytes(model, prompt):
    g = generate(model, prompt, "blt", max_bytes=12)
    assert len(g.output) <= 12
    assert g.stop_reason in ("max_bytes", "eos")
    assert g.counters["n_dec"] == len(g.output) + (g.stop_reason == "eos")
    g.to_json()  # serialisable


def test_greedy_matches_manual_argmax(model):
    g = generate(model, "abc", "blt", max_bytes=5)
    ids = encode("abc")
    for _ in range(len(g.output)):
        x = torch.tensor([ids])
        logits = model(x, model.patch(x))[0, -1]
        logits[:4] = float("-inf")
        tok = int(logits.argmax())
        if tok == EOS:
            break
        ids.append(tok)
    assert bytes(i - 4 for i in ids[4:]) == g.output


def test_stop_string_is_cut(model):
    g = generate(model, "hello", "blt", max_bytes=20)
    if len(g.output) >= 3:
        stop = g.output[1:3]
        g2 = generate(model, "hello", "blt", max_bytes=20, stop=stop)
        assert g2.stop_reason == "stop" and not g2.output.endswith(stop)
        assert g.output.startswith(g2.output)


def test_sampling_is_seeded(model):
    a = generate(model, "x", "blt", max_bytes=10, temperature=1.0, seed=3)
    b = generate(model, "x", "blt", max_bytes=10, temperature=1.0, seed=3)
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
])
def test_bad_requests_raise_clear_errors(model, kw, msg):
    args = dict(mode="blt", max_bytes=4) | kw
    with pytest.raises(ValueError, match=msg):
        generate(model, "x", **args)


def test_oversized_prompt(model):
    with pytest.raises(ValueError, match="context"):
        generate(model, "a" * model.cfg.max_bytes, "blt", max_bytes=1)
    assert "blt" in MODES
