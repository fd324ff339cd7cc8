"""Hugging Face transformers interop: read and write `BltForCausalLM` checkpoint directories.

A transformers BLT directory holds `config.json` (model_type "blt", with patcher, encoder,
decoder and global sub-configs) and `model.safetensors` (or shards listed in
`model.safetensors.index.json`). `load_hf` maps every tensor and config field onto a bltlab
model with `arch="hf"` (see bltlab/config.py: the layout differences) and refuses, with a
clear error, anything it cannot reproduce exactly: no partial loads, nothing is downloaded,
transformers itself is not needed. `save_hf` writes the same layout back.

Only the training-free decoders apply to such weights: `blt` and `blt-s*` (BLT-S needs no
extra training). The diffusion modes need the masked-block objective these weights lack.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError
from .config import BLTConfig, EntropyConfig, PatchConfig
from .layers import ffn_hidden
from .model import BLT

PARTS = ("patcher_config", "encoder_config", "decoder_config", "global_config")
# bltlab Block parameter -> transformers BltTransformerLayer parameter
LAYER = {"attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj",
         "attn.wo": "self_attn.o_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "ffn.w1": "mlp.gate_proj", "ffn.w3": "mlp.up_proj", "ffn.w2": "mlp.down_proj"}
# bltlab cross-attention parameter (relative to the owner) -> transformers BltCrossAttention parameter
CROSS = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "q_norm": "q_norm", "kv_norm": "k_norm"}
DEC_CROSS = {"cross.wq": "q_proj", "cross.wk": "k_proj", "cross.wv": "v_proj", "cross.wo": "o_proj",
             "cross_norm": "q_norm", "cross.kv_norm": "k_norm"}
OURS_ONLY = ("start_slots", "noisy_embed.weight")  # never read by arch "hf" (zeros after import)


def is_hf_dir(directory: str | Path) -> bool:
    """True when `directory` looks like a transformers BLT checkpoint (config.json with model_type blt)."""
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type") == "blt"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


# ---- config ---------------------------------------------------------------------------------
def _theta(part: dict, where: str) -> float:
    rope = part.get("rope_parameters") or {"rope_type": "default", "rope_theta": part.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"{where}: RoPE type {rope.get('rope_type')!r} is not supported (only 'default')")
    return float(rope["rope_theta"])


def config_from_hf(hf: dict, name: str = "hf") -> BLTConfig:
    """A transformers BltConfig dict -> the equivalent BLTConfig (arch "hf"), or CheckpointError."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"cannot map this transformers BLT config exactly: {what}")

    need(hf.get("model_type") == "blt", f"model_type is {hf.get('model_type')!r}, not 'blt'")
    need(all(isinstance(hf.get(p), dict) for p in PARTS), f"config.json must hold the sub-configs {PARTS}")
    pat, enc, dec, glo = (hf[p] for p in PARTS)
    need(hf.get("patching_mode", "entropy") == "entropy" and hf.get("patch_in_forward", True),
         "only entropy patching with the patcher inside the checkpoint (patch_in_forward) is supported")
    need(not hf.get("tie_word_embeddings", False), "tied input/output embeddings are not supported")
    for key, part in zip(PARTS, (pat, enc, dec, glo)):
        heads = part["num_attention_heads"]
        need(part.get("num_key_value_heads") in (None, heads), f"{key}: grouped-query attention (kv heads "
             f"{part.get('num_key_value_heads')} != heads {heads}) is not supported")
        need(part.get("hidden_act", "silu") == "silu", f"{key}: activation {part.get('hidden_act')!r} is not silu")
        need(part.get("vocab_size", 260) == 260, f"{key}: vocab_size must be 260 (bytes + 4 specials)")
    eps = {float(p.get("rms_norm_eps", 1e-5)) for p in (pat, enc, dec, glo)}
    need(len(eps) == 1, f"all parts must share one rms_norm_eps, got {sorted(eps)}")
    thetas = {_theta(p, k) for k, p in zip(PARTS[1:], (enc, dec, glo))}
    need(len(thetas) == 1, f"encoder, decoder and global model must share one RoPE theta, got {sorted(thetas)}")
    k = hf.get("cross_attn_k", 2)
    need(enc.get("cross_attn_k", k) == k == dec.get("cross_attn_k", k), "cross_attn_k differs between parts")
    need(enc["hidden_size"] == dec["hidden_size"], "encoder and decoder widths differ")
    need(enc["num_attention_heads"] == dec["num_attention_heads"], "encoder and decoder head counts differ")
    need(dec.get("hidden_size_global") == glo["hidden_size"],
         f"decoder hidden_size_global {dec.get('hidden_size_global')} != global hidden_size {glo['hidden_size']}")
    need(not (enc.get("cross_attn_all_layers") and enc["num_hidden_layers"] > 1),
         "encoder cross_attn_all_layers with several layers (transformers discards all but the last "
         "cross-attention's result; bltlab does not carry dead weights)")
    window = hf.get("local_attention_window_len")
    need(enc.get("sliding_window", window) == window, "encoder sliding_window != local_attention_window_len")
    max_bytes = min(int(p.get("max_position_embeddings", 1 << 30)) for p in (pat, enc, dec))
    sizes = tuple(hf.get("encoder_hash_byte_group_size") or (3, 4, 5, 6, 7, 8))
    try:
        return BLTConfig(
            name=name, arch="hf", d_local=enc["hidden_size"], n_enc_layers=enc["num_hidden_layers"],
            n_dec_layers=dec["num_hidden_layers"], local_heads=enc["num_attention_heads"],
            local_window=window or max_bytes, cross_k=k, d_global=glo["hidden_size"],
            n_global_layers=glo["num_hidden_layers"], global_heads=glo["num_attention_heads"],
            hash_sizes=sizes, hash_vocab=hf.get("encoder_hash_byte_group_vocab", 500002),
            hash_functions=hf.get("encoder_hash_byte_group_nb_functions", 1),
            dec_cross_all=bool(dec.get("cross_attn_all_layers", True)),
            enc_ffn=enc["intermediate_size"], dec_ffn=dec["intermediate_size"], global_ffn=glo["intermediate_size"],
            rope_theta=thetas.pop(), norm_eps=eps.pop(), max_bytes=max_bytes,
            entropy=EntropyConfig(dim=pat["hidden_size"], n_layers=pat["num_hidden_layers"],
                                  n_heads=pat["num_attention_heads"], max_len=pat.get("max_position_embeddings", 8192),
                                  window=pat.get("sliding_window") or 0, ffn=pat["intermediate_size"],
                                  rope_theta=_theta(pat, "patcher_config")),
            patch=PatchConfig(rule="global", threshold=float(hf.get("patching_threshold", 1.335442066192627)),
                              max_patch=hf.get("max_patch_length") or 0))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot map this transformers BLT config: {e}") from None


def config_to_hf(cfg: BLTConfig) -> dict:
    """BLTConfig (arch "hf") -> a transformers BltConfig dict (what `save_pretrained` writes)."""
    if cfg.arch != "hf":
        raise ValueError("only arch 'hf' models have transformers' layout (weights trained with "
                         "bltlab's layout cannot be converted: the two compute different functions)")
    if cfg.patch.rule != "global":
        raise ValueError(f"transformers' BLT patches by a global entropy threshold, not {cfg.patch.rule!r}")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    window = None if cfg.local_window >= cfg.max_bytes else cfg.local_window

    def part(model_type: str, dim: int, layers: int, heads: int, ffn: int, **extra) -> dict:
        return {"model_type": model_type, "hidden_size": dim, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": heads, "intermediate_size": ffn,
                "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu", "dropout": 0.0,
                "rope_parameters": dict(rope), **extra}

    e = cfg.entropy
    local = dict(vocab_size=260, cross_attn_k=cfg.cross_k, hidden_size_global=cfg.d_global,
                 max_position_embeddings=cfg.max_bytes)
    return {
        "architectures": ["BltForCausalLM"], "model_type": "blt", "vocab_size": 260,
        "patch_in_forward": True, "patching_mode": "entropy", "patching_threshold": cfg.patch.threshold,
        "max_patch_length": cfg.patch.max_patch or None, "local_attention_window_len": window,
        "cross_attn_k": cfg.cross_k, "encoder_hash_byte_group_size": list(cfg.hash_sizes),
        "encoder_hash_byte_group_vocab": cfg.hash_vocab,
        "encoder_hash_byte_group_nb_functions": cfg.hash_functions,
        "tie_word_embeddings": False, "rope_parameters": dict(rope),
        "patcher_config": part("blt_patcher", e.dim, e.n_layers, e.n_heads, e.ffn or ffn_hidden(e.dim, 8 / 3),
                               vocab_size=260, max_position_embeddings=e.max_len, sliding_window=e.window or None,
                               rope_parameters={"rope_type": "default", "rope_theta": e.rope_theta or cfg.rope_theta}),
        "encoder_config": part("blt_local_encoder", cfg.d_local, cfg.n_enc_layers, cfg.local_heads,
                               cfg.enc_ffn or ffn_hidden(cfg.d_local, cfg.ffn_mult), cross_attn_all_layers=False,
                               sliding_window=window, **local),
        "decoder_config": part("blt_local_decoder", cfg.d_local, cfg.n_dec_layers, cfg.local_heads,
                               cfg.dec_ffn or ffn_hidden(cfg.d_local, cfg.ffn_mult),
                               cross_attn_all_layers=cfg.dec_cross_all, **local),
        "global_config": part("blt_global_transformer", cfg.d_global, cfg.n_global_layers, cfg.global_heads,
                              cfg.global_ffn or ffn_hidden(cfg.d_global, cfg.ffn_mult), max_position_embeddings=cfg.max_bytes),
    }


# ---- weights --------------------------------------------------------------------------------
def name_map(cfg: BLTConfig) -> dict[str, str]:
    """bltlab parameter name -> transformers parameter name, for every mapped tensor (the hash
    tables, fused into one transformers table, are handled apart)."""
    m = {"entropy.emb.weight": "model.patcher.embed_tokens.weight", "entropy.norm.weight": "model.patcher.norm.weight",
         "entropy.head.weight": "model.patcher.lm_head.weight",
         "embed.byte.weight": "model.local_encoder.embed_tokens.weight",
         "pool.q_proj.weight": "model.local_encoder.patch_embedding_projection.weight",
         "slot_proj.weight": "model.local_decoder.patch_embedding_projection.weight",
         "dec_norm.weight": "model.local_decoder.norm.weight", "head.weight": "lm_head.weight"}
    for ours, theirs, n in (("entropy.layers", "model.patcher.layers", cfg.entropy.n_layers),
                            ("enc_layers", "model.local_encoder.layers", cfg.n_enc_layers),
                            ("global_layers", "model.global_transformer.layers", cfg.n_global_layers),
                            ("dec_layers", "model.local_decoder.layers", cfg.n_dec_layers)):
        for i in range(n):
            m.update({f"{ours}.{i}.{a}.weight": f"{theirs}.{i}.{b}.weight" for a, b in LAYER.items()})
    m.update({f"pool.{a}.weight": f"model.local_encoder.cross_attn_layers.0.{b}.weight" for a, b in CROSS.items()})
    if cfg.cross_k * cfg.d_local != cfg.d_global:
        m["pool.out.weight"] = "model.global_transformer.token_embedding_projection.weight"
    for i in range(cfg.n_dec_layers if cfg.dec_cross_all else 1):
        m.update({f"dec_layers.{i}.{a}.weight": f"model.local_decoder.cross_attn_layers.{i}.{b}.weight"
                  for a, b in DEC_CROSS.items()})
    return m


HASH = "model.encoder_hash_tok_embedding.weight"


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or every shard named by model.safetensors.index.json."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in load_file(str(directory / s)).items()}
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read the weights in {directory}: {e}") from None
    raise CheckpointError(f"no model.safetensors (or model.safetensors.index.json) in {directory}; "
                          f"only safetensors weights are read, never pickle")


def load_hf(directory: str | Path, device: str | torch.device = "cpu") -> BLT:
    """A local transformers BLT directory -> a bltlab BLT (fp32, eval mode) that computes the same
    logits. Raises CheckpointError for anything that cannot be mapped exactly."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"no config.json in {directory} (is this a transformers BLT directory?)")
    try:
        hf = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory / 'config.json'} is not valid JSON ({e})") from None
    cfg = config_from_hf(hf, name=f"hf:{directory.name}")
    state = read_safetensors(directory)
    model = BLT(cfg)
    own = model.state_dict()
    names = name_map(cfg)
    expected = set(names.values()) | {HASH}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise CheckpointError(f"{directory}: weights do not match the config: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    new = {k: torch.zeros_like(own[k]) for k in OURS_ONLY}
    for ours, theirs in names.items():
        new[ours] = state[theirs]
    n_tables = len(model.embed.tables)
    fused = state[HASH]
    if tuple(fused.shape) != (n_tables * cfg.hash_vocab, cfg.d_local):
        raise CheckpointError(f"{directory}: {HASH} has shape {tuple(fused.shape)}, the config expects "
                              f"{(n_tables * cfg.hash_vocab, cfg.d_local)}")
    for j, chunk in enumerate(fused.split(cfg.hash_vocab)):
        new[f"embed.tables.{j}.weight"] = chunk
    for k, v in own.items():
        if k not in new:
            raise CheckpointError(f"{directory}: nothing maps onto {k}")
        if new[k].shape != v.shape:
            raise CheckpointError(f"{directory}: tensor {names.get(k, k)} has shape {tuple(new[k].shape)}, "
                                  f"the config expects {tuple(v.shape)}")
    model.load_state_dict({k: v.float() for k, v in new.items()})
    return model.to(device).eval()


def hf_state_dict(model: BLT, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The transformers-named tensors of an arch "hf" model."""
    cfg = model.cfg
    if cfg.arch != "hf":
        raise ValueError("only arch 'hf' models can be written in transformers' layout")
    own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    cast = (lambda t: t.to(dtype)) if dtype else (lambda t: t)
    out = {theirs: cast(own[ours]).contiguous() for ours, theirs in name_map(cfg).items()}
    out[HASH] = cast(torch.cat([own[f"embed.tables.{j}.weight"] for j in range(len(model.embed.tables))]))
    return out


def save_hf(model: BLT, directory: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write config.json + model.safetensors that transformers' BltForCausalLM.from_pretrained reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_to_hf(model.cfg), indent=2, sort_keys=True) + "\n")
    save_file(hf_state_dict(model, dtype), str(directory / "model.safetensors"), metadata={"format": "pt"})
