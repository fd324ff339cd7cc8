"""The bltlab workbench: a Gradio app to look inside a byte-level language model.

Tabs: **Patching** (per-byte entropies and the patches each rule makes), **Generate** (every
decoding mode in `bltlab.decode.MODES`, streamed live from a worker thread: output, pass
counters, GB by the paper's and the full formula, bytes/s, and a picture of what happens at
each step: patches, diffusion denoising grids, speculative accept/reject, BLT-H switches),
**Compare** (one prompt through `blt` and up to three other modes: outputs, bandwidth, whether
each output equals `blt`'s) and **Model card** (what the loaded model directory says about itself).

Layout of this file:
  1. pure functions (no server needed, unit-tested directly): the `Workbench` record holding the
     loaded model, `patching_view`, `generate_stream`, `steps_html`, `compare_view`, `model_card`
     and their helpers; the step pictures are built from a Generation's trace only;
  2. one `_xxx_tab(wb, ...)` builder per tab, then `build_demo(model_dir, device) -> gr.Blocks`
     (queued: at most CONCURRENCY generations at once per event, QUEUE_SIZE waiting);
  3. the command line: `python apps/workbench.py [--model DIR] [--host H] [--port P] [--device D]`.

Event handlers carry api_names (`/patching`, `/generate` (streaming), `/stop`, `/compare`,
`/model_card`) so that `gradio_client` can drive the app (the tests do). `/stop` cancels the
running generation (Gradio closes its generator, which ends the decoding) and says so in the
status. The server binds to 127.0.0.1 unless told otherwise and is never shared publicly.
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
from bltlab.cost import bandwidth, part_params
from bltlab.decode import MODES, Done, Generation, generate, stream
from bltlab.interop import is_hf_dir, load_hf
from bltlab.model import BLT
from bltlab.patching import RULES, mean_patch_length, patch_starts, starts_to_spans
from bltlab.speed import copy_gbps
from bltlab.tokens import encode, to_bytes

MAX_TEXT_CHARS = 2000  # the patching textbox; the model's context is the real limit
THRESHOLD_RANGE = (0.0, 6.0)  # nats
MAX_PATCH_RANGE = (0, 16)  # 0 = unlimited
STRIDE_RANGE = (1, 16)
GEN_BYTES_RANGE = (1, 256)
COLORS = ("#4C78A8", "#F58518")  # alternating patch colours (bars and text)
README_REPRO = "Reproducing the shipped model"
MAX_PROMPT_CHARS = 4000  # the generate/compare textboxes; the model's context is the real limit
CONCURRENCY = 2  # generations at once (per event); the rest wait in the queue
QUEUE_SIZE = 64
STREAM_INTERVAL = 0.15  # seconds between streamed updates
STEP_LIMIT = 16  # diffusion blocks / speculative drafts drawn in the step picture
PATCH_BG = ("#c6dbef", "#fdd0a2", "#c7e9c0", "#dadaeb")  # patch colours in the step picture
STEPS_CSS = """<style>
.bl-steps{font-family:ui-monospace,monospace;font-size:13px;line-height:1.9}
.bl-sec{margin:8px 0 4px 0;font-family:sans-serif}
.bl-strip{display:flex;flex-wrap:wrap;gap:1px}
.bl-b{display:inline-block;min-width:1.2em;padding:0 2px;text-align:center;border-radius:3px;color:#111}
.bl-switch{font-size:11px;font-weight:bold;padding:0 3px;margin:0 2px;border-radius:3px;color:#fff}
.bl-ar{background:#e45756}.bl-d{background:#4c78a8}
.bl-grids{display:flex;flex-wrap:wrap;gap:6px 12px;align-items:flex-start}
.bl-grid{border-collapse:collapse;margin:2px 0}
.bl-grid caption{font-size:11px;text-align:left;font-family:sans-serif}
.bl-grid td,.bl-grid th{border:1px solid #ccc;padding:0 4px;text-align:center;font-size:12px}
.bl-grid th{background:#f3f3f3;font-weight:normal;color:#555}
.bl-new{background:#fdd0a2;font-weight:bold;color:#111}.bl-old{color:#999}.bl-mask{color:#bbb}
.bl-row{margin:1px 0}.bl-lab{display:inline-block;width:11em;color:#555;font-family:sans-serif;font-size:12px}
.bl-arrow{margin:0 3px}.bl-none{color:#777;font-family:sans-serif}
</style>"""

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
    params: dict = dataclasses.field(init=False)  # bltlab.cost.part_params of the model

    def __post_init__(self) -> None:
        self.params = part_params(self.model)
        self._peak: float | None = None

    @property
    def copy_gbps(self) -> float:
        """The device's copy bandwidth (GB/s, read + write), measured once: the roofline's peak."""
        if self._peak is None:
            self._peak = copy_gbps(torch.device(self.device))
        return self._peak

    @property
    def dtype_bytes(self) -> int:
        """Bytes per weight element (for the full bandwidth formula)."""
        return next(self.model.parameters()).element_size()

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
    """Load a model directory, bltlab's or transformers' BltForCausalLM layout (training-free
    modes only); raises CheckpointError (missing/corrupt/unmappable) or ValueError (device)."""
    device = resolve_device(device)
    if is_hf_dir(model_dir):
        model, meta = load_hf(model_dir, device), {"source": f"transformers BltForCausalLM in {model_dir}"}
    else:
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


def _md_cell(value) -> str:
    return html.escape(str(value)).replace("|", "\\|").replace("\n", " ")


REPORT = Path(__file__).resolve().parent.parent / "docs" / "results" / "report_small.json"


def measured_quality(model_dir: Path, report: Path = REPORT) -> list[str]:
    """The committed `python -m bltlab report` figures, shown only if they describe these very files."""
    import hashlib
    import json

    try:
        rep = json.loads(report.read_text())
        same = all(hashlib.sha256((model_dir / f).read_bytes()).hexdigest() == h for f, h in rep["sha256"].items())
    except (OSError, KeyError, ValueError):
        return []
    if not same:
        return []
    tr = rep["translation_fr"]
    return ["### Measured quality (held-out data)", "", "| measure | value |", "| --- | --- |",
            *[f"| bits/byte, {k} | {v:.3f} |" for k, v in rep["val_bpb"].items()],
            f"| mean patch length, code | {rep['patching_code']['mean_patch_length']:.2f} bytes |",
            f"| chrF / BLEU, greedy EN→FR ({tr['pairs']} pairs) | {tr['chrf']:.1f} / {tr['bleu']:.1f} |", "",
            "From `python -m bltlab report`; every decoding mode is measured in `docs/results.md`.", ""]


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
    lines += measured_quality(Path(wb.model_dir))
    lines += ["### Reproducing", "",
              f"See the README section **“{README_REPRO}”** for the exact `python -m bltlab train entropy` "
              "and `python -m bltlab train blt` commands; `config.json` in the model directory records "
              "the knobs, the hardware and the wall time of the run."]
    return "\n".join(lines)


def header_markdown(wb: Workbench) -> str:
    return (f"# bltlab workbench\nByte Latent Transformer, byte by byte. Model `{_md_cell(wb.cfg.name)}` "
            f"from `{_md_cell(wb.model_dir)}` · running on **{_md_cell(device_name(wb.device))}**")


# ---- generation: knobs, streaming, counters ----------------------------------------------
UNMASK_RULES = ("confidence α", "entropy bound γ")
STOPPED = "stopped: **cancelled** (the Stop button was pressed; the text above is what was made until then)"
STOP_REASONS = {"max_bytes": "the byte budget was reached", "eos": "the model emitted EOS",
                "stop": "the stop string was generated (it is not shown)",
                "context": "the model's context is full"}


@dataclass
class GenKnobs:
    """Validated arguments of `bltlab.decode.generate` (everything but the model)."""

    prompt: bytes
    mode: str
    max_bytes: int
    stop: bytes | None
    temperature: float
    top_p: float
    seed: int | None
    alpha: float | None
    gamma: float | None
    eta: float
    block: int

    def kwargs(self) -> dict:
        return dataclasses.asdict(self)


def gen_knobs(prompt: str | None, mode: str, max_bytes, temperature, top_p, seed, stop: str | None,
              unmask_rule: str = UNMASK_RULES[0], alpha=0.9, gamma=1.0, eta=1.0, block=8) -> GenKnobs:
    """UI values -> GenKnobs. Only the mode and the types are checked here; ranges are left to
    the library so that its ValueError text reaches the page. An empty prompt is fine (BOS)."""
    if mode not in MODES:
        raise user_error(f"Unknown decoding mode {mode!r}; choose one of {', '.join(MODES)}.")
    if unmask_rule not in UNMASK_RULES:
        raise user_error(f"Unknown unmasking rule {unmask_rule!r}; choose one of {', '.join(UNMASK_RULES)}.")
    try:
        by_conf = unmask_rule == UNMASK_RULES[0]
        return GenKnobs(text_bytes(prompt), mode, int(max_bytes), text_bytes(stop) or None, float(temperature),
                        float(top_p), None if seed is None or seed == "" else int(seed),
                        float(alpha) if by_conf else None, None if by_conf else float(gamma),
                        float(eta), int(block))
    except (TypeError, ValueError) as e:
        raise user_error(f"Invalid knob value: {e}") from None


def run_generation(wb: Workbench, knobs: GenKnobs) -> Generation:
    """One generation; the library's ValueError/TypeError become gr.Error with the same text."""
    try:
        with torch.no_grad():
            return generate(wb.model, **knobs.kwargs())
    except (ValueError, TypeError) as e:
        raise user_error(str(e)) from None


def live_counters(wb: Workbench, counters: dict, n_bytes: int, seconds: float, final: bool) -> dict:
    """Pass counters + GB by the paper's and the full formula (bltlab.cost), bytes/s, device.
    While running, the decoders report only n_dec/n_enc/n_ent, so `GB_full` is then a lower
    bound (no KV reads or hash rows yet); the final value counts everything."""
    c = {k: int(counters.get(k, 0)) for k in ("n_dec", "n_enc", "n_ent")}
    gb = bandwidth({**counters, **c}, wb.params, wb.cfg.d_local, wb.dtype_bytes)
    return {**c, "GB_paper": round(gb["paper"], 6), "GB_full": round(gb["full"], 6),
            "GB_full_is": "final" if final else "lower bound (running)",
            "bytes": n_bytes, "seconds": round(seconds, 3),
            "bytes_per_s": round(n_bytes / seconds, 2) if seconds > 0 else None,
            "device": device_name(wb.device)}


def emitted_bytes(trace: list[dict]) -> bytes:
    """The bytes the trace says were produced so far (the stop string may still be in it; the
    final Generation.output is authoritative). EOS is no byte: it only ends them."""
    out = bytearray()
    for e in trace:
        t = e.get("type")
        if t in ("byte", "ar") and e["byte"] is not None:
            out.append(e["byte"])
        elif t == "verify":
            out.extend(e["draft"][:e["accepted"]])
        elif t == "block":
            out.extend(e["bytes"])
    return bytes(out)


def last_counters(trace: list[dict]) -> dict:
    """Counters of the newest event that carries them."""
    return next((e["counters"] for e in reversed(trace) if "counters" in e), {})


def status_markdown(wb: Workbench, mode: str, reason: str | None, n_bytes: int, seconds: float) -> str:
    """One line: mode, why it stopped (or 'running'), bytes, time, device."""
    state = "running…" if reason is None else f"stopped: **{reason}** ({STOP_REASONS.get(reason, reason)})"
    return (f"Mode `{mode}` · {state} · {n_bytes} bytes in {seconds:.3f} s on "
            f"**{_md_cell(device_name(wb.device))}**")


def generate_stream(wb: Workbench, *values, interval: float = STREAM_INTERVAL):
    """The Generate tab as a generator over `bltlab.decode.stream`: yields (text so far, counters,
    status, steps HTML) every `interval` seconds, then the finished generation. Stop cancels it
    (Gradio closes the generator, which ends the decoding and frees its state)."""
    knobs = gen_knobs(*values)
    trace: list[dict] = []
    t0 = last_yield = time.perf_counter()
    try:
        with torch.no_grad():
            for event in stream(wb.model, **knobs.kwargs()):
                if isinstance(event, Done):
                    g: Generation = event.generation
                    break
                trace.append(event.to_json())
                now = time.perf_counter()
                if now - last_yield >= interval:
                    last_yield = now
                    out = emitted_bytes(trace)
                    yield (out.decode("utf-8", errors="replace"),
                           live_counters(wb, last_counters(trace), len(out), now - t0, final=False),
                           status_markdown(wb, knobs.mode, None, len(out), now - t0),
                           steps_html(trace, knobs.prompt))
    except (ValueError, TypeError) as e:
        raise user_error(str(e)) from None
    seconds = float(g.counters.get("seconds", time.perf_counter() - t0))
    yield (g.text, live_counters(wb, g.counters, len(g.output), seconds, final=True),
           status_markdown(wb, knobs.mode, g.stop_reason, len(g.output), seconds),
           steps_html(g.trace, g.prompt, g.output))


def generate_once(wb: Workbench, *values) -> tuple[str, dict, str, str]:
    """The last update of `generate_stream` (tests, notebooks)."""
    *_, last = generate_stream(wb, *values)
    return last


# ---- what happens at each step (built from the trace only) ------------------------------
def byte_glyph(b: int | None) -> str:
    """A short, HTML-escaped glyph for one byte: the ASCII character, ␣ for space, ↵ for
    newline, else \\xNN; None (EOS, which is no byte) is ∎."""
    if b is None:
        return "∎"
    special = {0x20: "␣", 0x0A: "↵", 0x09: "⇥", 0x0D: "␍"}
    if b in special:
        return special[b]
    if 0x21 <= b < 0x7F:
        return html.escape(chr(b))
    return f"\\x{b:02x}"


def _cell(b: int | None, style: str, title: str = "") -> str:
    tip = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="bl-b" style="{style}"{tip}>{byte_glyph(b)}</span>'


def trace_layout(trace: list[dict], prompt: bytes, output: bytes | None = None
                 ) -> tuple[dict[int, int], set[int], dict[int, str]]:
    """From a trace: {position: byte} for prompt and generated bytes (position 0 = BOS),
    the known patch starts, and the BLT-H switch points {position: "ar" | "diffusion"}.

    `output` (Generation.output, once finished) is authoritative for the generated bytes: the
    trace can lack the last byte (`blt` emits no event for the byte that ends the run) and
    can hold bytes past the end (a stop string, the rest of a block)."""
    pos_byte = {i + 1: b for i, b in enumerate(prompt)}
    starts: set[int] = set()
    switches: dict[int, str] = {}
    for e in trace:
        t = e.get("type")
        if t == "prefill":
            starts.update(e.get("patch_starts") or [])
        elif t == "byte":
            pos_byte[e["pos"]] = e["byte"]
            if e.get("patch_start"):
                starts.add(e["pos"])
        elif t == "ar" and e["byte"] is not None:
            pos_byte[e["pos"]] = e["byte"]
        elif t == "verify":
            for i, b in enumerate(e["draft"][:e["accepted"]]):
                pos_byte[e["pos"] + 1 + i] = b
            starts.update(e.get("patch_starts") or [])
        elif t == "block":
            for i, b in enumerate(e["bytes"]):
                pos_byte[e["pos"] + i] = b
            starts.add(e["pos"])  # a diffusion block always begins a patch
            starts.update(e.get("patch_starts") or [])
        elif t == "switch":
            switches[e["pos"]] = e["to"]
    if output is not None:
        end = len(prompt) + len(output)
        pos_byte = {p: b for p, b in pos_byte.items() if p <= end}
        pos_byte.update({len(prompt) + 1 + i: b for i, b in enumerate(output)})
    return pos_byte, starts, switches


def patches_html(trace: list[dict], prompt: bytes, output: bytes | None = None) -> str:
    """Prompt + generated bytes, coloured by patch (prompt faded), with BLT-H switch marks."""
    pos_byte, starts, switches = trace_layout(trace, prompt, output)
    parts, patch = [], -1
    for pos in sorted(pos_byte):
        if pos in switches:
            to = switches[pos]
            parts.append(f'<span class="bl-switch bl-{"ar" if to == "ar" else "d"}" '
                         f'title="BLT-H switches to {html.escape(to)} here">▶{"AR" if to == "ar" else "D"}</span>')
        if pos in starts or patch < 0:
            patch += 1
        bg = PATCH_BG[patch % len(PATCH_BG)]
        faded = "opacity:.55;" if pos <= len(prompt) else ""
        parts.append(_cell(pos_byte[pos], f"background:{bg};{faded}",
                           f"position {pos}, patch {patch}" + (" (prompt)" if pos <= len(prompt) else "")))
    if not parts:
        return '<p class="bl-none">No bytes yet.</p>'
    return ('<div class="bl-sec"><b>Patches</b> (faded: prompt · a new colour starts each patch'
            + (' · ▶AR / ▶D: BLT-H switches to autoregressive / diffusion steps; its AR bytes carry no '
               'patch boundaries in the trace' if switches else "")
            + f')</div><div class="bl-strip">{"".join(parts)}</div>')


def block_grid_html(event: dict) -> str:
    """One diffusion block as a table: rows = denoising steps, columns = slot positions; the
    byte unmasked at a step is shown bold in that row, bytes unmasked earlier faded, ▒ = MASK."""
    size, pos = event["size"], event["pos"]
    known: dict[int, int] = {}
    head = "".join(f"<th>{pos + j}</th>" for j in range(size))
    rows = []
    for k, step in enumerate(event["steps"]):
        new = dict(zip(step["unmasked"], step["bytes"]))
        cells = []
        for j in range(size):
            if j in new:
                cells.append(f'<td class="bl-new">{byte_glyph(new[j])}</td>')
            elif j in known:
                cells.append(f'<td class="bl-old">{byte_glyph(known[j])}</td>')
            else:
                cells.append('<td class="bl-mask">▒</td>')
        known.update(new)
        rows.append(f"<tr><th>step {k + 1}</th>{''.join(cells)}</tr>")
    return (f'<table class="bl-grid"><caption>block at position {pos} · {size} slots · '
            f'{len(event["steps"])} denoising step(s)</caption><tr><th></th>{head}</tr>{"".join(rows)}</table>')


def verify_html(event: dict) -> str:
    """One speculative draft: accepted bytes green, the rejected byte red, then the correction."""
    d, acc = list(event["draft"]) + [None] * event["eos"], event["accepted"]  # None: EOS
    cells = [_cell(b, "background:#c7e9c0", "accepted") for b in d[:acc]]
    if event["rejected"] is not None or event["rejected_eos"]:
        cells.append(_cell(event["rejected"], "background:#fcbba1;text-decoration:line-through", "rejected"))
    if event["correction"] is not None or event["correction_eos"]:
        cells.append('<span class="bl-arrow">→</span>'
                     + _cell(event["correction"], "background:#c6dbef", "correction (exact byte)"))
    return (f'<div class="bl-row"><span class="bl-lab">pos {event["pos"] + 1}: {acc}/{len(d)} kept</span>'
            f'{"".join(cells)}</div>')


def steps_html(trace: list[dict], prompt: bytes = b"", output: bytes | None = None,
               limit: int = STEP_LIMIT) -> str:
    """What happens at each step, from a Generation trace only: patches (and BLT-H switch
    points), every diffusion block's denoising grid, every speculative draft's verdict.
    All model and user text is escaped; at most `limit` blocks / drafts are drawn. Pass
    `output` (Generation.output) once the run has finished (see `trace_layout`)."""
    blocks = [e for e in trace if e.get("type") == "block"]
    drafts = [e for e in trace if e.get("type") == "verify"]
    parts = [STEPS_CSS, patches_html(trace, prompt, output)]
    if blocks:
        parts.append('<div class="bl-sec"><b>Diffusion blocks</b> (bold: unmasked at this step · '
                     'faded: unmasked before · ▒: still masked)</div>')
        parts.append(f'<div class="bl-grids">{"".join(block_grid_html(e) for e in blocks[:limit])}</div>')
    if drafts:
        parts.append('<div class="bl-sec"><b>Speculative drafts</b> (green: accepted · red: rejected · '
                     'blue: the exact correction)</div>')
        parts += [verify_html(e) for e in drafts[:limit]]
    if len(blocks) > limit or len(drafts) > limit:
        parts.append(f'<p class="bl-none">… only the first {limit} are drawn.</p>')
    return f'<div class="bl-steps">{"".join(parts)}</div>'


# ---- compare ---------------------------------------------------------------------------
COMPARE_HEADERS = ["mode", "output", "identical_to_blt", "stop_reason", "bytes", "bytes_per_s",
                   "roofline_bytes_per_s", "pct_of_roofline", "GB_paper", "GB_full", "n_dec", "n_enc", "n_ent"]


def compare_modes(modes: list[str] | None) -> list[str]:
    """`blt` first (the reference), then the chosen modes; 2–4 in all, else gr.Error."""
    modes = [m for m in (modes or []) if m != "blt"]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise user_error(f"Unknown decoding mode(s) {', '.join(map(repr, unknown))}; choose from {', '.join(MODES)}.")
    out = ["blt"] + list(dict.fromkeys(modes))
    if not 2 <= len(out) <= 4:
        raise user_error(f"Choose 1 to 3 modes besides blt (2–4 in all, blt is always run as the reference); "
                         f"got {len(out)} in all.")
    return out


def compare_runs(wb: Workbench, prompt: str, modes: list[str] | None, max_bytes, temperature, top_p,
                 seed) -> list[dict]:
    """The same prompt through `blt` and the chosen modes: one row per mode (COMPARE_HEADERS)."""
    rows, ref = [], None
    for mode in compare_modes(modes):
        g = run_generation(wb, gen_knobs(prompt, mode, max_bytes, temperature, top_p, seed, ""))
        ref = g.output if ref is None else ref
        c = live_counters(wb, g.counters, len(g.output), float(g.counters.get("seconds", 0.0)), final=True)
        # roofline: the bytes/s that reading GB_full alone allows at the device's copy bandwidth
        roof = wb.copy_gbps * c["bytes"] / c["GB_full"] if c["GB_full"] else 0.0
        rows.append({"mode": mode, "output": g.text, "identical_to_blt": g.output == ref,
                     "stop_reason": g.stop_reason, "roofline_bytes_per_s": round(roof, 1),
                     # 4 significant digits: on a GPU it is a fraction of a percent
                     "pct_of_roofline": float(f"{100 * c['bytes_per_s'] / roof:.4g}") if roof else 0.0,
                     **{k: c[k] for k in COMPARE_HEADERS[4:] if k in c}})
    return rows


def compare_figure(rows: list[dict]) -> go.Figure:
    """Grouped bars: GB read per mode by the paper's formula and by the full one."""
    fig = go.Figure()
    modes = [r["mode"] for r in rows]
    fig.add_bar(x=modes, y=[r["GB_paper"] for r in rows], name="paper formula (GB of parameters)",
                marker_color=COLORS[0])
    fig.add_bar(x=modes, y=[r["GB_full"] for r in rows], name="full (GB actually read)", marker_color=COLORS[1])
    fig.update_layout(title="Memory bandwidth per generation", barmode="group", yaxis_title="GB",
                      height=360, margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return fig


def compare_view(wb: Workbench, prompt: str, modes: list[str] | None, max_bytes, temperature, top_p,
                 seed) -> tuple[list[list], go.Figure, str]:
    """The Compare tab: (table rows, bandwidth figure, summary markdown)."""
    rows = compare_runs(wb, prompt, modes, max_bytes, temperature, top_p, seed)
    same = [r["mode"] for r in rows[1:] if r["identical_to_blt"]]
    note = "" if float(temperature) == 0 else " (sampling: outputs may differ even when every mode is correct)"
    summary = (f"Reference `blt`; identical output: {', '.join(f'`{m}`' for m in same) or 'none'}{note} · "
               f"device **{_md_cell(device_name(wb.device))}** · roofline = bytes/s if reading `GB_full` were all "
               f"the time took, at the copy bandwidth measured here ({wb.copy_gbps:.1f} GB/s)")
    return [[r[h] for h in COMPARE_HEADERS] for r in rows], compare_figure(rows), summary


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


def _unmask_controls(rule: str):
    """Show the α slider for the confidence rule, the γ slider for the entropy bound."""
    return gr.update(visible=rule == UNMASK_RULES[0]), gr.update(visible=rule != UNMASK_RULES[0])


def _generate_tab(wb: Workbench) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox("def add(a, b):", label="Prompt", lines=4, max_length=MAX_PROMPT_CHARS,
                                elem_id="gen-prompt",
                                info=f"Empty is fine (the model starts from BOS); prompt + max new bytes "
                                     f"must fit in {wb.context_bytes} bytes.")
            mode = gr.Radio(list(MODES), value=MODES[0], label="Decoding mode", elem_id="gen-mode",
                            info="blt: autoregressive · s: self-speculation · d: block diffusion · "
                                 "dv: diffusion draft + verification · h: hybrid")
            with gr.Row():
                go_btn = gr.Button("Generate", variant="primary", elem_id="gen-go")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="gen-stop")
        with gr.Column(scale=1):
            max_bytes, temperature, top_p, seed = _sampling_controls(64)
            stop = gr.Textbox("", label="Stop string", info="generation ends when this is produced")
            with gr.Accordion("Diffusion and hybrid knobs (blt-d*, blt-h)", open=False):
                unmask = gr.Radio(list(UNMASK_RULES), value=UNMASK_RULES[0], label="Unmasking rule")
                alpha = gr.Slider(0.0, 2.0, value=0.9, step=0.01, label="α (confidence)",
                                  info="unmask slots whose confidence exceeds α (above 1: one per pass)")
                gamma = gr.Slider(0.0, 10.0, value=1.0, step=0.05, label="γ (entropy bound, nats)", visible=False,
                                  info="unmask the most confident slots while their summed entropy stays below γ")
                eta = gr.Slider(0.0, 10.0, value=1.0, step=0.05, label="η (blt-h switch, nats)",
                                info="diffusion block when the next-byte entropy ≤ η, else one AR byte")
                block = gr.Radio([4, 8, 16], value=8, label="Block (blt-h)")
    output = gr.Textbox(label="Generated text", lines=5, interactive=False, elem_id="gen-output")
    status = gr.Markdown(elem_id="gen-status")
    with gr.Row():
        counters = gr.JSON(label="Live counters (n_dec / n_enc / n_ent = decoder / encoder+global / "
                                 "entropy-model passes; GB by the paper's and the full formula)",
                           elem_id="gen-counters", scale=1)
        with gr.Column(scale=3):
            steps = gr.HTML(label="What happens at each step", elem_id="gen-steps")
    unmask.change(_unmask_controls, unmask, [alpha, gamma], api_visibility="private", queue=False)
    inputs = [prompt, mode, max_bytes, temperature, top_p, seed, stop, unmask, alpha, gamma, eta, block]

    def run(prompt, mode, max_bytes, temperature, top_p, seed, stop, unmask, alpha, gamma, eta, block):
        yield from generate_stream(wb, prompt, mode, max_bytes, temperature, top_p, seed, stop, unmask, alpha,
                                   gamma, eta, block)

    running = go_btn.click(run, inputs, [output, counters, status, steps], api_name="generate",
                           concurrency_limit=CONCURRENCY, show_progress="minimal")
    # Stop cancels the running generation (its generator is closed: decoding ends at once); what was
    # already shown stays, and the status says it was stopped.
    stop_btn.click(lambda: STOPPED, None, status, api_name="stop", cancels=[running])


def _sampling_controls(default_bytes: int):
    """Max bytes, temperature, top-p and seed controls (shared by Generate and Compare)."""
    return (gr.Slider(*GEN_BYTES_RANGE, value=default_bytes, step=1, label="Max new bytes"),
            gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature", info="0 = greedy"),
            gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p"),
            gr.Number(0, precision=0, label="Seed"))


def _compare_tab(wb: Workbench) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox("def add(a, b):", label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS,
                                elem_id="cmp-prompt")
            modes = gr.CheckboxGroup([m for m in MODES if m != "blt"], value=["blt-s8", "blt-d4"],
                                     label="Modes to compare with blt",
                                     info="1 to 3 modes; blt always runs as the reference")
            go_btn = gr.Button("Compare", variant="primary", elem_id="cmp-go")
        with gr.Column(scale=1):
            max_bytes, temperature, top_p, seed = _sampling_controls(32)
    summary = gr.Markdown()
    table = gr.Dataframe(headers=COMPARE_HEADERS, label="Side by side", interactive=False, wrap=True)
    plot = gr.Plot(label="Bandwidth")
    go_btn.click(lambda *a: compare_view(wb, *a), [prompt, modes, max_bytes, temperature, top_p, seed],
                 [table, plot, summary], api_name="compare", concurrency_limit=CONCURRENCY)


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
            with gr.Tab("Compare"):
                _compare_tab(wb)
            with gr.Tab("Model card"):
                _model_card_tab(wb)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    demo.workbench = wb  # for tests and notebooks
    return demo


# ---------------------------------------------------------------------------------------
# 3. Command line
# ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python apps/workbench.py", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHIPPED), help=f"model directory, bltlab's or a local transformers "
                    f"BltForCausalLM one (blt and blt-s* only) (default: {SHIPPED})")
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
    demo.launch(server_name=args.host, server_port=args.port)  # queued in build_demo; never shared


if __name__ == "__main__":
    main()
