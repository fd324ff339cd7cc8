"""The bltlab workbench: a Gradio app to look inside a byte-level language model.

Tabs: **Patching** (per-byte entropies and the patches each rule makes), **Generate** (every
decoding mode in `bltlab.decode.MODES`, with its pass counters) and **Model card** (what the
loaded model directory says about itself).

Layout of this file, so that new tabs (diffusion, speculation) slot in the same way:
  1. pure functions (no server needed, unit-tested directly): the `Workbench` record holding the
     loaded model, `patching_view`, `generate_view`, `model_card` and their helpers;
  2. one `_xxx_tab(wb, demo)` builder per tab, then `build_demo(model_dir, device) -> gr.Blocks`;
  3. the command line: `python apps/workbench.py [--model DIR] [--host H] [--port P] [--device D]`.

Event handlers carry api_names (`/patching`, `/generate`, `/model_card`) so that
`gradio_client` can drive the app (the tests do). The server binds to 127.0.0.1 unless told
otherwise and is never shared publicly.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python apps/workbench.py` from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr
import plotly.graph_objects as go
import torch

from bltlab.checkpoint import SHIPPED, CheckpointError, load_model
from bltlab.config import PatchConfig
from bltlab.decode import MODES, generate
from bltlab.model import BLT
from bltlab.patching import RULES, mean_patch_length, patch_starts, starts_to_spans
from bltlab.tokens import encode, to_bytes

MAX_TEXT_CHARS = 2000  # the patching textbox; the model's context is the real limit
THRESHOLD_RANGE = (0.0, 6.0)  # nats
MAX_PATCH_RANGE = (0, 16)  # 0 = unlimited
STRIDE_RANGE = (1, 16)
GEN_BYTES_RANGE = (1, 256)
COLORS = ("#4C78A8", "#F58518")  # alternating patch colours (bars and text)
README_REPRO = "Reproducing the shipped model"

EXAMPLES: dict[str, str] = {
    "Python code": 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n\nprint(add(2, 3))\n',
    "French sentence": "Le modèle découpe le texte en morceaux : là où la suite est prévisible, "
                       "les morceaux s'allongent.",
    "German sentence": "Die Straßenbahn fährt über die Brücke, während es draußen in Strömen regnet.",
    "English with typos": "Teh quik brwon fox jumpd ovr the lazzy dgo, and evryone was suprised "
                          "becuase it hapened so fsat.",
    "Emoji text": "Patches 🧩 around emoji 😀👍🏽 and flags 🇫🇷🇩🇪 may split multi-byte characters ✨",
}


# ---------------------------------------------------------------------------------------
# 1. Pure functions
# ---------------------------------------------------------------------------------------
@dataclass
class Workbench:
    """Everything the tabs share: the loaded model and where it came from."""

    model: BLT
    meta: dict
    model_dir: Path
    device: str

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def context_bytes(self) -> int:
        """Longest byte string the model reads (its context minus BOS)."""
        return self.cfg.max_bytes - 1


def resolve_device(name: str) -> str:
    """'cpu' | 'cuda[:N]' | 'auto' -> a torch device string; ValueError when CUDA is asked for
    but unavailable, or the name is unknown."""
    name = (name or "cpu").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available "
                             "(use --device cpu or --device auto)")
        return name
    raise ValueError(f"unknown device {name!r}; choose cpu, cuda or auto")


def device_name(device: str) -> str:
    """Human-readable name of a torch device."""
    if device.startswith("cuda"):
        dev = torch.device(device)
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"{device} ({torch.cuda.get_device_name(idx)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def load_workbench(model_dir: str | Path = SHIPPED, device: str = "cpu") -> Workbench:
    """Load a model directory; raises CheckpointError (missing/corrupt) or ValueError (device)."""
    device = resolve_device(device)
    model, meta = load_model(model_dir, device)
    return Workbench(model, meta, Path(model_dir), device)


def text_bytes(text: str | None) -> bytes:
    """UTF-8 bytes of a text; lone surrogates (odd pastes) are kept as bytes, never raise."""
    return to_bytes(text or "")


def user_error(message: str) -> gr.Error:
    """A gr.Error for bad user input: shown in the page, not logged as a server traceback."""
    return gr.Error(message, print_exception=False)


def check_text(data: bytes, wb: Workbench) -> None:
    """gr.Error for texts the patching view cannot show."""
    if not data:
        raise user_error("The text is empty: type or pick some text to patch.")
    if len(data) > wb.context_bytes:
        raise user_error(f"The text is {len(data)} bytes long; the model reads at most "
                       f"{wb.context_bytes} bytes (its context of {wb.cfg.max_bytes} positions "
                       "includes BOS). Shorten the text.")


def byte_labels(data: bytes) -> list[str]:
    """One readable label per byte: the character for ASCII, else the hex byte and which
    multi-byte UTF-8 character it belongs to."""
    names = {0x20: "' ' (space)", 0x0A: "'\\n'", 0x09: "'\\t'", 0x0D: "'\\r'"}
    out: list[str] = []
    i = 0
    while i < len(data):
        b = data[i]
        n = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 0
        ch = None
        if n:
            try:
                ch = data[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                ch = None
        if ch is None or len(ch) != 1:
            out.append(f"0x{b:02x} (not valid UTF-8 here)")
            i += 1
        elif n == 1:
            out.append(names.get(b, repr(ch) if ch.isprintable() else f"0x{b:02x}"))
            i += 1
        else:
            shown = ch if ch.isprintable() else f"U+{ord(ch):04X}"
            out.extend(f"0x{data[i + k]:02x} (byte {k + 1}/{n} of '{shown}', U+{ord(ch):04X})" for k in range(n))
            i += n
    return out


@dataclass
class PatchAnalysis:
    """Patching of one text. Positions are byte offsets into `data` (BOS not counted)."""

    data: bytes
    cfg: PatchConfig
    entropy: list[float]  # entropy[i]: nats of the prediction of byte i from the bytes before it
    spans: list[tuple[int, int]]  # half-open byte ranges of the patches, in order, covering data
    forced: list[int]  # patch starts placed by the max-length cap rather than the rule itself

    @property
    def starts(self) -> list[int]:
        return [s for s, _ in self.spans]

    @property
    def lengths(self) -> list[int]:
        return [e - s for s, e in self.spans]

    @property
    def mean_length(self) -> float:
        return sum(self.lengths) / len(self.spans) if self.spans else 0.0


def make_patch_config(wb: Workbench, rule: str, threshold: float | None = None,
                      max_patch: int | None = None, stride: int | None = None) -> PatchConfig:
    """The model's patch config with the given knobs replaced (None keeps the model's value)."""
    if rule not in RULES:
        raise user_error(f"Unknown patching rule {rule!r}; choose one of {', '.join(RULES)}.")
    base = wb.cfg.patch
    return PatchConfig(rule=rule,
                       threshold=float(base.threshold if threshold is None else threshold),
                       max_patch=int(base.max_patch if max_patch is None else max_patch),
                       stride=int(base.stride if stride is None else stride))


@torch.no_grad()
def analyse_patches(wb: Workbench, data: bytes, cfg: PatchConfig) -> PatchAnalysis:
    """Per-byte entropies and the patches `cfg` makes on `data` (checked with check_text)."""
    check_text(data, wb)
    ids = torch.tensor([encode(data)], device=wb.device)
    ent = wb.model.entropy.entropies(ids)
    try:
        starts = patch_starts(ent, ids, cfg)
        natural = patch_starts(ent, ids, dataclasses.replace(cfg, max_patch=0))
    except ValueError as e:
        raise user_error(str(e)) from None
    # mean_patch_length is the library's definition (BOS patch and byte excluded); the spans
    # below drop BOS too, so the two must agree.
    mpl = mean_patch_length(starts)
    spans = [(s - 1, e - 1) for s, e in starts_to_spans(starts[0], ids.shape[1]) if s >= 1]
    forced = [t - 1 for t in range(1, ids.shape[1]) if starts[0, t] and not natural[0, t]]
    out = PatchAnalysis(data, cfg, ent[0, 1:].tolist(), spans, forced)
    assert abs(out.mean_length - mpl) < 1e-6, (out.mean_length, mpl)
    return out


def entropy_figure(pa: PatchAnalysis) -> go.Figure:
    """Bar chart of per-byte entropy, coloured by patch, with patch starts and the threshold."""
    n = len(pa.data)
    x = list(range(n))
    labels = byte_labels(pa.data)
    pid = [0] * n
    for k, (s, e) in enumerate(pa.spans):
        pid[s:e] = [k] * (e - s)
    fig = go.Figure()
    fig.add_bar(x=x, y=pa.entropy, name="entropy H (nats)",
                marker_color=[COLORS[p % 2] for p in pid],
                customdata=[[lab, p] for lab, p in zip(labels, pid)],
                hovertemplate="byte %{x}: %{customdata[0]}<br>H = %{y:.3f} nats<br>patch %{customdata[1]}"
                              "<extra></extra>")
    rule, theta = pa.cfg.rule, pa.cfg.threshold
    if rule == "relative":
        delta = [pa.entropy[0]] + [b - a for a, b in zip(pa.entropy, pa.entropy[1:])]
        fig.add_scatter(x=x, y=delta, mode="lines", name="ΔH = H[t] - H[t-1]",
                        line=dict(color="#54A24B", width=1.5),
                        hovertemplate="byte %{x}: ΔH = %{y:.3f}<extra></extra>")
    if rule in ("global", "relative"):
        what = "θ" if rule == "global" else "θ_r (on ΔH)"
        fig.add_hline(y=theta, line=dict(color="crimson", dash="dash"),
                      annotation_text=f"{what} = {theta:.2f}", annotation_position="top left")
    top = max(pa.entropy + [theta if rule in ("global", "relative") else 0.0]) + 0.25
    forced = set(pa.forced)
    for name, pts, sym, col in (("patch start (rule)", [s for s in pa.starts if s not in forced], "triangle-down", "black"),
                                ("patch start (max length)", [s for s in pa.starts if s in forced], "triangle-down-open", "gray")):
        if pts:
            fig.add_scatter(x=pts, y=[top] * len(pts), mode="markers", name=name,
                            marker=dict(symbol=sym, size=9, color=col),
                            customdata=[labels[p] for p in pts],
                            hovertemplate=f"{name} at byte %{{x}}: %{{customdata}}<extra></extra>")
    fig.update_layout(title=f"Next-byte entropy and patches (rule: {rule})", xaxis_title="byte position",
                      yaxis_title="nats", bargap=0.05, height=380, margin=dict(l=50, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.25), hovermode="closest")
    return fig


def patch_segments(pa: PatchAnalysis) -> list[tuple[str, str]]:
    """(text, label) pairs for gr.HighlightedText, alternating labels "A"/"B" per patch.

    A patch boundary may fall inside a multi-byte UTF-8 character; such partial characters
    are shown as \\x escapes so that every patch shows exactly its own bytes."""
    return [(pa.data[s:e].decode("utf-8", errors="backslashreplace"), "AB"[k % 2])
            for k, (s, e) in enumerate(pa.spans)]


def patch_summary(pa: PatchAnalysis) -> str:
    cont = sum(1 for s in pa.starts if 0x80 <= pa.data[s] < 0xC0)
    knobs = {"global": f"θ = {pa.cfg.threshold:.2f} nats", "relative": f"θ_r = {pa.cfg.threshold:.2f} nats",
             "fixed": f"stride {pa.cfg.stride}", "space": "split after whitespace"}[pa.cfg.rule]
    cap = f"max patch {pa.cfg.max_patch}" if pa.cfg.max_patch else "no max length"
    line = (f"**{len(pa.spans)} patches** over **{len(pa.data)} bytes**; mean patch length "
            f"**{pa.mean_length:.2f}** bytes (BOS excluded) · rule `{pa.cfg.rule}`, {knobs}, {cap} · "
            f"{len(pa.forced)} start(s) forced by the max length")
    if cont:
        line += f" · {cont} boundar{'y' if cont == 1 else 'ies'} inside a multi-byte character (shown as \\x escapes)"
    return line


def patching_view(wb: Workbench, text: str, rule: str, threshold: float, max_patch: int,
                  stride: int) -> tuple[go.Figure, list[tuple[str, str]], str]:
    """The Patching tab: (entropy figure, highlighted patches, summary markdown)."""
    pa = analyse_patches(wb, text_bytes(text), make_patch_config(wb, rule, threshold, max_patch, stride))
    return entropy_figure(pa), patch_segments(pa), patch_summary(pa)


def generate_view(wb: Workbench, prompt: str, mode: str, max_bytes: int, temperature: float,
                  top_p: float, seed: int | float | None, stop: str) -> tuple[str, dict, str]:
    """The Generate tab: (generated text, counters, status markdown). Bad input -> gr.Error."""
    if mode not in MODES:
        raise user_error(f"Unknown decoding mode {mode!r}; choose one of {', '.join(MODES)}.")
    try:
        max_bytes = int(max_bytes)
        seed = None if seed is None or seed == "" else int(seed)
        t0 = time.perf_counter()
        g = generate(wb.model, text_bytes(prompt), mode=mode, max_bytes=max_bytes,
                     stop=text_bytes(stop) or None, temperature=float(temperature), top_p=float(top_p),
                     seed=seed)
        seconds = time.perf_counter() - t0
    except (ValueError, TypeError) as e:
        raise user_error(str(e)) from None
    counters = dict(g.counters)
    counters.setdefault("bytes", len(g.output))
    counters.setdefault("seconds", round(seconds, 4))
    counters.setdefault("bytes_per_s", round(len(g.output) / seconds, 2) if seconds > 0 else None)
    why = {"max_bytes": "the byte budget was reached", "eos": "the model emitted EOS",
           "stop": "the stop string was generated (it is not shown)",
           "context": "the model's context is full"}.get(g.stop_reason, g.stop_reason)
    status = (f"Mode `{mode}` · stopped: **{g.stop_reason}** ({why}) · {counters['bytes']} bytes in "
              f"{counters['seconds']:.3f} s on **{device_name(wb.device)}**")
    return g.text, counters, status


def _md_cell(value) -> str:
    return html.escape(str(value)).replace("|", "\\|").replace("\n", " ")


def model_card(wb: Workbench) -> str:
    """Markdown describing the loaded model: shapes, patching, training record, parameters."""
    cfg, meta = wb.cfg, wb.meta
    counts = wb.model.param_counts()
    total = sum(counts.values())
    lines = [f"## Model `{_md_cell(cfg.name)}`", "",
             f"Loaded from `{_md_cell(wb.model_dir)}` on **{_md_cell(device_name(wb.device))}**.", ""]
    if not meta.get("trained") and not meta.get("metrics"):
        lines += ["> **Note:** this directory does not record a training run; the weights may be random.", ""]
    lines += ["### Parameters", "", "| part | parameters |", "| --- | ---: |"]
    lines += [f"| {k} | {v:,} |" for k, v in counts.items()] + [f"| **total** | **{total:,}** |", ""]
    lines += ["### Shapes", "", "| field | value |", "| --- | --- |"]
    shape_keys = ("d_local", "n_enc_layers", "n_dec_layers", "local_heads", "local_window", "cross_k",
                  "d_global", "n_global_layers", "global_heads", "hash_sizes", "hash_vocab", "max_bytes")
    lines += [f"| {k} | {_md_cell(getattr(cfg, k))} |" for k in shape_keys]
    lines += [f"| entropy model | dim {cfg.entropy.dim}, {cfg.entropy.n_layers} layers, "
              f"{cfg.entropy.n_heads} heads, trained on up to {cfg.entropy.max_len} bytes |", ""]
    p = cfg.patch
    lines += ["### Patching", "",
              f"Rule `{p.rule}`, threshold **{p.threshold:.4f}** nats (calibrated), max patch {p.max_patch} "
              f"bytes, fixed stride {p.stride}. Context: {cfg.max_bytes - 1} bytes after BOS.", ""]
    lines += ["### Training record", ""]
    known = {"trained": "trained", "seconds": "wall time (s)", "device": "device", "bytes_seen": "bytes seen"}
    rows = [f"| {label} | {_md_cell(meta[k])} |" for k, label in known.items() if k in meta]
    rows += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in meta.items()
             if k not in known and k != "metrics" and not isinstance(v, dict)]
    if rows:
        lines += ["| field | value |", "| --- | --- |", *rows, ""]
    else:
        lines += ["No training record in config.json.", ""]
    for k, v in meta.items():
        if isinstance(v, dict) and v:
            lines += [f"**{_md_cell(k)}**", "", "| name | value |", "| --- | --- |"]
            lines += [f"| {_md_cell(a)} | {_md_cell(f'{b:.4g}' if isinstance(b, float) else b)} |"
                      for a, b in v.items()] + [""]
    lines += ["### Reproducing", "",
              f"See the README section **“{README_REPRO}”** for the exact `python -m bltlab train entropy` "
              "and `python -m bltlab train blt` commands; `config.json` in the model directory records "
              "the knobs, the hardware and the wall time of the run."]
    return "\n".join(lines)


def header_markdown(wb: Workbench) -> str:
    return (f"# bltlab workbench\nByte Latent Transformer, byte by byte. Model `{_md_cell(wb.cfg.name)}` "
            f"from `{_md_cell(wb.model_dir)}` · running on **{_md_cell(device_name(wb.device))}**")


# ---------------------------------------------------------------------------------------
# 2. The app
# ---------------------------------------------------------------------------------------
def _rule_controls(rule: str):
    """Show the knobs that matter for a rule."""
    return gr.update(visible=rule in ("global", "relative")), gr.update(visible=rule == "fixed")


def _patching_tab(wb: Workbench, demo: gr.Blocks) -> None:
    p = wb.cfg.patch
    lo, hi = THRESHOLD_RANGE
    first = next(iter(EXAMPLES))
    with gr.Row():
        with gr.Column(scale=2):
            text = gr.Textbox(EXAMPLES[first], label="Text", lines=5, max_length=MAX_TEXT_CHARS,
                              info=f"At most {wb.context_bytes} UTF-8 bytes (the model's context).")
            example = gr.Dropdown(list(EXAMPLES), value=first, label="Example")
        with gr.Column(scale=1):
            rule = gr.Radio(list(RULES), value=p.rule if p.rule in RULES else "global", label="Rule",
                            info="global: H > θ · relative: H[t] - H[t-1] > θ · fixed: every stride bytes "
                                 "· space: after whitespace")
            threshold = gr.Slider(lo, hi, value=min(max(p.threshold, lo), hi), step=0.01,
                                  label="Threshold θ (nats)", info="calibrated value of this model by default")
            max_patch = gr.Slider(*MAX_PATCH_RANGE, value=p.max_patch, step=1, label="Max patch length",
                                  info="0 = unlimited")
            stride = gr.Slider(*STRIDE_RANGE, value=p.stride, step=1, label="Stride (fixed rule)",
                               visible=p.rule == "fixed")
    summary = gr.Markdown()
    plot = gr.Plot(label="Per-byte entropy")
    patches = gr.HighlightedText(label="Patches", color_map={"A": "#c6dbef", "B": "#fdd0a2"},
                                 show_legend=False, show_inline_category=False, combine_adjacent=False)

    example.input(lambda k: EXAMPLES.get(k, ""), example, text, api_visibility="private")
    rule.change(_rule_controls, rule, [threshold, stride], api_visibility="private", queue=False)
    inputs = [text, rule, threshold, max_patch, stride]
    gr.on([demo.load, text.change, rule.change, threshold.change, max_patch.change, stride.change],
          lambda *a: patching_view(wb, *a), inputs, [plot, patches, summary],
          api_name="patching", trigger_mode="always_last", show_progress="minimal")


def _generate_tab(wb: Workbench) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox("def add(a, b):", label="Prompt", lines=4,
                                info="Empty is fine (the model starts from BOS).")
            with gr.Row():
                go_btn = gr.Button("Generate", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
        with gr.Column(scale=1):
            mode = gr.Dropdown(list(MODES), value=MODES[0], label="Decoding mode")
            max_bytes = gr.Slider(*GEN_BYTES_RANGE, value=64, step=1, label="Max new bytes")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature", info="0 = greedy")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
            seed = gr.Number(0, precision=0, label="Seed")
            stop = gr.Textbox("", label="Stop string", info="generation ends when this is produced")
    output = gr.Textbox(label="Generated text", lines=6, interactive=False)
    status = gr.Markdown()
    counters = gr.JSON(label="Counters (n_dec / n_enc / n_ent = decoder / encoder / entropy-model passes)")
    event = go_btn.click(lambda *a: generate_view(wb, *a), [prompt, mode, max_bytes, temperature, top_p, seed, stop],
                         [output, counters, status], api_name="generate")
    # Stop cancels the event: the page stops waiting and drops the result at once.
    stop_btn.click(None, None, None, cancels=[event], api_visibility="private", queue=False)


def _model_card_tab(wb: Workbench) -> None:
    card = gr.Markdown(model_card(wb))
    refresh = gr.Button("Refresh", size="sm")
    refresh.click(lambda: model_card(wb), None, card, api_name="model_card")


def build_demo(model_dir: str | Path = SHIPPED, device: str = "cpu") -> gr.Blocks:
    """The workbench for one model directory. Raises CheckpointError if the directory is
    missing or broken, ValueError if the device is unavailable; nothing is launched."""
    wb = load_workbench(model_dir, device)
    with gr.Blocks(title="bltlab workbench", analytics_enabled=False) as demo:
        gr.Markdown(header_markdown(wb))
        with gr.Tabs():
            with gr.Tab("Patching"):
                _patching_tab(wb, demo)
            with gr.Tab("Generate"):
                _generate_tab(wb)
            with gr.Tab("Model card"):
                _model_card_tab(wb)
    demo.workbench = wb  # for tests and notebooks
    return demo


# ---------------------------------------------------------------------------------------
# 3. Command line
# ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python apps/workbench.py", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHIPPED), help=f"model directory (default: {SHIPPED})")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it on your network)")
    ap.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                    help="cpu, cuda or auto (default: cpu)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        demo = build_demo(args.model, args.device)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    demo.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
