"""The static-cache / CUDA-graph engine (decode/static.py) against the eager `blt` it replaces:
same bytes, stop reasons, counters and trace; same logits, entropies and patches per step."""
import dataclasses

import pytest
import torch

from bltlab import decode
from bltlab.config import PatchConfig, get_config
from bltlab.decode import generate, generate_batch
from bltlab.decode.state import SeqState
from bltlab.decode.static import StaticState, _prefill, static_state
from bltlab.model import BLT
from bltlab.tokens import OFFSET, encode
from test_decode import PROMPTS


def tiny(patch: PatchConfig | None = None, **kw) -> BLT:
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_config("tiny"), **kw)
    m = BLT(cfg).eval()
    if patch is None:
        ids = torch.randint(OFFSET, 260, (4, 64))
        patch = PatchConfig(threshold=float(m.entropy.entropies(ids)[:, 1:].median()))  # varied patches
    m.cfg.patch = patch
    return m


@pytest.fixture(scope="module")
def model():
    return tiny()


def same_generation(a, b):
    assert a.output == b.output and a.stop_reason == b.stop_reason
    a.counters.pop("seconds"), b.counters.pop("seconds")
    assert a.counters == b.counters
    assert len(a.trace) == len(b.trace)
    for x, y in zip(a.trace, b.trace):  # entropies are rounded to 4 places: allow one unit
        ex, ey = x.pop("entropy", None), y.pop("entropy", None)
        assert x == y
        assert (ex is None) == (ey is None)
        if ex is not None:
            assert torch.allclose(torch.tensor(ex), torch.tensor(ey), atol=2e-4, rtol=0)


def test_equals_eager_on_every_prompt(model):
    for i, p in enumerate(PROMPTS[:32]):
        n = 100 if i % 8 == 0 else 20  # long ones cross the local window (64) and many patches
        same_generation(generate(model, p, "blt", max_bytes=n, engine="eager"),
                        generate(model, p, "blt", max_bytes=n, engine="static"))


@pytest.mark.parametrize("patch", [PatchConfig(rule="relative", threshold=0.01, max_patch=5),
                                   PatchConfig(rule="space", max_patch=0),
                                   PatchConfig(rule="fixed", stride=3, max_patch=0),
                                   PatchConfig(rule="global", threshold=0.0, max_patch=3)])
def test_equals_eager_under_every_rule(patch):
    m = tiny(patch)
    for p in PROMPTS[:10]:
        same_generation(generate(m, p, "blt", max_bytes=30, engine="eager"),
                        generate(m, p, "blt", max_bytes=30, engine="static"))


def test_entropy_window_and_stop_strings():
    m = tiny(entropy=dataclasses.replace(get_config("tiny").entropy, window=5))
    for p in PROMPTS[:8]:
        eager = generate(m, p, "blt", max_bytes=40, engine="eager")
        stop = eager.output[5:7] or None  # a stop string that really occurs
        same_generation(generate(m, p, "blt", max_bytes=40, stop=stop, engine="eager"),
                        generate(m, p, "blt", max_bytes=40, stop=stop, engine="static"))


def test_logits_entropies_and_patches_step_by_step(model):
    ids = encode("def add(a, b):\n    return a + b\n")
    st = SeqState(model)
    st.push(ids)
    s = StaticState(model, 1)
    _prefill(s, [ids])
    for _ in range(40):
        assert torch.allclose(s.logits[0], st.last_logits, atol=1e-5, rtol=1e-5)
        tok = int(s.ids[0, len(st)])
        s.run()
        st.push([tok])
        n = len(st)
        assert torch.allclose(s.ent[0, :n + 1], torch.tensor(st.ent), atol=1e-5)
        assert s.olog[0, :n].tolist() == st.starts.tolist()
        assert int(s.ncomp[0]) == st.complete
        assert int(s.cur[0]) == int(st.starts.nonzero()[-1, 0])


@pytest.mark.parametrize("mode", ["blt-s8", "blt-s16"])
def test_self_speculation_equals_eager(model, mode):
    for i, p in enumerate(PROMPTS[:24]):
        n = 90 if i % 6 == 0 else 30
        eager = generate(model, p, mode, max_bytes=n, engine="eager")
        static = generate(model, p, mode, max_bytes=n, engine="static")
        assert static.output == generate(model, p, "blt", max_bytes=n, engine="static").output
        same_generation(eager, static)


@pytest.mark.parametrize("patch", [PatchConfig(rule="relative", threshold=0.01, max_patch=5),
                                   PatchConfig(rule="space", max_patch=0), PatchConfig(threshold=0.0, max_patch=3)])
def test_self_speculation_under_other_rules(patch):
    m = tiny(patch)
    for p in PROMPTS[:8]:
        for stop in (None, "e"):
            same_generation(generate(m, p, "blt-s8", max_bytes=40, stop=stop, engine="eager"),
                            generate(m, p, "blt-s8", max_bytes=40, stop=stop, engine="static"))


@pytest.mark.parametrize("patch", [PatchConfig(threshold=0.0, max_patch=3), PatchConfig(rule="space", max_patch=0),
                                   PatchConfig(rule="relative", threshold=0.05, max_patch=4)])
def test_one_pass_equals_pieces(patch):
    m = tiny(patch)
    texts = ["def add(a, b):\n    return a + b  # the sum of a and b\n", "EN: Save the file as\nFR: Enregistrer le"]
    prompts = [encode(x)[:40] for x in texts]  # two rows, one length: one lockstep pass
    whole, parts = StaticState(m, 2), StaticState(m, 2)
    whole.reset(prompts), parts.reset(prompts)
    whole.advance(40)
    for L in (1, 5, 2, 9, 1, 22):  # 40 in pieces, patches closing inside and across them
        parts.advance(L)
    assert int(whole.ncomp.min()) >= 8  # many patches closed within one pass
    for name in ("ent", "olog", "ncomp", "cur", "ids", "logits", "h"):
        a, b = getattr(whole, name), getattr(parts, name)
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    for r in range(2):
        n = int(whole.ncomp[r]) + 1
        assert torch.allclose(whole.table[r, :n], parts.table[r, :n], atol=1e-5)


def test_batch_equals_eager_batch(model):
    prompts = PROMPTS[:9]
    for kw in ({"max_bytes": 20}, {"max_bytes": 33, "stop": "e"}, {"max_bytes": 1}):
        eager = generate_batch(model, prompts, "blt", engine="eager", **kw)
        static = generate_batch(model, prompts, "blt", engine="static", **kw)
        for a, b in zip(eager, static):
            assert (a.output, a.stop_reason, a.counters) == (b.output, b.stop_reason, b.counters)


def test_state_is_reused_and_reloaded(model):
    assert static_state(model, 2) is static_state(model, 2)
    m = tiny().double()
    assert static_state(m, 1).h.dtype == torch.float64
    m.float()  # moved or cast: a new state with buffers to match
    assert static_state(m, 1).h.dtype == torch.float32
    first = generate(model, "abc", "blt", max_bytes=30, engine="static")
    generate(model, "something else entirely", "blt", max_bytes=50, engine="static")
    assert generate(model, "abc", "blt", max_bytes=30, engine="static").output == first.output


def test_engine_choice_and_refusals(model, monkeypatch):
    with pytest.raises(ValueError, match="unknown engine"):
        generate(model, "a", "blt", engine="fast")
    for kw in ({"mode": "blt-d4"}, {"mode": "blt-dv8"}, {"temperature": 0.5}, {"hooks": decode.Hooks()}):
        with pytest.raises(ValueError, match="engine 'static'"):
            generate(model, "a", **{"mode": "blt", **kw}, engine="static")
    hf = tiny(PatchConfig(max_patch=0), arch="hf")
    with pytest.raises(ValueError, match="engine 'static'"):
        generate(hf, "a", "blt", engine="static")
    monkeypatch.setattr(decode, "generate_static", lambda *a, **k: pytest.fail("static engine on a CPU"))
    generate(model, "a", "blt", max_bytes=3)  # auto: eager on a CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_equal_eager(model):
    m = BLT(model.cfg).eval()
    m.load_state_dict(model.state_dict())
    m.cuda()
    for p in PROMPTS[:12]:
        for mode in ("blt", "blt-s16"):
            same_generation(generate(m, p, mode, max_bytes=60, engine="eager"),
                            generate(m, p, mode, max_bytes=60, engine="static"))
    eager = generate_batch(m, PROMPTS[:16], "blt", max_bytes=40, engine="eager")
    for a, b in zip(eager, generate_batch(m, PROMPTS[:16], "blt", max_bytes=40)):
        assert a.output == b.output
