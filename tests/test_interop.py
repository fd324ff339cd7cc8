"""bltlab.interop against transformers' own BltForCausalLM (random tiny models, fp32, CPU)."""
import json

import pytest
import torch
import transformers  # a test dependency (pyproject [dev]); bltlab itself never imports it
from safetensors.torch import load_file, save_file

from bltlab.checkpoint import CheckpointError
from bltlab.decode import generate, generate_batch, generate_reference
from bltlab.decode.common import allowed
from bltlab.interop import config_from_hf, is_hf_dir, load_hf, save_hf
from bltlab.tokens import encode

TEXTS = [b"def add(a, b):\n    return a + b  # sum", "EN: Save file\nFR: Enregistrer".encode(), b"x"]
PROMPTS = [b"EN: Open the file\nFR:", b"import os\n", "Größe: ".encode()]
# the options transformers' BltConfig offers, each covered by at least one case
CASES = {
    "default-ish": dict(),
    "one-slot, first-layer cross-attn, 2 hash functions, no max": dict(k=1, d_global=48, dec_all=False, nb=2,
                                                                       max_patch=None, sizes=(3, 5)),
    "3 slots, window 9, max 3, 2 encoder layers": dict(k=3, d_global=96, window=9, max_patch=3, enc_layers=2),
    "identity global projection, big hash table": dict(k=2, d_global=64, hash_vocab=5003, sizes=(2, 3, 4, 5, 6, 7, 8)),
}


def make_hf(k=2, d_global=80, dec_all=True, nb=1, max_patch=4, sizes=(3, 4, 6), hash_vocab=97, window=512,
            enc_layers=1, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BltConfig(
        encoder_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=enc_layers, cross_attn_k=k),
        decoder_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=3, intermediate_size=72,
                            hidden_size_global=d_global, cross_attn_all_layers=dec_all, cross_attn_k=k),
        global_config=dict(hidden_size=d_global, num_attention_heads=2, num_hidden_layers=2, intermediate_size=96),
        patcher_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64),
        encoder_hash_byte_group_size=list(sizes), encoder_hash_byte_group_vocab=hash_vocab,
        encoder_hash_byte_group_nb_functions=nb, max_patch_length=max_patch, cross_attn_k=k,
        local_attention_window_len=window)
    cfg._attn_implementation = "eager"
    model = transformers.BltForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.patcher.lm_head.weight.mul_(8)  # random init gives near-uniform entropies: spread them
    return model


def ids_of(text: bytes) -> torch.Tensor:
    return torch.tensor([encode(text)])


def set_threshold(hf, ours, texts) -> float:
    """A threshold halfway between two entropies of the texts, so both models cut in the same places."""
    ent = torch.cat([ours.entropy.entropies(ids_of(t))[0, 1:] for t in texts]).sort().values
    i = len(ent) // 2
    th = float(ent[i - 1] + ent[i]) / 2
    hf.config.patching_threshold = th
    ours.cfg.patch.threshold = th
    return th


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def pair(request, tmp_path_factory):
    hf = make_hf(**CASES[request.param])
    d = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(d)
    ours = load_hf(d)
    set_threshold(hf, ours, TEXTS + PROMPTS)
    return hf, ours, d


def hf_starts(hf, ids: torch.Tensor) -> list[int]:
    """Patch starts transformers' patcher gives (empty trailing patches dropped)."""
    with torch.no_grad():
        _, lengths, _ = hf.model.patcher(ids, patch_size=hf.config.patch_size, threshold=hf.config.patching_threshold,
                                         max_patch_length=hf.config.max_patch_length)
    starts = torch.cat((torch.zeros(1, dtype=torch.long), lengths[0].cumsum(0)[:-1]))
    return sorted({int(s) for s in starts if s < ids.shape[1]})


@torch.no_grad()
def test_logits_and_patches_match(pair):
    hf, ours, _ = pair
    for text in TEXTS:
        ids = ids_of(text)
        starts = ours.patch(ids)
        assert starts[0].nonzero().flatten().tolist() == hf_starts(hf, ids)
        diff = (hf(ids, use_cache=False).logits - ours(ids, starts)).abs().max().item()
        assert diff <= 1e-4, (text, diff)


def hf_greedy(hf, prompt: bytes, n: int) -> bytes:
    ids = ids_of(prompt)
    out = hf.generate(ids, max_new_tokens=n, do_sample=False, use_cache=False, suppress_tokens=[0, 1, 3],
                      eos_token_id=2, pad_token_id=0)[0, ids.shape[1]:].tolist()
    return bytes(t - 4 for t in out if t >= 4)  # drops the EOS transformers keeps


def test_greedy_generation_matches_transformers(pair):
    hf, ours, _ = pair
    for prompt in PROMPTS:
        theirs = hf_greedy(hf, prompt, 32)
        mine = generate(ours, prompt, "blt", max_bytes=32)
        assert mine.output == theirs
        assert generate_reference(ours, prompt, max_bytes=32).output == theirs
        assert len(theirs) == 32 or mine.stop_reason == "eos"


def test_self_speculation_equals_blt_on_foreign_weights(pair):
    _, ours, _ = pair
    for prompt in PROMPTS + [b"a", b"The quick brown fox"]:
        want = generate(ours, prompt, "blt", max_bytes=40).output
        for mode in ("blt-s8", "blt-s16"):
            assert generate(ours, prompt, mode, max_bytes=40).output == want, (mode, prompt)


def test_a_batch_equals_one_prompt_at_a_time(pair):
    """Weights in transformers' layout decode on the same batched state: each row of a batch gets
    the bytes, counters and trace its prompt gets alone."""
    from test_state import same_generation  # entropies equal to 4 places, less one unit of rounding

    _, ours, _ = pair
    prompts = PROMPTS + [b"a"]
    for mode in ("blt", "blt-s8"):
        batch = generate_batch(ours, prompts, mode, max_bytes=24)
        for p, g in zip(prompts, batch):
            g.counters.pop("batch"), g.counters.pop("batch_passes")
            same_generation(g, generate(ours, p, mode, max_bytes=24))


def test_sampling_runs_and_is_seeded(pair):
    _, ours, _ = pair
    for mode in ("blt", "blt-s8"):
        a = generate(ours, b"EN: Hello\nFR:", mode, max_bytes=24, temperature=0.9, seed=3)
        b = generate(ours, b"EN: Hello\nFR:", mode, max_bytes=24, temperature=0.9, seed=3)
        assert a.output == b.output and (len(a.output) == 24 or a.stop_reason == "eos")


def test_round_trip_preserves_every_tensor(pair, tmp_path):
    hf, ours, d = pair
    save_hf(ours, tmp_path)
    a, b = load_file(str(d / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    again = transformers.BltForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert again.config.patching_threshold == hf.config.patching_threshold
    ids = ids_of(TEXTS[0])
    with torch.no_grad():
        assert torch.equal(again(ids, use_cache=False).logits, hf(ids, use_cache=False).logits)
    assert config_from_hf(json.loads((tmp_path / "config.json").read_text()), ours.cfg.name) == ours.cfg


def test_only_training_free_modes(pair):
    _, ours, _ = pair
    for mode in ("blt-d4", "blt-dv8", "blt-h"):
        with pytest.raises(ValueError, match="masked blocks"):
            generate(ours, b"hi", mode, max_bytes=4)
        with pytest.raises(ValueError, match="masked blocks"):
            generate_batch(ours, [b"hi", b"yo"], mode, max_bytes=4)


# ---- refusals: nothing is loaded partially ---------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfbase")
    make_hf().save_pretrained(d)
    return d


def _copy(src, dst, edit_config=None, edit_weights=None):
    cfg = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(cfg)
    dst.mkdir(exist_ok=True)
    (dst / "config.json").write_text(json.dumps(cfg))
    w = load_file(str(src / "model.safetensors"))
    if edit_weights:
        edit_weights(w)
    save_file(w, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["decoder_config"].update(num_key_value_heads=1), "grouped-query"),
    (lambda c: c["global_config"].update(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
     "RoPE type"),
    (lambda c: c.update(patching_mode="space"), "entropy patching"),
    (lambda c: c["encoder_config"].update(cross_attn_all_layers=True, num_hidden_layers=2), "dead weights"),
    (lambda c: c["decoder_config"].update(hidden_size_global=7), "hidden_size_global"),
    (lambda c: c.update(model_type="llama"), "model_type"),
])
def test_refuses_configs_it_cannot_map(hf_dir, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_hf(_copy(hf_dir, tmp_path / "x", edit_config=edit))


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("model.local_decoder.norm.weight"), "missing"),
    (lambda w: w.update(extra=torch.zeros(1)), "unexpected"),
    (lambda w: w.update({"lm_head.weight": torch.zeros(260, 31)}), "shape"),
    (lambda w: w.update({"model.encoder_hash_tok_embedding.weight": torch.zeros(5, 32)}), "shape"),
])
def test_refuses_weights_that_do_not_match(hf_dir, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_hf(_copy(hf_dir, tmp_path / "x", edit_weights=edit))


def test_refuses_missing_or_pickled_weights(hf_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="never pickle"):
        load_hf(d)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(tmp_path / "nowhere")
    (d / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_hf(d)
    assert is_hf_dir(hf_dir) and not is_hf_dir(d / "nothing")


def test_cli_generate_and_bench_with_hf_dir(hf_dir, tmp_path, capsys):
    from bltlab.cli import main

    main(["generate", "--hf-dir", str(hf_dir), "--prompt", "abc", "--mode", "blt-s8", "--max-bytes", "8", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "blt-s8" and out["counters"]["bytes"] <= 8
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "EN: Save\nFR:"}) + "\n")
    main(["bench", "--hf-dir", str(hf_dir), "--prompts", str(prompts), "--modes", "blt,blt-s8", "--max-bytes", "6",
          "--json", str(tmp_path / "b.json")])
    rows = json.loads((tmp_path / "b.json").read_text())
    assert set(rows["modes"]) == {"blt", "blt-s8"} and rows["modes"]["blt-s8"]["identical_to_blt"] == 1.0
    with pytest.raises(SystemExit, match="masked blocks"):
        main(["generate", "--hf-dir", str(hf_dir), "--prompt", "abc", "--mode", "blt-d4"])


def test_allowed_ids_are_what_hf_suppresses():
    """The greedy comparison above suppresses PAD, BOS and the reserved id in transformers: the
    same ids bltlab never emits."""
    logits = torch.zeros(1, 260)
    banned = (allowed(logits) == float("-inf")).nonzero()[:, 1].tolist()
    assert banned == [0, 1, 3]
