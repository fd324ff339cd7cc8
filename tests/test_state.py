"""The batched decoding state (decode/state.py) and the mode loops over it, against slower oracles:
the model's training forward without caches (`blt`, `blt-s*`: same bytes as the no-cache reference,
and each event's bytes, entropies and patch starts, and the pass counts, as the entropy model and
the patch rule give them on the whole sequence; same logits, entropies and patches per step), the
no-cache block-diffusion reference (`blt-d*`: same bytes), and one prompt at a time (every mode
batched: same bytes, counters and trace per row)."""
import dataclasses
import math

import pytest
import torch

from bltlab import kernels
from bltlab.config import PatchConfig, get_config
from bltlab.decode import generate, generate_batch, state
from bltlab.decode.common import allowed
from bltlab.decode.reference import generate_reference, generate_reference_diffusion
from bltlab.decode.state import MAX_BLOCK, DecodeState, decode_state
from bltlab.kernels.step import unmask_rule
from bltlab.entropy import entropy_of_logits
from bltlab.model import BLT
from bltlab.positions import CacheMasks, causal_mask
from bltlab.tokens import OFFSET, encode, to_bytes
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
    if key in ("entropy", "confidence") and x is not None:
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
    a.counters.pop("seconds", None), b.counters.pop("seconds", None)
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


def as_reference(m: BLT, prompt, mode: str = "blt", max_bytes: int = 64, stop=None):
    """`mode` (`blt`, `blt-s*` or `blt-dv*`, greedy) against the no-cache oracles: its bytes and stop reason are
    generate_reference's; every byte its events report, with its entropy H_t and whether it opened
    a patch, is what the entropy model and the patch rule give on the whole sequence (the bytes a
    generation pushed: all but a last one that a stop string or the budget ended on, which a
    verification may have pushed); and for `blt`,
    one decoder and one entropy-model pass per pushed byte after the prefill's, one encoder + global
    pass per pushed byte that closes a patch (the prefill's if its bytes close one). Returns the
    generation."""
    g = generate(m, prompt, mode, max_bytes=max_bytes, stop=stop)
    ref = generate_reference(m, prompt, max_bytes=max_bytes, stop=stop)
    assert (g.output, g.stop_reason) == (ref.output, ref.stop_reason)
    ids = encode(prompt)
    n = len(ids)
    made = g.output + (to_bytes(stop) if g.stop_reason == "stop" else b"")  # a stop string was made too
    seq = torch.tensor([ids + [b + OFFSET for b in made]])
    ent = m.entropy.entropies(seq)[0].tolist()
    starts = m.patch(seq)[0].tolist()
    prefill, *events = g.trace
    assert prefill["patch_starts"] == [u for u in range(n) if starts[u]]
    assert torch.allclose(torch.tensor(prefill["entropy"]), torch.tensor(ent[:n]), atol=2e-4)
    seen = []
    for e in events:
        if e["type"] == "byte":
            assert e["byte"] == int(seq[0, e["pos"]]) - OFFSET and abs(e["entropy"] - ent[e["pos"]]) <= 2e-4
            assert e["patch_start"] in (starts[e["pos"]], None)
            seen += [e["pos"]] if e["patch_start"] else []
        elif e["type"] == "verify":
            seen += e["patch_starts"]
    pushed = len(made) + n - (g.stop_reason != "eos")  # the positions the generation pushed
    want = [u for u in range(n, pushed) if starts[u]]
    # a verification may have pushed the last byte too (a draft went on after it)
    assert seen == want or (mode != "blt" and seen == want + [pushed] and starts[pushed])
    if mode == "blt":
        c = g.counters
        assert c["n_dec"] == c["n_ent"] == 1 + pushed - n
        assert c["n_enc"] == int(any(starts[1:n])) + len(seen)
    return g


def alone_and_batched(m: BLT, prompts: list, mode: str, **kw) -> tuple[list, list, dict]:
    """Each prompt alone, and all of them in one batch (without the batch's own counters, which
    come third: the passes it ran)."""
    alone = [generate(m, p, mode, **kw) for p in prompts]
    batch = generate_batch(m, prompts, mode, **kw)
    passes = batch[0].counters["batch_passes"]
    for g in batch:
        assert g.counters.pop("batch") == len(prompts) and g.counters.pop("batch_passes") == passes
    assert set(passes) == {"n_dec", "n_enc", "n_ent", "n_loc"}
    return alone, batch, passes


def choose_unmask(logits: torch.Tensor, masked: list[int], alpha: float | None, gamma: float | None,
                  in_order: bool = False) -> list[int]:
    """The unmasking rule as the paper states it, on one block's logits [L, 260] (the oracle of
    kernels.step.unmask_rule): by γ, the longest prefix of the masked slots sorted by entropy whose
    entropy sum less its largest term stays below γ; by α, every masked slot above α; at least one.
    in_order: the masked slots left to right, and the prefix stops at the first that fails; at least
    one only if every slot is masked."""
    least = 1 if not in_order or len(masked) == len(logits) else 0
    ent, conf, _ = kernels.confidence(allowed(logits[masked].float()))
    if gamma is not None:
        order = list(range(len(masked))) if in_order else ent.argsort(stable=True).tolist()
        n, total, top = 0, 0.0, -math.inf
        for i in order:
            total, top = total + float(ent[i]), max(top, float(ent[i]))
            if not torch.tensor(total, dtype=torch.float64).float() - ent.new_tensor(top) < gamma:
                if in_order:
                    break
                continue
            n += 1
        return [masked[i] for i in order[:max(least, n) if gamma > 0 else least]]
    if in_order:
        run = []
        for m, c in zip(masked, conf.tolist()):
            if not c > alpha:
                break
            run.append(m)
        return run or masked[:least]
    chosen = [m for m, c in zip(masked, conf.tolist()) if c > alpha]
    return chosen or [masked[int(conf.argmax())]]


def test_equals_the_reference_on_every_prompt(model):
    for i, p in enumerate(PROMPTS[:32]):
        as_reference(model, p, "blt", max_bytes=100 if i % 8 == 0 else 20)  # long: past the window (64)


@pytest.mark.parametrize("patch", [PatchConfig(rule="relative", threshold=0.01, max_patch=5),
                                   PatchConfig(rule="space", max_patch=0),
                                   PatchConfig(rule="fixed", stride=3, max_patch=0),
                                   PatchConfig(rule="global", threshold=0.0, max_patch=3)])
def test_equals_the_reference_under_every_rule(patch):
    m = tiny(patch)
    for p in PROMPTS[:10]:
        as_reference(m, p, "blt", max_bytes=30)


def test_entropy_window_and_stop_strings():
    m = tiny(entropy=dataclasses.replace(get_config("tiny").entropy, window=5))
    for p in PROMPTS[:8]:
        first = as_reference(m, p, "blt", max_bytes=40)
        as_reference(m, p, "blt", max_bytes=40, stop=first.output[5:7] or None)  # a stop string that occurs


@pytest.mark.parametrize("patch", [None, PatchConfig(threshold=0.0, max_patch=3)])
def test_logits_entropies_and_patches_step_by_step(patch):
    """After each step, the state's prediction is the training forward's on the whole sequence, and
    its entropies, patch starts, finished patches and open patch are the entropy model's and the
    patch rule's."""
    m = tiny(patch)
    ids = encode("def add(a, b):\n    return a + b\n")
    s = DecodeState(m, 1)
    s.prefill([ids])
    for _ in range(40):
        n = len(ids)
        x = torch.tensor([ids])
        starts = m.patch(x)
        assert torch.allclose(s.logits[0], m(x, starts)[0, -1], atol=1e-5, rtol=1e-5)
        starts = starts[0]
        assert torch.allclose(s.ent[0, :n], m.entropy.entropies(x)[0], atol=1e-5)
        assert s.olog[0, :n].tolist() == starts.tolist()
        assert int(s.ncomp[0]) == int(starts.sum()) - 1  # the last start's patch is open
        assert int(s.cur[0]) == int(starts.nonzero()[-1, 0])
        ids.append(int(s.ids[0, n]))
        s.run()


@pytest.mark.parametrize("mode", ["blt-s8", "blt-s16", "blt-dv4", "blt-dv16"])
def test_speculation_equals_the_reference(model, mode):
    for i, p in enumerate(PROMPTS[:24]):
        as_reference(model, p, mode, max_bytes=90 if i % 6 == 0 else 30)


@pytest.mark.parametrize("patch", [PatchConfig(rule="relative", threshold=0.01, max_patch=5),
                                   PatchConfig(rule="space", max_patch=0), PatchConfig(threshold=0.0, max_patch=3)])
def test_self_speculation_under_other_rules(patch):
    m = tiny(patch)
    for p in PROMPTS[:8]:
        for stop in (None, "e"):
            as_reference(m, p, "blt-s8", max_bytes=40, stop=stop)


@pytest.mark.parametrize("patch", [PatchConfig(threshold=0.0, max_patch=3), PatchConfig(rule="space", max_patch=0),
                                   PatchConfig(rule="relative", threshold=0.05, max_patch=4)])
def test_one_pass_equals_pieces(patch):
    m = tiny(patch)
    texts = ["def add(a, b):\n    return a + b  # the sum of a and b\n", "EN: Save the file as\nFR: Enregistrer le"]
    prompts = [encode(x)[:40] for x in texts]  # two rows, one length: one lockstep pass
    whole, parts = DecodeState(m, 2), DecodeState(m, 2)
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


def same_as_reference(m: BLT, g, mode: str, parted: list, **knobs) -> None:
    """blt-d*: the bytes of the no-cache reference, up to where the two part (a near-tie of the
    unmasking rule, decided by float rounding: the caller bounds how often)."""
    ref = generate_reference_diffusion(m, g.prompt, len(g.output) or 1, int(mode[5:]), **knobs)
    if g.stop_reason != "eos" and ref.output != g.output:
        parted.append((g.prompt, ref.output, g.output))


@pytest.mark.parametrize("mode", DIFFUSION_MODES)
def test_diffusion_modes_equal_the_reference_and_batch(sharp, mode):
    kinds, parted, prompts = set(), [], PROMPTS[:12]
    lengths = [90 if i % 6 == 0 else 30 for i in range(len(prompts))]  # long ones cross the local window (64)
    for p, n in zip(prompts, lengths):
        g = generate(sharp, p, mode, max_bytes=n, eta=2.0)
        kinds |= {e["type"] for e in g.trace}
        if mode.startswith("blt-d") and not mode.startswith("blt-dv"):
            same_as_reference(sharp, g, mode, parted)
    assert len(parted) <= 1, parted
    assert kinds >= ({"ar", "block", "switch"} if mode == "blt-h" else {"verify"} if "dv" in mode else {"block"})
    for a, b in zip(*alone_and_batched(sharp, prompts[1:], mode, max_bytes=30, eta=2.0)[:2]):
        same_generation(a, b)


@pytest.mark.parametrize("knobs", [{"gamma": 0.0}, {"gamma": 3.0}, {"gamma": 100.0}, {"alpha": 0.0}, {"alpha": 0.2},
                                   {"alpha": 1.5}, {"alpha": 0.2, "in_order": True, "exact_first": True},
                                   {"gamma": 3.0, "in_order": True}, {"alpha": 0.2, "exact_first": True}])
def test_unmasking_rules(sharp, knobs):
    passes, parted = [], []
    full = {"in_order": False, "exact_first": False} | knobs  # the paper's rule unless the knobs say
    for p in PROMPTS[:6]:
        for mode in ("blt-d16", "blt-h"):
            g = generate(sharp, p, mode, max_bytes=40, eta=2.5, **full)
            if mode == "blt-d16":
                same_as_reference(sharp, g, mode, parted, **full)
            first = mode == "blt-h" or full["exact_first"]  # slot 0 exact, never masked
            passes += [(len(e["steps"]), e["size"] - first) for e in g.trace if e["type"] == "block"]
    if knobs in ({"gamma": 0.0}, {"alpha": 1.5}):  # one slot per pass
        assert all(n == masked for n, masked in passes)
    elif knobs in ({"gamma": 100.0}, {"alpha": 0.0}):  # the whole block in one pass
        assert all(n == 1 for n, _ in passes)
    elif not knobs.get("in_order"):  # neither (in order, a block may end early: test_in_order_...)
        assert any(n > 1 for n, _ in passes) and any(n < masked for n, masked in passes)
    assert len(parted) <= 1, parted


@pytest.mark.parametrize("exact_first", [False, True])
def test_a_block_begins_in_the_push_before_it(sharp, exact_first):
    """blt-d*: the pass that pushes a block also runs the next block's first denoising pass, so with
    one slot per pass (α > 1, any order) the first block costs its masked slots + its push and every later one
    a pass less; the trace still shows every pass, and batched rows, whose pushes run in groups by
    length and block size, get what each row gets alone (the bytes too: test_diffusion_modes_...)."""
    prompts = PROMPTS[:4]
    for g in generate_batch(sharp, prompts, "blt-d4", max_bytes=30, alpha=1.5, in_order=False, exact_first=exact_first):
        blocks = [e for e in g.trace if e["type"] == "block"]
        masked = [e["size"] - exact_first for e in blocks]
        assert [len(e["steps"]) for e in blocks] == masked  # one slot per pass, the ridden one included
        pushes = len(blocks) - 1  # the block that ends the generation is never pushed
        assert g.counters["n_dec"] == 1 + masked[0] + sum(max(m - 1, 0) for m in masked[1:]) + pushes
    for a, b in zip(*alone_and_batched(sharp, prompts, "blt-d4", max_bytes=30, alpha=1.5, in_order=False,
                                        exact_first=exact_first)[:2]):
        same_generation(a, b)


@pytest.mark.parametrize("knobs", [{"alpha": 0.3}, {"gamma": 2.0}])
def test_in_order_fills_left_to_right(sharp, knobs):
    """in_order: each pass fills a run of slots that starts at the first one still masked, and a
    block ends early (fewer bytes than slots) only when a pass fills none; the same rule without it
    fills out of order on these prompts (the test can tell the two apart)."""
    for in_order in (True, False):
        runs, short = [], []
        for p in PROMPTS[:6]:
            for mode in ("blt-d8", "blt-h"):
                g = generate(sharp, p, mode, max_bytes=40, eta=2.5, exact_first=True, in_order=in_order, **knobs)
                for e in (e for e in g.trace if e["type"] == "block"):
                    done = 1
                    for step in e["steps"]:
                        runs.append(step["unmasked"] == list(range(done, done + len(step["unmasked"]))))
                        done += len(step["unmasked"])
                    assert len(e["bytes"]) + e["eos"] == done or e["patch_starts"] is None  # (None: it stopped)
                    short.append(done < e["size"])
        assert all(runs) if in_order else not all(runs)
        assert any(short) if in_order and "alpha" in knobs else not any(short)  # by γ one slot always fits


@pytest.mark.parametrize("patch", [PatchConfig(rule="relative", threshold=0.01, max_patch=5),
                                   PatchConfig(rule="space", max_patch=0), PatchConfig(threshold=0.0, max_patch=3)])
def test_diffusion_modes_under_other_rules(patch):
    m = tiny(patch)
    with torch.no_grad():
        m.head.weight.mul_(25)
    parted = []
    for p in PROMPTS[:6]:
        same_as_reference(m, generate(m, p, "blt-d8", max_bytes=40), "blt-d8", parted)
    assert len(parted) <= 1, parted
    for mode in ("blt-dv8", "blt-h"):
        for a, b in zip(*alone_and_batched(m, PROMPTS[:6], mode, max_bytes=40, stop="e", eta=2.0)[:2]):
            same_generation(a, b)


@pytest.mark.parametrize("in_order", [False, True])
@pytest.mark.parametrize("by_entropy", [False, True])
def test_unmask_rule_equals_choose_unmask(by_entropy, in_order):
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
                              knob if by_entropy else None, in_order)
        probs = allowed(logits.float())
        chosen, rank, ent, conf = unmask_rule(probs[None], masked[None], torch.tensor([knob], dtype=torch.float64),
                                              by_entropy, in_order)
        assert sorted(chosen[0].nonzero()[:, 0].tolist(), key=lambda i: int(rank[0, i])) == eager
        # the scores the trace shows, as denoise_block computes them
        assert torch.equal(conf[0], probs.softmax(-1).amax(-1)) and torch.equal(ent[0], entropy_of_logits(probs))


@pytest.mark.parametrize("mode, kw", [("blt", {"max_bytes": 20}), ("blt", {"max_bytes": 33, "stop": None}),
                                      ("blt", {"max_bytes": 1}),
                                      ("blt-d4", {"max_bytes": 30}), ("blt-d8", {"max_bytes": 41, "stop": None}),
                                      ("blt-d16", {"max_bytes": 35, "gamma": 3.0}), ("blt-d8", {"max_bytes": 1}),
                                      ("blt-d8", {"max_bytes": 90, "alpha": 0.2}),
                                      ("blt-s8", {"max_bytes": 30}), ("blt-s16", {"max_bytes": 45, "stop": None}),
                                      ("blt-dv4", {"max_bytes": 30}), ("blt-dv8", {"max_bytes": 37, "stop": None}),
                                      ("blt-dv16", {"max_bytes": 45}), ("blt-s8", {"max_bytes": 1}),
                                      ("blt-h", {"max_bytes": 45}), ("blt-h", {"max_bytes": 40, "stop": None}),
                                      ("blt-h", {"max_bytes": 37, "eta": 2.0, "block": 16, "gamma": 3.0})])
def test_batch_equals_one_prompt_at_a_time(sharp, mode, kw):
    """Every mode batched on ragged prompts: each row's bytes, stop reason, counters and trace are
    those of its prompt alone; rows stop at different times, and the speculative and hybrid rows
    move on by different numbers of bytes per round, so their positions part."""
    prompts = PROMPTS[:7]
    if "stop" in kw:  # one that really occurs, in some rows only
        kw["stop"] = generate(sharp, prompts[0], mode, max_bytes=40).output[6:8]
    alone, batch, passes = alone_and_batched(sharp, prompts, mode, **kw)
    for a, b in zip(alone, batch):
        same_generation(a, b)
    if kw["max_bytes"] > 1:
        assert len({g.counters["bytes"] for g in alone}) > 1 or "stop" not in kw
        assert passes["n_dec"] < sum(g.counters["n_dec"] for g in alone)  # passes shared by rows


def test_state_is_reused_and_reloaded(model):
    assert decode_state(model, 2) is decode_state(model, 2)
    m = tiny().double()
    assert decode_state(m, 1).h.dtype == torch.float64
    m.float()  # moved or cast: a new state with buffers to match
    assert decode_state(m, 1).h.dtype == torch.float32
    first = generate(model, "abc", "blt", max_bytes=30)
    generate(model, "something else entirely", "blt", max_bytes=50)
    assert generate(model, "abc", "blt", max_bytes=30).output == first.output


@pytest.mark.parametrize("window", [0, 5, 40])
def test_cache_masks_equal_causal_masks(window):
    """A pass's mask gathered from its window's band equals positions.causal_mask over the whole
    cache, in additive form, at any positions (the first and the last included)."""
    T, S = 50, 64
    masks = CacheMasks(T, S, {window}, 16, MAX_BLOCK, torch.zeros(1))
    pos = torch.tensor([[0, 1, 2], [T - 3, T - 2, T - 1]])
    want = torch.where(causal_mask(pos, torch.arange(S)[None], window), 0.0, float("-inf"))
    assert torch.equal(masks.causal(pos, window)[0], want)


@pytest.mark.parametrize("L", [1, 3, 8])
def test_advance_with_close_equals_advance_then_close(model, L):
    """A pass that closes the patch at its end in the same global step leaves the state as the pass
    and then `close` do: positions, patches, signal, logs, the global model's table rows and cache."""
    states = []
    for fused in (False, True):
        s = DecodeState(model, 3)
        s.prefill([encode(p) for p in PROMPTS[:3]])
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
            assert torch.allclose(x.kv[:, row, :, :n], y.kv[:, row, :, :n], atol=1e-4)
    assert torch.equal(b.cur, b.t) and b.forced[b.rows, b.t].all()  # a patch starts at t


def test_cache_block_masks_equal_the_denoising_rule():
    """A denoising pass's mask, gathered from its block size's table, lets slot i of a block at t
    read every key before the block's end that is less than the local window behind it (the
    block both ways), at any t (the first and the last a block may start at)."""
    T, S, W = 50, 64, 20
    masks = CacheMasks(T, S, {0}, W, MAX_BLOCK, torch.zeros(1))
    k = torch.arange(S)[None, None]
    for size in (1, 3, 16):
        for t in ([0, T - size], [7, W + 2]):
            t = torch.tensor(t)
            pos = t[:, None] + torch.arange(size)
            allow = (k < (t + size)[:, None, None]) & (pos[..., None] - k < W)
            assert torch.equal(masks.block(t, size), torch.where(allow, 0.0, float("-inf"))[:, None])


def test_steps_with_the_triton_kernels_equal_the_references(sharp):
    """Every step kind with the Triton kernels, as a GPU runs them (here in Triton's interpreter),
    against the same steps on the PyTorch references: logits, entropies, bytes, positions and
    signals, denoising by α and by γ (scores, logs, slots left)."""
    prompts = [encode("def f(x):"), encode("EN: Hi")]
    out = {}
    for name in ("reference", "triton"):
        with kernels.backend(name):
            s = DecodeState(sharp, 2)  # far from uniform: no near-ties in the entropies γ sorts
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
    s = decode_state(m, 1)
    generate(m, PROMPTS[0], "blt", max_bytes=20)
    version = s.version
    generate(m, PROMPTS[0], "blt", max_bytes=20)
    assert s.version is version  # nothing written: nothing recopied
    layer = m.dec_layers[0]
    for w in (layer.attn.wq.weight, layer.ffn.w3.weight, layer.cross.wv.weight, m.pool.wk.weight, m.start_slots):
        with torch.no_grad():
            w.mul_(1.5)
        as_reference(m, PROMPTS[0], "blt", max_bytes=20)
    m.load_state_dict(other.state_dict())
    as_reference(m, PROMPTS[0], "blt", max_bytes=20)
    assert decode_state(m, 1) is s


def test_refusals(model):
    for bad in ({"alpha": 3.0}, {"alpha": 0.5, "gamma": 1.0}, {"eta": -1.0}, {"block": 5}):
        with pytest.raises(ValueError, match="alpha|gamma|eta|block"):
            generate(model, "a", "blt-h", **bad)
        with pytest.raises(ValueError, match="alpha|gamma|eta|block"):
            generate_batch(model, ["a", "b"], "blt-h", **bad)
    with pytest.raises(ValueError, match="no prompts"):
        generate_batch(model, [], "blt")
    with pytest.raises(ValueError, match="unknown mode"):
        generate_batch(model, ["a"], "blt-x")


def test_sampling_is_seeded_and_batches(sharp):
    """Sampling in every mode: a seed gives the same bytes again, another seed other bytes, and
    a batch samples each of its rows."""
    for mode in ("blt", "blt-s8", "blt-d8", "blt-dv8", "blt-h"):
        kw = dict(max_bytes=30, temperature=1.0, eta=2.0)
        a, b = (generate(sharp, PROMPTS[0], mode, seed=3, **kw) for _ in range(2))
        others = {generate(sharp, PROMPTS[0], mode, seed=s, **kw).output for s in range(4, 8)}
        assert a.output == b.output and others - {a.output}, mode
        batch = generate_batch(sharp, PROMPTS[:3], mode, seed=3, **kw)
        assert all(g.stop_reason and (g.output or g.stop_reason == "eos") for g in batch)


def test_compiled_steps_equal_eager(model, monkeypatch):
    """compiled=True: the same steps through torch.compile. Traced here with "aot_eager", which
    builds and functionalises the same graphs as inductor but runs them with PyTorch's kernels
    (inductor's compile of every step takes minutes on a CPU; the GPU run uses it)."""
    gpu = torch.cuda.is_available()  # there: the real compiler, and CUDA graphs of its kernels
    monkeypatch.setattr(state, "COMPILE_BACKEND", "inductor" if gpu else "aot_eager")
    m = tiny().to("cuda" if gpu else "cpu")
    with torch.no_grad():
        m.head.weight.mul_(25)
    for mode in ("blt", "blt-s8", "blt-d8", "blt-dv8"):  # each step kind; compiling is what takes time
        same_generation(generate(m, PROMPTS[1], mode, max_bytes=24),
                        generate(m, PROMPTS[1], mode, max_bytes=24, compiled=True))
    s = decode_state(m, 1, compiled=True)
    assert s is not decode_state(m, 1) and set(s.steps.compiled) >= {"advance", "draft", "close", "denoise"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_equal_eager(model):
    m = BLT(model.cfg).eval()
    m.load_state_dict(model.state_dict())
    m.cuda()
    for p in PROMPTS[:12]:
        for mode in ("blt", "blt-s16"):
            as_reference(m, p, mode, max_bytes=60)
        for mode in ("blt-d8", "blt-dv16", "blt-h"):
            assert generate(m, p, mode, max_bytes=60).output == generate(m.cpu(), p, mode, max_bytes=60).output
            m.cuda()
    for mode in ("blt", "blt-d8", "blt-s16", "blt-dv8", "blt-h"):
        batch = generate_batch(m, PROMPTS[:16], mode, max_bytes=40)
        assert [g.output for g in batch] == [generate(m, p, mode, max_bytes=40).output for p in PROMPTS[:16]]


def test_concurrent_requests_each_get_a_state(model):
    """Requests from several threads at once (the app's) each claim a state of their own: the
    same bytes as one after another, and the states are handed back."""
    from concurrent.futures import ThreadPoolExecutor

    serial = [generate(model, p, "blt-s8", max_bytes=30).output for p in PROMPTS[:8]]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda p: generate(model, p, "blt-s8", max_bytes=30).output, PROMPTS[:8]))
    assert threaded == serial
    assert not any(s.busy for pool in state._STATES[model].values() for s in pool)
