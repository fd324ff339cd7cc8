"""`python -m bltlab ...`: data statistics, training, evaluation, generation, export, and the
workbench app (`python -m bltlab app`, also the console script `bltlab-app`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .config import PRESETS

if TYPE_CHECKING:
    from .train import TrainConfig

APP_HOST, APP_PORT = "127.0.0.1", 7860  # the workbench's address when neither a flag nor the environment names one
HOST_ENV, PORT_ENV = "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"  # what Gradio users set by habit


def _device(name: str) -> str:
    """--device -> a torch device string (auto: CUDA when present, else CPU); one clear error otherwise."""
    from .checkpoint import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise SystemExit(f"error: --device: {e}") from None


def port_number(value: str | int, what: str = "--port") -> int:
    """A TCP port from a flag or an environment variable; ValueError naming `what` otherwise."""
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{what}={value!r} is not a port number: give an integer from 1 to 65535")
    return int(text)


def _port_arg(value: str) -> int:
    try:
        return port_number(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def server_address(host: str | None = None, port: int | None = None,
                   environ: dict | None = None) -> tuple[str, int]:
    """Where the workbench listens: the flags when given, else GRADIO_SERVER_NAME and
    GRADIO_SERVER_PORT (empty counts as unset), else 127.0.0.1:7860 (this machine only).
    ValueError for a GRADIO_SERVER_PORT that is not a port number."""
    env = os.environ if environ is None else environ
    host = host or env.get(HOST_ENV, "").strip() or APP_HOST
    if port is None:
        port = port_number(env[PORT_ENV], PORT_ENV) if env.get(PORT_ENV, "").strip() else APP_PORT
    return host, port


def _load(args):
    from .checkpoint import CheckpointError, load_model
    from .interop import load_hf

    try:
        if getattr(args, "hf_dir", None):
            return load_hf(args.hf_dir, _device(args.device)), {"source": f"transformers BLT in {args.hf_dir}"}
        model, meta = load_model(args.model, _device(args.device))
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    return model, meta


def _report(args, res: dict, format_table) -> None:
    """Write a benchmark result to --json (if given) and print its table."""
    res["prompts_file"] = str(args.prompts)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(format_table(res))


def cmd_data(args) -> None:
    from .data import corpus_stats, format_stats

    rows = corpus_stats()
    print(json.dumps(rows, indent=2) if args.json else format_stats(rows))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The `train` subcommand's parsed flags -> a bltlab.train.TrainConfig (ValueError for a bad recipe knob)."""
    from .train import TrainConfig

    return TrainConfig(what=args.what, preset=args.preset, objective=args.objective, steps=args.steps,
                       minutes=args.minutes, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                       warmup=args.warmup, eval_every=args.eval_every,
                       eval_windows=args.eval_windows, seed=args.seed, out=args.out,
                       entropy_dir=args.entropy_dir, resume=args.resume, device=args.device, threads=args.threads,
                       mask_rate=tuple(args.mask_rate), t_weight_cap=args.t_weight_cap,
                       diffusion_weight=args.diffusion_weight)


def cmd_train(args) -> None:
    from .train import train

    args.device = _device(args.device)  # a missing GPU is refused before any data is read
    try:
        tc = train_config(args)  # so is a bad recipe knob
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    metrics = train(tc)
    print(json.dumps(metrics, indent=2))


def cmd_eval(args) -> None:
    from .evaluate import bits_per_byte

    path = Path(args.text)
    if not path.is_file():
        raise SystemExit(f"error: no such file: {path}")
    data = path.read_bytes()
    if not data:
        raise SystemExit(f"error: {path} is empty: nothing to score")
    model, _ = _load(args)
    bpb = bits_per_byte(model, data)
    out = {"file": str(path), "bytes": len(data), "bits_per_byte": bpb}
    print(json.dumps(out, indent=2) if args.json else f"{path}: {len(data)} bytes, {bpb:.4f} bits/byte")


def cmd_generate(args) -> None:
    from .decode import generate

    model, _ = _load(args)
    prompt = args.prompt.encode("utf-8", errors="surrogateescape")  # keep undecodable argv bytes
    try:
        g = generate(model, prompt, args.mode, max_bytes=args.max_bytes, stop=args.stop,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed, alpha=args.alpha,
                     gamma=args.gamma, eta=args.eta, block=args.block, in_order=args.in_order,
                     exact_first=args.exact_first, compiled=args.compiled)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.json:
        print(json.dumps(g.to_json(), indent=2))
    else:
        sys.stdout.write(g.text + "\n")
        print(f"[{g.mode}: {len(g.output)} bytes, stop={g.stop_reason}, "
              + ", ".join(f"{k}={v}" for k, v in g.counters.items()) + "]", file=sys.stderr)


def cmd_bench(args) -> None:
    from .bench import format_table, read_prompts, run_bench

    try:
        prompts = read_prompts(args.prompts)
        model, _ = _load(args)
        from .decode import HF_MODES, MODES

        default = ",".join(HF_MODES if model.cfg.arch == "hf" else MODES)
        modes = [m.strip() for m in (args.modes or default).split(",") if m.strip()]
        knobs = {k: v for k, v in (("alpha", args.alpha), ("gamma", args.gamma), ("eta", args.eta)) if v is not None}
        res = run_bench(model, prompts, modes, args.max_bytes, knobs)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    _report(args, res, format_table)


def cmd_speed(args) -> None:
    from .bench import read_prompts
    from .speed import format_table, run_speed

    try:
        prompts = [r["prompt"].encode("utf-8", errors="surrogateescape") for r in read_prompts(args.prompts)][:args.n]
        model, _ = _load(args)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
        res = run_speed(model, prompts, modes, args.max_bytes, args.batch, args.hf, args.hf_bytes,
                        compiled=args.compiled, threads=args.threads)
    except (ValueError, OSError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    _report(args, res, format_table)


def cmd_prompts(args) -> None:
    from .bench import make_prompts

    rows = make_prompts(args.task, args.n, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} {args.task} prompts to {args.out}")


def cmd_results(args) -> None:
    from .results import load_benches, write_page

    diag = json.loads(Path(args.diagnose).read_text()) if args.diagnose else None
    write_page(load_benches(args.bench), args.out, args.command, diag)
    print(f"wrote {args.out}")


def cmd_report(args) -> None:
    from .evaluate import report

    import hashlib

    model, meta = _load(args)
    sha = {f: hashlib.sha256((Path(args.model) / f).read_bytes()).hexdigest()
           for f in ("entropy.safetensors", "blt.safetensors")}
    rep = {"model": str(args.model), "sha256": sha, "trained": meta.get("trained", {}),
           "seconds": meta.get("seconds"), "device_trained": meta.get("device"),
           **report(model, args.pairs, args.windows)}
    text = json.dumps(rep, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)


def cmd_bench_kernels(args) -> None:
    from tqdm.auto import tqdm

    from .bench_kernels import main_args

    args.device = _device(args.device)

    try:
        main_args(args, progress=lambda jobs: tqdm(jobs, desc="kernels", file=sys.stderr))
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def cmd_diagnose(args) -> None:
    """Issue 22's diagnostic benchmark: the masked-block head beside the autoregressive one, and every
    mode x knob on held-out prompts; prints the tables and writes the JSON."""
    from .diagnose import ALPHAS, BLOCKS, DEFAULT_MODES, ETAS, SOURCES, TASKS, format_report, mode_grid, run_diagnose

    def listed(text: str | None, default: tuple, kind=str) -> tuple:
        """A comma-separated flag -> a tuple of `kind` (ValueError for a bad item); None -> the default."""
        return default if text is None else tuple(kind(v.strip()) for v in text.split(",") if v.strip())

    model, _ = _load(args)  # --device is resolved (or refused) before any work
    try:
        grid = mode_grid(listed(args.modes, DEFAULT_MODES), listed(args.alphas, ALPHAS, float),
                         listed(args.etas, ETAS, float))
        res = run_diagnose(model, listed(args.sources, SOURCES), listed(args.blocks, BLOCKS, int), args.windows,
                           listed(args.tasks, TASKS), args.prompts, args.max_bytes, grid, args.seed,
                           heads=not args.skip_heads, modes=not args.skip_modes)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    res["args"] = {k: v for k, v in vars(args).items() if k not in ("fn", "cmd")}  # how to run it again
    out = Path(args.json.format(model=model.cfg.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    print(format_report(res))
    print(f"\nwrote {out}")


def cmd_export(args) -> None:
    import torch

    from .checkpoint import load_model, read_config, save_model

    model, meta = load_model(args.src)
    save_model(model, args.dst, meta, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype])
    print(f"exported {args.src} -> {args.dst} ({args.dtype}); config {read_config(args.dst)[0].name}")


def cmd_app(args) -> None:
    """Build the workbench and serve it until interrupted (never shared publicly)."""
    try:
        host, port = server_address(args.host, args.port)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    device = _device(args.device)
    # Gradio reads both variables when it is imported (int(GRADIO_SERVER_PORT) at module level): give it
    # the address resolved above, so that a malformed variable that a flag overrides cannot stop the import.
    os.environ[HOST_ENV], os.environ[PORT_ENV] = host, str(port)
    from .app import build_demo, launch
    from .checkpoint import CheckpointError

    try:
        demo = build_demo(args.model, device)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    launch(demo, host, port)


def build_parser() -> argparse.ArgumentParser:
    from .checkpoint import DEVICES, SHIPPED
    from .decode import MODES

    p = argparse.ArgumentParser(prog="python -m bltlab", description="bltlab: a workbench for byte-level "
                                "language models (BLT) and their fast decoders.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def model_args(s):
        s.add_argument("--model", default=str(SHIPPED), help="model directory (default: the shipped small model)")
        s.add_argument("--hf-dir", default=None, help="instead of --model: a local transformers BltForCausalLM "
                       "directory (config.json + safetensors); only blt and blt-s* apply to such weights")
        s.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto)")

    s = sub.add_parser("data", help="print statistics of the offline corpora")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("train", help="train the entropy model or the BLT")
    s.add_argument("what", choices=["entropy", "blt"], help="which model to train (entropy model first)")
    s.add_argument("--preset", default="small", choices=sorted(k for k in PRESETS if not k.startswith("paper")),
                   help="model shape (default: small)")
    s.add_argument("--objective", default="hybrid", choices=["ar", "hybrid"],
                   help="blt only: next-byte (ar) or next-byte + masked-block diffusion (hybrid, default)")
    s.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    s.add_argument("--minutes", type=float, default=0.0,
                   help="wall-time budget; the LR schedule ends when time or steps run out (0 = none)")
    s.add_argument("--batch-size", type=int, default=16, help="sequences per step per process (default: 16)")
    s.add_argument("--seq-len", type=int, default=512, help="bytes per sequence, BOS included (default: 512)")
    s.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: 1e-3)")
    s.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default: 100)")
    s.add_argument("--eval-every", type=int, default=200, help="steps between validation + checkpoint")
    s.add_argument("--eval-windows", type=int, default=32, help="validation windows per source (default: 32)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--out", default="runs/small", help="model directory to write (default: runs/small)")
    s.add_argument("--entropy-dir", default="", help="blt only: directory with the trained entropy model")
    s.add_argument("--resume", action="store_true", help="continue training from --out")
    s.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto)")
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = default)")
    s.add_argument("--mask-rate", type=float, nargs=2, default=(0.0, 1.0), metavar=("BETA", "OMEGA"),
                   help="hybrid only: each masked block's mask rate t ~ U(BETA, OMEGA), 0 <= BETA < OMEGA <= 1 "
                   "(BD3-LM's clipped schedule; default: 0 1, the shipped recipe)")
    s.add_argument("--t-weight-cap", type=float, default=0.0, metavar="CAP",
                   help="hybrid only: cap on the masked-block CE's 1/t weight (default: 0 = no cap)")
    s.add_argument("--diffusion-weight", type=float, default=1.0, metavar="W",
                   help="hybrid only: loss = next-byte CE + this x masked-block loss (default: 1)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="bits per byte of a model on any file")
    s.add_argument("--text", required=True, help="file to score (text or binary)")
    s.add_argument("--json", action="store_true", help="print JSON")
    model_args(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("generate", help="generate bytes after a prompt")
    s.add_argument("--prompt", required=True, help="prompt text (may be empty)")
    s.add_argument("--mode", default="blt", choices=MODES, help="decoding mode (default: blt)")
    s.add_argument("--max-bytes", type=int, default=64, help="most bytes to generate (default: 64)")
    s.add_argument("--stop", default=None, help="stop when this string is generated (it is not printed)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), else sampling")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    s.add_argument("--alpha", type=float, default=None,
                   help="blt-d*/blt-h: unmask every slot whose confidence exceeds α (default 0.99; the paper's 0.9; "
                        ">1: one per pass)")
    s.add_argument("--gamma", type=float, default=None,
                   help="blt-d*/blt-h: entropy-bounded unmasking with budget γ nats instead of α (0: one per pass)")
    s.add_argument("--eta", type=float, default=1.0, help="blt-h: diffuse when the next-byte entropy <= η nats")
    s.add_argument("--block", type=int, default=8, choices=[4, 8, 16], help="blt-h: diffusion block size")
    s.add_argument("--in-order", action=argparse.BooleanOptionalAction, default=True,
                   help="blt-d*/blt-h: a pass fills only the left-to-right run of slots that pass α or γ; a block "
                        "ends where none does (the next byte is then exact). Default on; --no-in-order with "
                        "--no-exact-first --alpha 0.9 is the paper's rule")
    s.add_argument("--exact-first", action=argparse.BooleanOptionalAction, default=True,
                   help="blt-d*: a block's first byte is the exact next byte (blt-h's always is). Default on")
    s.add_argument("--compiled", action="store_true",
                   help="pass the decoding steps through torch.compile first (minutes of compiling on first use)")
    s.add_argument("--json", action="store_true", help="print the whole Generation (counters, trace) as JSON")
    model_args(s)
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("bench", help="every decoding mode on a prompt file: passes, bandwidth, quality, speed")
    s.add_argument("--prompts", required=True, help="JSONL: {prompt, reference?, stop?, task?} per line")
    s.add_argument("--modes", default=None, help="comma-separated modes (blt always runs first; default: every "
                   "mode the model supports)")
    s.add_argument("--max-bytes", type=int, default=64, help="most bytes per generation (default: 64)")
    s.add_argument("--alpha", type=float, default=None, help="diffusion modes: confidence threshold α")
    s.add_argument("--gamma", type=float, default=None, help="diffusion modes: entropy bound γ (instead of α)")
    s.add_argument("--eta", type=float, default=None, help="blt-h: entropy (nats) at or below which it diffuses")
    s.add_argument("--json", default=None, help="write the full result as JSON to this file")
    model_args(s)
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("speed", help="bytes/s per mode at batch 1 and batch B, the memory roofline, and "
                       "transformers baselines, all in one run on one device")
    s.add_argument("--prompts", default="benchmarks/prompts_translation.jsonl", help="JSONL prompt file "
                   "(default: benchmarks/prompts_translation.jsonl)")
    s.add_argument("--n", type=int, default=16, help="use the first N prompts (default: 16)")
    s.add_argument("--modes", default=None, help="comma-separated modes (default: every mode the model supports)")
    s.add_argument("--max-bytes", type=int, default=64, help="bytes generated per prompt (default: 64)")
    s.add_argument("--batch", type=int, default=16,
                   help="batch size timed beside batch 1 (default: 16; 1 = batch 1 only)")
    s.add_argument("--compiled", action="store_true", help="also time every mode with torch.compile'd decoding "
                   "steps (minutes of compiling)")
    s.add_argument("--hf", action="store_true", help="also time transformers' BltForCausalLM at the same "
                   "shapes (uncached) and a byte-level Llama as big as the global model (needs transformers)")
    s.add_argument("--hf-bytes", type=int, default=32, help="bytes the transformers baselines generate (default: 32)")
    s.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads for PyTorch "
                   "(torch.set_num_threads) during the whole run, the transformers baselines included; "
                   "recorded in the JSON as 'threads' (default 0: PyTorch's default)")
    s.add_argument("--json", default=None, help="write the full result as JSON to this file")
    model_args(s)
    s.set_defaults(fn=cmd_speed)

    s = sub.add_parser("prompts", help="write held-out benchmark prompts (translation or code) as JSONL")
    s.add_argument("--task", required=True, choices=["translation", "code"], help="which held-out data")
    s.add_argument("--n", type=int, default=50, help="number of prompts (default: 50)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    s.add_argument("--out", required=True, help="JSONL file to write")
    s.set_defaults(fn=cmd_prompts)

    s = sub.add_parser("results", help="write the results page from bench JSON files")
    s.add_argument("--bench", action="append", required=True, help="TASK=FILE.json (repeatable)")
    s.add_argument("--out", default="docs/results.md", help="markdown page to write (figure beside it)")
    s.add_argument("--command", default="make results", help="the command to quote on the page")
    s.add_argument("--diagnose", default=None, help="JSON of `bltlab diagnose`: its findings go on the page too")
    s.set_defaults(fn=cmd_results)

    s = sub.add_parser("report", help="the README's quality figures: bpb, patch length, chrF/BLEU")
    s.add_argument("--pairs", type=int, default=None, help="held-out EN->FR pairs to translate (default: all)")
    s.add_argument("--windows", type=int, default=64, help="validation windows per source (default: 64)")
    s.add_argument("--json", default=None, help="also write the JSON report to this file")
    model_args(s)
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("export", help="copy a trained model directory without optimizer state")
    s.add_argument("src", help="trained model directory (e.g. runs/small)")
    s.add_argument("dst", help="destination (e.g. bltlab/checkpoints/small in a checkout: the shipped model)")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="stored weight dtype")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("app", help="serve the workbench, a Gradio app (Patching, Generate, Compare, Model card), "
                       f"on http://{APP_HOST}:{APP_PORT} for your browser; also the console script bltlab-app",
                       description="The bltlab workbench: a Gradio app to look inside a byte-level language model. "
                       f"It listens on this machine only ({APP_HOST}:{APP_PORT}) unless told otherwise, and is "
                       "never shared publicly. Stop it with Ctrl+C.")
    s.add_argument("--model", default=str(SHIPPED), help="model directory, bltlab's or a local transformers "
                   "BltForCausalLM one (blt and blt-s* only) (default: the shipped small model)")
    s.add_argument("--host", default=None, help=f"address to bind (default: ${HOST_ENV} if set, else {APP_HOST}, "
                   "this machine only; 0.0.0.0 exposes the app to your network)")
    s.add_argument("--port", type=_port_arg, default=None,
                   help=f"port (default: ${PORT_ENV} if set, else {APP_PORT})")
    s.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto)")
    s.set_defaults(fn=cmd_app)

    from .bench_kernels import add_arguments

    s = sub.add_parser("bench-kernels", help="time the Triton kernels against their PyTorch references "
                       "(docs/kernels.md)")
    add_arguments(s)
    s.set_defaults(fn=cmd_bench_kernels)

    s = sub.add_parser("diagnose", help="why block diffusion loses on a model: the masked-block head against the "
                       "autoregressive one per block slot (accuracy, calibration), and every mode x knob on "
                       "held-out prompts (passes/byte, chrF, bits/byte, identity with blt)")
    s.add_argument("--windows", type=int, default=16, help="heads: held-out windows per source, each as long as "
                   "the model's context (default: 16)")
    s.add_argument("--sources", default=None, help="heads: comma-separated validation sources (default: code,fr)")
    s.add_argument("--blocks", default=None,
                   help="heads: comma-separated block sizes (default: 4,8,16, the trained ones)")
    s.add_argument("--prompts", type=int, default=8, help="modes: held-out prompts per task (default: 8)")
    s.add_argument("--tasks", default=None, help="modes: comma-separated prompt tasks (default: code,translation)")
    s.add_argument("--modes", default=None, help="modes: comma-separated modes, blt always first (default: blt, "
                   "blt-d4/8/16, blt-dv4/8/16, blt-h)")
    s.add_argument("--alphas", default=None, help="modes: comma-separated α for blt-d* (default: 0.5,0.7,0.9,0.99)")
    s.add_argument("--etas", default=None, help="modes: comma-separated η (nats) for blt-h (default: 0.05,0.3,1)")
    s.add_argument("--max-bytes", type=int, default=48, help="modes: most bytes per generation (default: 48)")
    s.add_argument("--seed", type=int, default=0, help="seed of the blocks drawn and the prompts picked (default: 0)")
    s.add_argument("--skip-heads", action="store_true", help="skip the heads part")
    s.add_argument("--skip-modes", action="store_true", help="skip the modes part")
    s.add_argument("--json", default="benchmarks/diagnose_{model}.json",
                   help="JSON file to write; {model} is the model's name (default: benchmarks/diagnose_{model}.json)")
    s.add_argument("--model", default=str(SHIPPED), help="model directory (default: the shipped small model)")
    s.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto)")
    s.set_defaults(fn=cmd_diagnose)
    return p


def main(argv: list[str] | None = None) -> None:
    """`python -m bltlab` and the console script `bltlab`."""
    args = build_parser().parse_args(argv)
    args.fn(args)


def main_app(argv: list[str] | None = None) -> None:
    """The console script `bltlab-app`: `python -m bltlab app` with the same flags."""
    main(["app", *(sys.argv[1:] if argv is None else argv)])
