"""Training: the entropy model first, then the BLT with the next-byte or hybrid objective.

The hybrid objective (docs/model.md, "The hybrid objective") adds masked-block diffusion so one checkpoint
serves every decoding mode. Runs on CPU or GPU, single process or `torchrun` (DDP: gloo
on CPU, NCCL on GPU). Checkpoints are safetensors + JSON and resumable.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import BLTConfig, get_config
from .data import ByteBatcher, load_documents, validation_windows
from .model import BLT
from .patching import calibrate_threshold
from .tokens import MASK, PAD, is_byte

LN2 = math.log(2)
MASK_RATE = (0.0, 1.0)  # a block's mask rate t ~ U(0, 1): the shipped recipe
T_MIN = 1e-3  # a sampled t never goes below this, so the 1/t weight stays finite


def check_mask_rate(mask_rate) -> tuple[float, float]:
    """(beta, omega) -> floats, or one ValueError unless 0 <= beta < omega <= 1 (NaN included)."""
    try:
        lo, hi = (float(x) for x in mask_rate)
    except (TypeError, ValueError):
        raise ValueError(f"mask_rate (--mask-rate BETA OMEGA) must be two numbers, got {mask_rate!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"mask_rate (--mask-rate BETA OMEGA) must satisfy 0 <= BETA < OMEGA <= 1, "
                         f"got ({lo:g}, {hi:g})")
    return lo, hi


def check_weight(name: str, value: float) -> float:
    """A recipe weight (t_weight_cap, diffusion_weight) -> float, or ValueError unless finite and >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@dataclass
class TrainConfig:
    """Knobs of one training run (defaults suit a CPU run of the `small` preset)."""

    what: str = "blt"  # "entropy" (the patcher) or "blt" (the main model)
    preset: str = "small"  # model shape (config.PRESETS)
    objective: str = "hybrid"  # "ar" (next byte only) or "hybrid" (next byte + masked blocks)
    block_sizes: tuple = (4, 8, 16)  # diffusion block sizes, one drawn per step
    steps: int = 2000  # optimizer steps
    minutes: float = 0.0  # stop early after this wall time (0 = no limit); the schedule still uses `steps`
    batch_size: int = 16  # sequences per step per process
    seq_len: int = 512  # bytes per sequence (BOS included)
    lr: float = 1e-3  # peak AdamW learning rate
    warmup: int = 100  # linear warm-up steps, then cosine decay to 10%
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mix: dict = field(default_factory=lambda: {"code": 0.75, "fr": 0.15, "de": 0.10})  # source weights
    eval_every: int = 200  # steps between validation passes
    eval_windows: int = 32  # validation windows per source
    target_patch: float = 4.0  # mean patch length the entropy threshold is calibrated to
    seed: int = 0
    out: str = "runs/small"  # model directory written (config.json + safetensors)
    entropy_dir: str = ""  # directory holding the trained entropy model (for what="blt")
    resume: bool = False  # continue from `out` (weights + optimizer + step)
    device: str = "auto"  # "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N"
    threads: int = 0  # torch CPU threads (0 = torch default)
    # the masked-block recipe (hybrid only; defaults: the shipped model's; benchmarks/recipe_tiny.py measures them)
    mask_rate: tuple = MASK_RATE  # (beta, omega): each block's mask rate t ~ U(beta, omega) (BD3-LM's clipped schedule)
    t_weight_cap: float = 0.0  # cap on the masked CE's 1/t weight (0 = no cap: 1/t, t >= 1e-3)
    diffusion_weight: float = 1.0  # loss = next-byte CE + diffusion_weight * masked-block loss

    def __post_init__(self) -> None:
        """Check the recipe knobs now (one ValueError naming the knob), before any data is read."""
        self.mask_rate = check_mask_rate(self.mask_rate)
        self.t_weight_cap = check_weight("t_weight_cap (--t-weight-cap)", self.t_weight_cap)
        self.diffusion_weight = check_weight("diffusion_weight (--diffusion-weight)", self.diffusion_weight)


def _device(name: str) -> torch.device:
    """TrainConfig.device -> torch.device (bltlab.checkpoint.resolve_device: ValueError for a GPU
    that is not there)."""
    return torch.device(ckpt.resolve_device(name))


def lr_at(step: int, tc: TrainConfig, elapsed: float = 0.0) -> float:
    """Warm-up, then cosine decay to 10%. With a time budget (`minutes`) the decay follows
    whichever runs out first, steps or time, so a slow machine still ends the schedule."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    if tc.minutes:
        frac = max(frac, min(1.0, elapsed / (tc.minutes * 60)))
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def next_byte_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean CE (nats) of logits[:, t] against ids[:, t+1], ignoring PAD targets."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), ignore_index=PAD)


def sample_blocks(ids: torch.Tensor, starts: torch.Tensor, bs: int, n_blocks: int, gen: torch.Generator,
                  mask_rate: tuple = MASK_RATE):
    """Pick up to n_blocks patch starts per row whose block of bs bytes fits; corrupt each
    block with one mask rate t ~ U(beta, omega) (`mask_rate`; default U(0, 1)), never below T_MIN.
    Returns (block_starts [B, nb] (-1 unused), noisy ids [B, nb, bs], clean targets [B, nb, bs],
    masked [B, nb, bs] bool, t [B, nb])."""
    lo, hi = check_mask_rate(mask_rate)
    B, T = ids.shape
    dev = ids.device
    pos = torch.arange(T, device=dev)
    fits = torch.zeros_like(starts)
    fits[:, : T - bs + 1] = is_byte(ids[:, bs - 1:])  # the block's last byte is real
    cand = starts & (pos >= 1) & fits
    score = torch.rand(B, T, generator=gen, device=dev) + cand.float()  # candidates score > 1
    top, idx = score.topk(min(n_blocks, T), dim=1)
    bstart = torch.where(top > 1, idx, torch.full_like(idx, -1))
    gather = (bstart.clamp(min=0)[..., None] + torch.arange(bs, device=dev)).clamp(max=T - 1)
    clean = ids.gather(1, gather.flatten(1)).view(B, -1, bs)
    u = torch.rand(B, bstart.shape[1], generator=gen, device=dev)
    t = (lo + (hi - lo) * u).clamp(min=T_MIN)  # (0, 1): exactly u.clamp(min=T_MIN), the shipped recipe
    masked = (torch.rand(clean.shape, generator=gen, device=dev) < t[..., None]) & (bstart >= 0)[..., None]
    noisy = torch.where(masked, torch.full_like(clean, MASK), clean)
    return bstart, noisy, clean, masked, t


def diffusion_loss(logits: torch.Tensor, clean: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                   valid: torch.Tensor, t_weight_cap: float = 0.0) -> torch.Tensor:
    """(1/t)-weighted CE on masked positions, averaged over all positions of valid blocks; with
    `t_weight_cap` > 0 the weight is min(1/t, t_weight_cap) (0: no cap)."""
    cap = check_weight("t_weight_cap", t_weight_cap)
    ce = F.cross_entropy(logits.flatten(0, 2).float(), clean.flatten(), reduction="none").view(clean.shape)
    w = masked.float() / t[..., None]
    if cap:
        w = w.clamp(max=cap)
    denom = (valid[..., None].float().expand_as(w)).sum().clamp(min=1)
    return (ce * w).sum() / denom


def blt_loss(net, model: BLT, ids: torch.Tensor, objective: str, block_size: int, gen: torch.Generator,
             mask_rate: tuple = MASK_RATE, t_weight_cap: float = 0.0, diffusion_weight: float = 1.0):
    """One batch's BLT training loss: next-byte CE ("ar"), plus `diffusion_weight` times the masked-block
    diffusion loss on blocks of `block_size` ("hybrid"; `mask_rate` goes to sample_blocks, `t_weight_cap`
    to diffusion_loss; the defaults are the shipped recipe). `net` is the model or its DDP wrapper.
    Returns (loss, parts), parts["diff"] the unweighted masked-block loss."""
    dw = check_weight("diffusion_weight", diffusion_weight)
    starts = model.patch(ids)
    if objective == "ar":
        loss = next_byte_loss(net(ids, starts), ids)
        return loss, {"ce": loss.detach()}
    bst, noisy, clean, masked, t = sample_blocks(ids, starts, block_size, max(1, ids.shape[1] // (2 * block_size)),
                                                 gen, mask_rate)
    lc, ln = net(ids, starts, bst, noisy)
    ce, dl = next_byte_loss(lc, ids), diffusion_loss(ln, clean, masked, t, bst >= 0, t_weight_cap)
    return ce + dw * dl, {"ce": ce.detach(), "diff": dl.detach()}


@torch.no_grad()
def evaluate_bpb(model, windows: torch.Tensor, batch_size: int = 8, entropy_only: bool = False) -> float:
    """Bits per byte of next-byte prediction over [N, T] windows (byte targets only)."""
    was = model.training
    model.eval()
    nats, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size].to(next(model.parameters()).device)
        logits = model(ids) if entropy_only else model(ids, model.patch(ids))
        tgt = ids[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tgt.flatten(), reduction="none")
        keep = is_byte(tgt).flatten()
        nats += float(ce[keep].sum())
        count += int(keep.sum())
    model.train(was)
    return nats / max(count, 1) / LN2


def _setup_dist(device: torch.device) -> tuple[int, int]:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def train(tc: TrainConfig) -> dict:
    """Run one training job; returns the final metrics (also stored in config.json's meta)."""
    if tc.what not in ("entropy", "blt") or tc.objective not in ("ar", "hybrid"):
        raise ValueError(f"what must be entropy|blt and objective ar|hybrid, got {tc.what}/{tc.objective}")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = _device(tc.device)
    rank, world = _setup_dist(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.manual_seed(tc.seed)
    out = Path(tc.out)
    cfg: BLTConfig = get_config(tc.preset)
    if tc.resume:
        cfg, _ = ckpt.read_config(out)
    model = BLT(cfg)
    if tc.what == "blt":
        if not tc.entropy_dir and not tc.resume:
            raise ValueError("training the BLT needs --entropy-dir (a trained entropy model)")
        src = out if tc.resume else Path(tc.entropy_dir)
        ecfg, _ = ckpt.read_config(src)
        ckpt.load_weights(src / "entropy.safetensors", model.entropy)
        cfg.entropy, cfg.patch = ecfg.entropy, ecfg.patch  # the patcher defines the patches
        model.entropy.requires_grad_(False)
    net = model.entropy if tc.what == "entropy" else model
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95))
    step0 = 0
    if tc.resume:
        ckpt.load_weights(out / "entropy.safetensors", model.entropy)
        if tc.what == "blt":
            ckpt.load_weights(out / "blt.safetensors", model, exclude="entropy.")
        step0 = ckpt.load_optimizer(out, net, opt)["step"]
    ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True) if world > 1 else net

    seq_len = min(tc.seq_len, cfg.entropy.max_len if tc.what == "entropy" else cfg.max_bytes)
    docs = [d for s, w in tc.mix.items() if w > 0 for d in load_documents(s, "train")]
    batcher = ByteBatcher(docs, seq_len, tc.batch_size, seed=tc.seed + step0, weights=tc.mix,
                          rank=rank, world_size=world)
    val = {s: validation_windows(load_documents(s, "val"), seq_len, tc.eval_windows)
           for s in ("code", "fr") if tc.mix.get(s, 0) > 0}
    gen = torch.Generator(device=device).manual_seed(tc.seed * 1000 + rank + step0)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))

    def validate() -> dict:
        return {f"val_bpb_{s}": evaluate_bpb(model.entropy if tc.what == "entropy" else model, w,
                                             entropy_only=tc.what == "entropy") for s, w in val.items()}

    metrics: dict = {}
    t0, seen = time.time(), 0
    bar = tqdm(range(step0, tc.steps), disable=rank != 0, desc=f"train {tc.what}", initial=step0, total=tc.steps)
    for step in bar:
        ids = batcher.next().to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc, time.time() - t0)
        with amp:
            if tc.what == "entropy":
                loss = next_byte_loss(ddp(ids), ids)
                parts = {"ce": loss.detach()}
            else:
                bs = tc.block_sizes[int(torch.randint(len(tc.block_sizes), (1,), generator=gen, device=device))]
                loss, parts = blt_loss(ddp, model, ids, tc.objective, bs, gen, tc.mask_rate, tc.t_weight_cap,
                                       tc.diffusion_weight)
            parts = {k: float(v) for k, v in parts.items()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        seen += ids.numel() * world
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        last = step + 1 == tc.steps or (tc.minutes and time.time() - t0 > tc.minutes * 60)
        if rank == 0 and ((step + 1) % tc.eval_every == 0 or last):
            metrics = {"step": step + 1, **{f"train_{k}": v for k, v in parts.items()}, **validate()}
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
            _save(model, tc, cfg, opt, net, metrics, seen, time.time() - t0)
        if last:
            break
    if world > 1:
        dist.barrier()
    return metrics


def _save(model: BLT, tc: TrainConfig, cfg: BLTConfig, opt, net, metrics: dict, seen: int, secs: float) -> None:
    out = Path(tc.out)
    if tc.what == "entropy":
        # calibrate θ on training code so patches average `target_patch` bytes
        ids = validation_windows(load_documents("code", "train")[:200], min(256, cfg.entropy.max_len), 64)
        ids = ids.to(next(model.entropy.parameters()).device)  # only the entropy model is on the device
        ent = model.entropy.entropies(ids)
        cfg.patch.threshold = calibrate_threshold(ent, ids, None, tc.target_patch, cfg.patch.rule,
                                                  cfg.patch.max_patch)
        metrics["threshold"] = cfg.patch.threshold
    meta = {"trained": {k: v for k, v in vars(tc).items()}, "metrics": metrics,
            "bytes_seen": seen, "seconds": round(secs, 1),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    model.cfg = cfg
    ckpt.save_model(model, out, meta)
    ckpt.save_optimizer(out, net, opt, {"step": metrics["step"]})
