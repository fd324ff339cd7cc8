"""One dataclass config for the whole BLT (entropy model included), with named presets.

`tiny` is for tests, `small` is the shipped model, `paper-1b` / `paper-3b` carry the
paper's parameter counts and are only used to price pass counts (never instantiated).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field


# What each layout means. "hf" differs from ours exactly where transformers' BLT does: its
# n-gram hashes (prime polynomials, wrapping int64), cross-attention residuals added twice and
# keys/values RMS-normed, no final norm after the global model, and a decoder position t that
# reads the global output of the patch before the one holding byte t + 1 (ours: before byte t's).
ARCHS = {"bltlab": "this project's layout (every decoding mode)",
         "hf": "transformers' BltForCausalLM layout (training-free modes: blt, blt-s*)"}


@dataclass
class EntropyConfig:
    """A small causal byte LM whose next-byte entropy places patch boundaries."""

    dim: int = 128  # width of the entropy transformer
    n_layers: int = 2  # causal transformer layers
    n_heads: int = 4  # attention heads
    max_len: int = 512  # longest context it is trained on (RoPE, so longer works but degrades)
    window: int = 0  # sliding attention window in bytes (0 = full causal context)
    ffn: int = 0  # SwiGLU hidden size (0 = 8/3 * dim rounded up to a multiple of 32)
    rope_theta: float = 0.0  # RoPE base (0 = the BLT's rope_theta)


@dataclass
class PatchConfig:
    """How bytes are grouped into patches (docs/model.md, "Patching")."""

    rule: str = "global"  # "global" | "relative" | "fixed" | "space"
    threshold: float = 1.335  # θ in nats for "global", θ_r for "relative" (calibrated per model)
    max_patch: int = 8  # a patch never grows past this many bytes (0 = unlimited)
    stride: int = 4  # patch length for the "fixed" rule


@dataclass
class BLTConfig:
    """Shapes of the Byte Latent Transformer. Defaults are the `small` preset."""

    name: str = "small"
    vocab: int = 260  # output ids: PAD, BOS, EOS, reserved, 256 bytes
    d_local: int = 128  # width of the local encoder and decoder
    n_enc_layers: int = 1  # l_E: causal byte layers in the local encoder
    n_dec_layers: int = 2  # l_D: decoder layers, each with cross-attention to the global outputs
    local_heads: int = 4  # attention heads of the local models
    local_window: int = 512  # sliding attention window of the local models (bytes)
    cross_k: int = 2  # k: slots per patch; global width defaults to k * d_local
    d_global: int = 256  # width of the global transformer (= cross_k * d_local in the paper)
    n_global_layers: int = 4  # global transformer layers
    global_heads: int = 4  # attention heads of the global model
    hash_sizes: tuple = (3, 4, 5, 6, 7, 8)  # n-gram lengths that get a hash table
    hash_vocab: int = 4096  # rows per hash table (V)
    ffn_mult: float = 8 / 3  # SwiGLU hidden = ffn_mult * dim, rounded up to a multiple of 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_bytes: int = 512  # longest byte context accepted (prompt + generation), BOS included
    # layout variants, for weights converted from transformers' BltForCausalLM (bltlab/interop.py)
    arch: str = "bltlab"  # "bltlab" | "hf" (see ARCHS)
    hash_functions: int = 1  # hash tables per n-gram length ("hf": one prime each)
    dec_cross_all: bool = True  # cross-attention before every decoder layer (False: the first only)
    enc_ffn: int = 0  # SwiGLU hidden sizes per part (0 = ffn_mult * width rounded up to 32)
    global_ffn: int = 0
    dec_ffn: int = 0
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)

    def __post_init__(self) -> None:
        if isinstance(self.entropy, dict):
            self.entropy = EntropyConfig(**self.entropy)
        if isinstance(self.patch, dict):
            self.patch = PatchConfig(**self.patch)
        self.hash_sizes = tuple(self.hash_sizes)
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.arch == "bltlab" and self.hash_functions != 1:
            raise ValueError("arch 'bltlab' has one hash function per n-gram length (hash_functions = 1)")
        for width, dim, heads, n in (("d_local", self.d_local, "local_heads", self.local_heads),
                                     ("d_global", self.d_global, "global_heads", self.global_heads),
                                     ("entropy.dim", self.entropy.dim, "entropy.n_heads", self.entropy.n_heads)):
            if n <= 0 or dim % n or (dim // n) % 2:
                raise ValueError(f"{width} = {dim} must split into {heads} = {n} heads of even size")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, complete: bool = False) -> "BLTConfig":
        """The config a dict describes (to_dict's form). Unknown fields and values of the wrong type
        raise a ValueError naming the field; with `complete`, so do missing ones (a stored config
        records every field, so a missing one means another program or version wrote it)."""
        check_fields(cls, d, complete)
        return cls(**d)


# What a field of each annotated type must hold in config.json, said as its error message says it
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", tuple: "a list of integers"}


def _fits(value, kind) -> bool:
    """Whether a JSON value can be a field of type `kind` (a bool is an int to Python, never here)."""
    if kind is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, int) for v in value)
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def check_fields(cls, d, complete: bool = False, prefix: str = "") -> None:
    """Raise ValueError naming the first field of `d` (a dict for dataclass `cls`, nested configs
    as dicts) that `cls` does not have, that holds another type than declared, or (complete) that
    is missing. Without this, BLTConfig(**d) takes a string width and fails later on an unrelated
    operation ("not all arguments converted during string formatting")."""
    where = f"field {prefix.rstrip('.')}" if prefix else "the config"
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a JSON object, got {json.dumps(d, default=repr)}")
    hints, names = typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), names, 1)  # a typo's likely intent
        hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
        raise ValueError(f"unknown field {prefix}{unknown[0]}{hint}")
    missing = [k for k in names if k not in d]
    if complete and missing:
        raise ValueError(f"missing field {prefix}{missing[0]}")
    for name, value in d.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, kind):  # a nested dict, as to_dict writes it
                check_fields(kind, value, complete, f"{prefix}{name}.")
        elif not _fits(value, kind):
            raise ValueError(f"field {prefix}{name} must be {_KINDS.get(kind, kind.__name__)}, "
                             f"got {json.dumps(value, default=repr)}")


PRESETS: dict[str, BLTConfig] = {
    # for tests: well under 2 M parameters, fast on CPU
    # (two layers wherever caches are stacked, so multi-layer cache bugs cannot hide)
    "tiny": BLTConfig(name="tiny", d_local=32, n_enc_layers=2, n_dec_layers=2, local_heads=2,
                      local_window=64, d_global=64, n_global_layers=2, global_heads=2,
                      hash_vocab=64, max_bytes=256,
                      entropy=EntropyConfig(dim=32, n_layers=2, n_heads=2, max_len=128)),
    # the shipped model
    "small": BLTConfig(),
    # paper shapes for cost projection only (the paper's parameter counts: PAPER_PARAMS below, docs/results.md)
    "paper-1b": BLTConfig(name="paper-1b", d_local=1024, n_enc_layers=1, n_dec_layers=9,
                          local_heads=16, d_global=2048, n_global_layers=25, global_heads=16,
                          hash_vocab=500002, max_bytes=8192),
    "paper-3b": BLTConfig(name="paper-3b", d_local=1280, n_enc_layers=1, n_dec_layers=9,
                          local_heads=20, d_global=2560, n_global_layers=26, global_heads=20,
                          hash_vocab=500002, max_bytes=8192),
}

# Parameter counts the paper reports (used to price pass counts at paper scale).
PAPER_PARAMS: dict[str, dict[str, float]] = {
    "paper-1b": {"global": 1.28e9, "encoder": 19e6, "decoder": 160e6},
    "paper-3b": {"global": 2.82e9, "encoder": 26e6, "decoder": 160e6},
}


def get_config(name: str) -> BLTConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return BLTConfig.from_dict(PRESETS[name].to_dict())
