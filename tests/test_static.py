"""The static-cache / CUDA-graph engine (decode/static.py, static_modes.py) against the eager
decoders it replaces, in every mode: same bytes, stop reasons, counters and trace; same logits,
entropies and patches per step."""
import dataclasses

import pytest
import torch

from bltlab import decode, kernels
from bltlab.config import PatchConfig, get_config
from bltlab.decode import generate, generate_batch, static
from bltlab.decode.common import allowed
from bltlab.decode.diffusion import choose_unmask
from bltlab.decode.state import SeqState
from bltlab.decode.static import StaticState, static_state
from bltlab.kernels.step import unmask_rule
from bltlab.entropy import entropy_of_logits
from bltlab.model import BLT
from bltlab.tokens import OFFSET, encode
from test_decode import PROMPTS, own_reads


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


@pytest.fixture(scope="module")
def sharp():
    """A tiny model whose predictions are far from uniform: entropies between 0 and 4 nats, so the
    hybrid switches both ways and the unmasking rules take several slots in a pass or one."""
    m = tiny()
    with torch.no_grad():
        m.head.weight.mul_(25)
    return m


def same_event(x, y, key=None):
    """Equal, except entropies and confidences, rounded to 4 places: one unit apart at most."""
    if key in ("entropy", "confidence"):
        assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=2e-4, rtol=0), key
    elif isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys()
        for k in x:
            same_event(x[k], y[k], k)
    elif isinstance(x, list) and x and isinstance(x[0], dict):
        assert isinstance(y, list) and len(x) == len(y)
        for a, b in zip(x, y):
            same_event(a, b)
    else:
        assert x == y, (key, x, y)


def near_tie(x: dict, y: dict) -> bool:
    """Two block events that part at a near-tie of the unmasking rule: at the first step where
    they differ, each fills as many slots, and the slots only one of them filled have confidences
    or entropies within 1e-3 of each other (float rounding, different on each engine, decides)."""
    if x["type"] != "block" or y["type"] != "block":
        return False
    for sx, sy in zip(x["steps"], y["steps"]):
        if sx["unmasked"] != sy["unmasked"]:
            only = [(s["confidence"][i], s["entropy"][i]) for s, other in ((sx, sy), (sy, sx))
                    for i, slot in enumerate(s["unmasked"]) if slot not in other["unmasked"]]
            spread = [max(v) - min(v) for v in zip(*only)] if only else [1.0]
            return len(sx["unmasked"]) == len(sy["unmasked"]) and min(spread) <= 1e-3
    return False


def same_generation(a, b, ties: list | None = None):
    """Same bytes, stop reason, counters and trace. With `ties`, a generation whose trace parts at a
    `near_tie` is appended to it and compared no further (the caller bounds how often that happens)."""
    a.counters.pop("seconds"), b.counters.pop("seconds")
    if ties is not None:
        for x, y in zip(a.trace, b.trace):
            try:
                same_event(x, y)
            except AssertionError:
                if near_tie(x, y):
                    ties.append((a.prompt, x["pos"]))
                    return
                raise
    assert a.output == b.output and a.stop_reason == b.stop_reason
    assert a.counters == b.counters
    same_event(a.trace, b.trace)


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
    s.prefill([ids])
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


DIFFUSION_MODES = ["blt-d4", "blt-d8", "blt-d16", "blt-dv4", "blt-dv8", "blt-dv16", "blt-h"]


@pytest.mark.parametrize("mode", DIFFUSION_MODES)
def test_diffusion_modes_equal_eager(sharp, mode):
    kinds, ties = set(), []
    for i, p in enumerate(PROMPTS[:12]):
        n = 90 if i % 6 == 0 else 30  # long ones cross the local window (64)
        eager = generate(sharp, p, mode, max_bytes=n, eta=2.0, engine="eager")
        kinds |= {e["type"] for e in eager.trace}
        same_generation(eager, generate(sharp, p, mode, max_bytes=n, eta=2.0, engine="static"), ties)
    assert len(ties) <= 1, ties
    assert kinds >= ({"ar", "block", "switch"} if mode == "blt-h" else {"block"} if mode[5] != "v" else {"verify"})


@pytest.mark.parametrize("knobs", [{"gamma": 0.0}, {"gamma": 3.0}, {"gamma": 100.0}, {"alpha": 0.0}, {"alpha": 0.2},
                                   {"alpha": 1.5}])
def test_unmasking_rules_equal_eager(sharp, knobs):
    passes, ties = [], []
    for p in PROMPTS[:6]:
        for mode in ("blt-d16", "blt-h"):
            eager = generate(sharp, p, mode, max_bytes=40, eta=2.5, engine="eager", **knobs)
            same_generation(eager, generate(sharp, p, mode, max_bytes=40, eta=2.5, engine="static", **knobs), ties)
            passes += [(len(e["steps"]), e["size"] - (mode == "blt-h")) for e in eager.trace if e["type"] == "block"]
    if knobs in ({"gamma": 0.0}, {"alpha": 1.5}):  # one slot per pass
        assert all(n == masked for n, masked in passes)
    elif knobs in ({"gamma": 100.0}, {"alpha": 0.0}):  # the whole block in one pass
        assert all(n == 1 for n, _ in passes)
    else:  # neither
        assert any(n > 1 for n, _ in passes) and any(n < masked for n, masked in passes)
    assert len(ties) <= 1, ties


@pytest.mark.parametrize("patch", [PatchConfig(rule="relative", threshold=0.01, max_patch=5),
                                   PatchConfig(rule="space", max_patch=0), PatchConfig(threshold=0.0, max_patch=3)])
def test_diffusion_modes_under_other_rules(patch):
    m = tiny(patch)
    with torch.no_grad():
        m.head.weight.mul_(25)
    ties = []
    for p in PROMPTS[:6]:
        for mode, stop in (("blt-d8", None), ("blt-dv8", "e"), ("blt-h", "e")):
            same_generation(generate(m, p, mode, max_bytes=40, stop=stop, eta=2.0, engine="eager"),
                            generate(m, p, mode, max_bytes=40, stop=stop, eta=2.0, engine="static"), ties)
    assert len(ties) <= 1, ties


@pytest.mark.parametrize("by_entropy", [False, True])
def test_unmask_rule_equals_choose_unmask(by_entropy):
    """The device rule against the eager one on the same logits, exact ties included."""
    g = torch.Generator().manual_seed(0)
    knobs = (0.0, 0.5, 3.0, 20.0) if by_entropy else (-1.0, 0.0, 0.05, 0.3, 0.9, 1.5)
    for trial in range(300):
        L = int(torch.randint(1, 17, (1,), generator=g))
        logits = torch.randn(L, 260, generator=g) * float(torch.rand(1, generator=g) * 10)
        if trial % 3 == 0:
            logits[L // 2:] = logits[0]  # rows that tie exactly
        masked = torch.rand(L, generator=g) < 0.7
        masked[int(torch.randint(0, L, (1,), generator=g))] = True
        knob = knobs[trial % len(knobs)]
        eager = choose_unmask(logits, masked.nonzero()[:, 0].tolist(), None if by_entropy else knob,
                              knob if by_entropy else None)
        probs = allowed(logits.float())
        chosen, rank, ent, conf = unmask_rule(probs[None], masked[None], torch.tensor([knob], dtype=torch.float64),
                                              by_entropy)
        assert sorted(chosen[0].nonzero()[:, 0].tolist(), key=lambda i: int(rank[0, i])) == eager
        # the scores the trace shows, as denoise_block computes them
        assert torch.equal(conf[0], probs.softmax(-1).amax(-1)) and torch.equal(ent[0], entropy_of_logits(probs))


def test_batch_equals_eager_batch(model):
    prompts = PROMPTS[:9]
    for kw in ({"max_bytes": 20}, {"max_bytes": 33, "stop": "e"}, {"max_bytes": 1}):
        eager = generate_batch(model, prompts, "blt", engine="eager", **kw)
        static = generate_batch(model, prompts, "blt", engine="static", **kw)
        for a, b in zip(eager, static):
            assert (a.output, a.stop_reason, a.counters) == (b.output, b.stop_reason, b.counters)


@pytest.mark.parametrize("mode, kw", [("blt-d4", {"max_bytes": 30}), ("blt-d8", {"max_bytes": 41, "stop": None}),
                                      ("blt-d16", {"max_bytes": 35, "gamma": 3.0}), ("blt-d8", {"max_bytes": 1}),
                                      ("blt-d8", {"max_bytes": 90, "alpha": 0.2})])
def test_batch_diffusion_equals_eager_batch(sharp, mode, kw):
    prompts = PROMPTS[:7]  # ragged: rows wait at the end of their prompt while the others read theirs
    if "stop" in kw:  # one that really occurs, in some rows only
        kw["stop"] = generate_batch(sharp, prompts, mode, max_bytes=40, engine="eager")[0].output[6:8]
    eager = generate_batch(sharp, prompts, mode, engine="eager", **kw)
    static = generate_batch(sharp, prompts, mode, engine="static", **kw)
    if "stop" in kw:  # rows stop at different times
        assert len({len(g.output) for g in eager}) > 1
    for a, b in zip(eager, static):
        assert (a.output, a.stop_reason, a.counters) == (b.output, b.stop_reason, b.counters)


@pytest.mark.parametrize("mode, kw", [("blt-s8", {"max_bytes": 30}), ("blt-s16", {"max_bytes": 45, "stop": None}),
                                      ("blt-dv4", {"max_bytes": 30}), ("blt-dv8", {"max_bytes": 37, "stop": None}),
                                      ("blt-dv16", {"max_bytes": 45}), ("blt-s8", {"max_bytes": 1}),
                                      ("blt-h", {"max_bytes": 45}), ("blt-h", {"max_bytes": 40, "stop": None}),
                                      ("blt-h", {"max_bytes": 37, "eta": 2.0, "block": 16, "gamma": 3.0})])
def test_batch_static_only_modes_equal_one_prompt_at_a_time(sharp, mode, kw):
    """Batched blt-s*, blt-dv*, blt-h (static engine only): each row's bytes and stop reason are those
    of its prompt alone; rows move on by different numbers of bytes per round, so their positions part."""
    prompts = PROMPTS[:7]
    if "stop" in kw:  # one that really occurs, in some rows only
        kw["stop"] = generate(sharp, prompts[0], mode, max_bytes=40, engine="eager").output[6:8]
    alone = [generate(sharp, p, mode, engine="eager", **kw) for p in prompts]
    batch = generate_batch(sharp, prompts, mode, **kw)  # auto: the static engine
    assert [(g.output, g.stop_reason, own_reads(g)) for g in batch] == \
           [(g.output, g.stop_reason, own_reads(g)) for g in alone]
    assert all(g.counters["batch"] == 7 and g.counters == batch[0].counters | {"bytes": len(g.output)} | own_reads(g)
               for g in batch)
    if kw["max_bytes"] > 1:
        assert len({g.counters["bytes"] for g in alone}) > 1 or "stop" not in kw
        assert batch[0].counters["n_dec"] < sum(g.counters["n_dec"] for g in alone)  # passes shared by rows
    with pytest.raises(ValueError, match="static engine only"):
        generate_batch(sharp, prompts, mode, engine="eager", **kw)


def test_state_is_reused_and_reloaded(model):
    assert static_state(model, 2) is static_state(model, 2)
    m = tiny().double()
    assert static_state(m, 1).h.dtype == torch.float64
    m.float()  # moved or cast: a new state with buffers to match
    assert static_state(m, 1).h.dtype == torch.float32
    first = generate(model, "abc", "blt", max_bytes=30, engine="static")
    generate(model, "something else entirely", "blt", max_bytes=50, engine="static")
    assert generate(model, "abc", "blt", max_bytes=30, engine="static").output == first.output


@pytest.mark.parametrize("window", [0, 5, 40])
def test_band_masks_equal_causal_masks(window):
    """A pass's mask gathered from its window's band equals layers.causal_mask over the whole
    cache, in additive form, at any positions (the first and the last included)."""
    from bltlab.layers import causal_mask

    s = StaticState(tiny(), 2)
    s.bands[window] = s._band(window)
    pos = torch.tensor([[0, 1, 2], [s.T - 3, s.T - 2, s.T - 1]])
    want = torch.where(causal_mask(pos, s.keys[None], window), 0.0, float("-inf"))
    assert torch.equal(s._masks(pos, window)[0], want)


@pytest.mark.parametrize("L", [1, 3, 8])
def test_advance_with_close_equals_advance_then_close(model, L):
    """A pass that closes the patch at its end in the same global step leaves the state as the pass
    and then `close` do: positions, patches, signal, logs, the global model's table rows and cache."""
    states = []
    for fused in (False, True):
        s = StaticState(model, 3)
        s.prefill([encode(p) for p in PROMPTS[:3]], freeze=True)
        s.advance(L, True, close=fused)
        if not fused:
            s.close()
        states.append(s)
    a, b = states
    for name in ("ids", "t", "cur", "ncomp", "signal", "forced", "olog", "pred"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.allclose(a.ent, b.ent, atol=1e-5) and torch.allclose(a.logits, b.logits, atol=1e-4)
    for row, n in enumerate(a.ncomp.tolist()):  # the finished patches' table rows (0: the start) and keys
        assert torch.allclose(a.table[row, :n + 1], b.table[row, :n + 1], atol=1e-4)
        for x, y in zip(a.glob_kv, b.glob_kv):
            assert torch.allclose(x[:, row, :, :n], y[:, row, :, :n], atol=1e-4)
    assert torch.equal(b.cur, b.t) and b.forced[b.rows, b.t].all()  # a patch starts at t


def test_block_masks_equal_the_denoising_rule():
    """A denoising pass's mask, gathered from its block size's table, lets slot i of a block at t
    read every key before the block's end that is less than the local window behind it (the
    block both ways), at any t (the first and the last a block may start at)."""
    s = StaticState(tiny(), 2)
    k = s.keys[None, None]
    for size in (1, 3, 16):
        for t in ([0, s.T - size], [7, s.cfg.local_window + 2]):
            s.t.copy_(torch.tensor(t))
            pos = s.t[:, None] + s.kpos[:size]
            allow = (k < (s.t + size)[:, None, None]) & (pos[..., None] - k < s.cfg.local_window)
            assert torch.equal(s._block_mask(size), torch.where(allow, 0.0, float("-inf"))[:, None])


def test_steps_with_the_triton_kernels_equal_the_references(sharp):
    """Every step kind with the Triton kernels, as a GPU runs them (here in Triton's interpreter),
    against the same steps on the PyTorch references: logits, entropies, bytes, positions and
    signals, denoising by α and by γ (scores, logs, slots left)."""
    prompts = [encode("def f(x):"), encode("EN: Hi")]
    out = {}
    for name in ("reference", "triton"):
        with kernels.backend(name):
            s = StaticState(sharp, 2)  # far from uniform: no near-ties in the entropies γ sorts
            s.prefill(prompts)
            s.run()  # a byte with the global step
            s.dt.copy_(s.t)
            s.run_draft()
            s.run_close()
            s.run_begin(False, 0.5)
            s.run_denoise(4, False)
            out[name] = [x.clone().float() for x in (s.logits, s.ent, s.ids, s.scores, s.table, s.filled, s.left)]
            s.run_begin(False, 1.5)
            s.run_denoise(4, True)
            out[name] += [x.clone().float() for x in (s.ids, s.scores, s.filled, s.left, s.nstep, s.signal, s.t)]
    for a, b in zip(out["triton"], out["reference"]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())


def test_weights_written_in_place_reach_the_state():
    """The state keeps fused copies of some weights and refreshes them only when a parameter was
    written since (its version counter): every kind of fused weight, then a load_state_dict."""
    m, other = tiny(), tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s = static_state(m, 1)
    generate(m, PROMPTS[0], "blt", max_bytes=20, engine="static")
    version = s.version
    generate(m, PROMPTS[0], "blt", max_bytes=20, engine="static")
    assert s.version is version  # nothing written: nothing recopied
    layer = m.dec_layers[0]
    for w in (layer.attn.wq.weight, layer.ffn.w3.weight, layer.cross.wv.weight, m.pool.wk.weight, m.start_slots):
        with torch.no_grad():
            w.mul_(1.5)
        same_generation(generate(m, PROMPTS[0], "blt", max_bytes=20, engine="eager"),
                        generate(m, PROMPTS[0], "blt", max_bytes=20, engine="static"))
    m.load_state_dict(other.state_dict())
    same_generation(generate(m, PROMPTS[0], "blt", max_bytes=20, engine="eager"),
                    generate(m, PROMPTS[0], "blt", max_bytes=20, engine="static"))
    assert static_state(m, 1) is s


def test_engine_choice_and_refusals(model, monkeypatch):
    with pytest.raises(ValueError, match="unknown engine"):
        generate(model, "a", "blt", engine="fast")
    for kw in ({"mode": "blt-d4", "temperature": 0.5}, {"temperature": 0.5}, {"hooks": decode.Hooks()}):
        with pytest.raises(ValueError, match="engine 'static'"):
            generate(model, "a", **{"mode": "blt", **kw}, engine="static")
    for bad in ({"alpha": 3.0}, {"alpha": 0.5, "gamma": 1.0}, {"eta": -1.0}, {"block": 5}):
        for engine in ("eager", "static"):  # the same refusals on both engines
            with pytest.raises(ValueError, match="alpha|gamma|eta|block"):
                generate(model, "a", "blt-h", engine=engine, **bad)
    hf = tiny(PatchConfig(max_patch=0), arch="hf")
    with pytest.raises(ValueError, match="engine 'static'"):
        generate(hf, "a", "blt", engine="static")
    monkeypatch.setattr(decode, "generate_static", lambda *a, **k: pytest.fail("static engine on a CPU"))
    generate(model, "a", "blt", max_bytes=3)  # auto: eager on a CPU


def test_compiled_steps_equal_eager(model, monkeypatch):
    """engine "compiled": the same steps through torch.compile. Traced here with "aot_eager", which
    builds and functionalises the same graphs as inductor but runs them with PyTorch's kernels
    (inductor's compile of every step takes minutes on a CPU; the GPU run uses it)."""
    gpu = torch.cuda.is_available()  # there: the real compiler, and CUDA graphs of its kernels
    monkeypatch.setattr(static, "COMPILE_BACKEND", "inductor" if gpu else "aot_eager")
    m = tiny().to("cuda" if gpu else "cpu")
    with torch.no_grad():
        m.head.weight.mul_(25)
    for mode in ("blt", "blt-s8", "blt-d8", "blt-dv8"):  # each step kind; compiling is what takes time
        same_generation(generate(m, PROMPTS[1], mode, max_bytes=24, engine="eager"),
                        generate(m, PROMPTS[1], mode, max_bytes=24, engine="compiled"))
    s = static_state(m, 1, compiled=True)
    assert s is not static_state(m, 1) and set(s._compiled) >= {"advance", "draft", "close", "denoise"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_equal_eager(model):
    m = BLT(model.cfg).eval()
    m.load_state_dict(model.state_dict())
    m.cuda()
    for p in PROMPTS[:12]:
        for mode in ("blt", "blt-s16", "blt-d8", "blt-dv16", "blt-h"):
            same_generation(generate(m, p, mode, max_bytes=60, engine="eager"),
                            generate(m, p, mode, max_bytes=60, engine="static"))
    for mode in ("blt", "blt-d8"):
        eager = generate_batch(m, PROMPTS[:16], mode, max_bytes=40, engine="eager")
        for a, b in zip(eager, generate_batch(m, PROMPTS[:16], mode, max_bytes=40, engine="static")):
            assert a.output == b.output
    for mode in ("blt-s16", "blt-dv8", "blt-h"):
        batch = generate_batch(m, PROMPTS[:16], mode, max_bytes=40, engine="static")
        assert [g.output for g in batch] == [generate(m, p, mode, max_bytes=40, engine="eager").output
                                             for p in PROMPTS[:16]]
