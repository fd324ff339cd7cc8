"""Checkpoints: safetensors weights + a JSON config, never pickle.

A model directory holds `config.json` (the BLTConfig plus a `meta` record of how it was
made), `entropy.safetensors` (the entropy model) and `blt.safetensors` (everything else).
Training state (optimizer moments) lives beside them in `optim.safetensors` + `state.json`.
The shipped model is package data (`bltlab/checkpoints/small/`, listed in pyproject.toml), so
it is found the same way in a checkout, an editable install and a plain `pip install`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import BLTConfig
from .model import BLT

SHIPPED = Path(__file__).resolve().parent / "checkpoints" / "small"  # the model the CLI and the app use by default


DEVICES = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"  # what resolve_device accepts


def resolve_device(name: str | None = "auto") -> str:
    """A --device value -> a torch device string: 'auto' (or empty) is 'cuda' when a CUDA GPU is
    present, else 'cpu'; 'cpu', 'cuda' and 'cuda:N' are taken as they are. ValueError (one
    sentence saying what to use instead) for a GPU that is not there or an unknown name."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    index = name.partition(":")[2]
    if name == "cuda" or (name.startswith("cuda:") and index.isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available "
                             "(use --device cpu, or --device auto: CUDA when present, else CPU)")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was asked for but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
        return name
    raise ValueError(f"unknown device {name!r}: choose {DEVICES} (Apple GPUs, MPS, are not used)")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its config."""


def _tensors(module: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in module.state_dict().items()}


def save_weights(path: str | Path, module: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
    save_file(_tensors(module, dtype), str(path))


def load_weights(path: str | Path, module: torch.nn.Module, exclude: str | None = None) -> None:
    """Strict load: every tensor present, no extra ones, same shapes; clear errors otherwise.
    Tensors whose names start with `exclude` are not expected in the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({e})") from None
    own = {k: v for k, v in module.state_dict().items() if not (exclude and k.startswith(exclude))}
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path} does not match the model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]} (wrong config or wrong file?)")
    for k, v in own.items():
        if v.shape != state[k].shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(state[k].shape)}, "
                                  f"the config expects {tuple(v.shape)} (config and weights disagree)")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=exclude is None)


def read_config(directory: str | Path) -> tuple[BLTConfig, dict]:
    """(config, meta) from a model directory's config.json; anything wrong with the file (not JSON,
    an unknown, missing or mistyped field, a value the config refuses) is one CheckpointError that
    names the file and the field."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {directory} (is this a bltlab model directory?)")
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise CheckpointError(f"{path} is not a bltlab config: it needs an object with a \"config\" object "
                              "(and optionally \"meta\"), as bltlab.checkpoint.write_config writes it")
    if not isinstance(raw.get("meta", {}), dict):
        raise CheckpointError(f"{path}: field meta must be a JSON object")
    try:
        return BLTConfig.from_dict(raw["config"], complete=True), raw.get("meta", {})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def write_config(directory: str | Path, cfg: BLTConfig, meta: dict | None = None) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / "config.json").write_text(
        json.dumps({"config": cfg.to_dict(), "meta": meta or {}}, indent=2, sort_keys=True) + "\n")


def save_model(model: BLT, directory: str | Path, meta: dict | None = None,
               dtype: torch.dtype | None = None) -> None:
    """Write config.json, entropy.safetensors and blt.safetensors (optionally cast, e.g. bf16)."""
    directory = Path(directory)
    write_config(directory, model.cfg, meta)
    save_weights(directory / "entropy.safetensors", model.entropy, dtype)
    rest = {k: v for k, v in _tensors(model, dtype).items() if not k.startswith("entropy.")}
    save_file(rest, str(directory / "blt.safetensors"))


def load_model(directory: str | Path = SHIPPED, device: str | torch.device = "cpu",
               need_blt: bool = True) -> tuple[BLT, dict]:
    """Load a model directory (fp32 on `device`). With need_blt=False only the entropy model
    must exist (the BLT part stays randomly initialised)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory not found: {directory}")
    cfg, meta = read_config(directory)
    model = BLT(cfg)
    load_weights(directory / "entropy.safetensors", model.entropy)
    if need_blt or (directory / "blt.safetensors").exists():
        load_weights(directory / "blt.safetensors", model, exclude="entropy.")
    return model.to(device).eval(), meta


def save_optimizer(directory: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                   state: dict) -> None:
    """AdamW moments keyed by parameter name (safetensors) + JSON training state."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for p, s in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in s:
                tensors[f"{names[id(p)]}::{key}"] = s[key].detach().contiguous().cpu()
        state.setdefault("adam_step", float(s["step"]) if "step" in s else 0.0)
    save_file(tensors, str(Path(directory) / "optim.safetensors"))
    (Path(directory) / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def load_optimizer(directory: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore what save_optimizer wrote; returns the JSON training state."""
    directory = Path(directory)
    try:
        state = json.loads((directory / "state.json").read_text())
        tensors = load_file(str(directory / "optim.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"cannot resume from {directory}: {e}") from None
    step = torch.tensor(state.get("adam_step", 0.0))
    for n, p in model.named_parameters():
        if f"{n}::exp_avg" in tensors:
            opt.state[p] = {"step": step.clone(), "exp_avg": tensors[f"{n}::exp_avg"].to(p.device),
                            "exp_avg_sq": tensors[f"{n}::exp_avg_sq"].to(p.device)}
    return state
