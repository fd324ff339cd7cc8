"""The workbench app (bltlab.app): its pure functions, its command line (`python -m bltlab app`), then the
running server through gradio_client."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
go = pytest.importorskip("plotly.graph_objects")

from bltlab import app as wbm  # noqa: E402
from bltlab import cli  # noqa: E402
from bltlab.decode import MODES, generate  # noqa: E402
from bltlab.patching import RULES, mean_patch_length  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas deprecations inside gradio

TEXT = "def f(x):\n    return x + 1  # café 😀\n"


@pytest.fixture(scope="module")
def wb(tiny_dir):
    return wbm.load_workbench(tiny_dir, "cpu")


# ---- pure functions -------------------------------------------------------------------
def test_patching_view_is_consistent_for_every_rule(wb):
    data = TEXT.encode()
    for rule in RULES:
        cfg = wbm.make_patch_config(wb, rule, 0.5, 4, 3)
        pa = wbm.analyse_patches(wb, data, cfg)
        assert sum(pa.lengths) == len(data) and pa.starts[0] == 0
        assert all(1 <= n <= 4 for n in pa.lengths)  # max patch length respected
        assert [e for _, e in pa.spans[:-1]] == pa.starts[1:]  # contiguous, in order
        assert len(pa.entropy) == len(data)
        assert set(pa.forced) <= set(pa.starts)
        if rule == "fixed":
            assert pa.lengths[:-1] == [3] * (len(pa.lengths) - 1)
    fig, segments, summary = wbm.patching_view(wb, TEXT, "global", 0.5, 4, 3)
    pa = wbm.analyse_patches(wb, data, wbm.make_patch_config(wb, "global", 0.5, 4, 3))
    assert isinstance(fig, go.Figure)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 1 and len(bars[0].y) == len(data)
    assert len(segments) == len(pa.spans) and {lab for _, lab in segments} <= {"A", "B"}
    assert f"**{len(pa.spans)} patches** over **{len(data)} bytes**" in summary
    assert f"{pa.mean_length:.2f}" in summary
    # the library's mean (BOS excluded) agrees with the spans shown
    ids = torch.tensor([[1] + [b + 4 for b in data]])
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[0, 0] = True
    starts[0, [s + 1 for s in pa.starts]] = True
    assert abs(mean_patch_length(starts) - pa.mean_length) < 1e-9
    # partial UTF-8 characters are shown as escapes, whole ones as text
    ascii_only = "".join(t for t, _ in segments)
    assert ascii_only.startswith("def f(x):")


def test_patching_errors_name_the_limit(wb):
    with pytest.raises(gr.Error, match="empty"):
        wbm.patching_view(wb, "", "global", 1.0, 8, 4)
    limit = wb.context_bytes
    with pytest.raises(gr.Error, match=str(limit)):
        wbm.patching_view(wb, "é" * (limit // 2 + 1), "global", 1.0, 8, 4)
    fig, segments, _ = wbm.patching_view(wb, "a" * limit, "space", 1.0, 0, 4)  # exactly the limit is fine
    assert sum(len(t) for t, _ in segments) == limit
    # lone surrogates (odd pastes) do not crash
    wbm.patching_view(wb, "x\ud800y", "global", 1.0, 8, 4)


def test_byte_labels_explain_multibyte_characters():
    labels = wbm.byte_labels("a é".encode() + b"\xff")
    assert labels[0] == "'a'" and "space" in labels[1]
    assert "byte 1/2 of 'é'" in labels[2] and "byte 2/2" in labels[3]
    assert "not valid UTF-8" in labels[4]


GEN = dict(unmask="confidence α", alpha=0.9, gamma=1.0, eta=1.0, block=8, fallback=False)


def _gen(wb, prompt, mode, n, stop="", **kw):
    k = {**GEN, **kw}
    return wbm.generate_once(wb, prompt, mode, n, 0.0, 1.0, 0, stop, k["unmask"], k["alpha"], k["gamma"],
                             k["eta"], k["block"])


STATUS_NUMBERS = re.compile(r"(?P<bytes>\d+) bytes in (?P<seconds>[\d.]+) s \((?P<bytes_per_s>[\d.]+|–) bytes/s\) on "
                            r"[^\n]*\s+n_dec (?P<n_dec>\d+) · n_enc (?P<n_enc>\d+) · n_ent (?P<n_ent>\d+) · "
                            r"GB_paper (?P<GB_paper>[\d.e+-]+) · GB_full (?P<GB_full>[\d.e+-]+) "
                            r"\((?P<GB_full_is>[^)]+\)?)\)")  # "(final)" or "(lower bound (running))"


def counters_of(status: str) -> dict:
    """The raw numbers of the Generate status (markdown or the page's text)."""
    m = STATUS_NUMBERS.search(status)
    assert m, status
    d = m.groupdict()
    out = {k: int(d[k]) for k in ("bytes", "n_dec", "n_enc", "n_ent")}
    out |= {k: float(d[k]) for k in ("seconds", "GB_paper", "GB_full")}
    return out | {"bytes_per_s": None if d["bytes_per_s"] == "–" else float(d["bytes_per_s"]),
                  "GB_full_is": d["GB_full_is"]}


def bars(fig) -> dict:
    """The cost figure's bars: {(who, category): (per byte, total)}, who = "mode" (this run) or "blt"
    (derived); `fig` a go.Figure or what the API returns for a gr.Plot."""
    data = fig.data if isinstance(fig, go.Figure) else json.loads(fig["plot"])["data"]
    out = {}
    for t in data:
        who = "blt" if t["name"].startswith("blt for these bytes") else "mode"
        for cat, x, total in zip(t["y"], t["x"], t["customdata"]):
            out[who, cat] = (x, total)
    return out


CATEGORIES = ("decoder", "encoder+global", "paper formula", "full formula")


def test_generate_budget_counters_and_errors(wb):
    text, fig, status, steps = _gen(wb, "ab\ud800", MODES[0], 3)
    counters = counters_of(status)
    assert len(text.encode("utf-8", "surrogatepass")) <= 3 * 3  # at most 3 bytes, each maybe U+FFFD
    assert 1 <= counters["bytes"] <= 3
    assert counters["bytes_per_s"] > 0 and counters["seconds"] > 0
    assert counters["n_dec"] >= 1 and counters["GB_full"] > counters["GB_paper"] > 0
    assert counters["GB_full_is"] == "final" and "stopped" in status and "cpu" in status
    assert "Patches" in steps
    # the picture: this mode and blt, per byte, the totals behind each bar; it agrees with the status
    assert isinstance(fig, go.Figure) and "final" in fig.layout.title.text
    b = bars(fig)
    assert set(b) == {(who, cat) for who in ("mode", "blt") for cat in CATEGORIES}
    assert b["mode", "decoder"][1] == counters["n_dec"] and b["mode", "encoder+global"][1] == counters["n_enc"]
    assert b["mode", "paper formula"][1] == pytest.approx(counters["GB_paper"], abs=1e-6)
    assert b["mode", "decoder"][0] == pytest.approx(counters["n_dec"] / counters["bytes"])
    assert fig.layout.xaxis.title.text == "passes / generated byte"
    assert fig.layout.xaxis2.title.text == "GB / generated byte"
    text, fig, status, _ = _gen(wb, "", "blt", 2)  # empty prompt: starts from BOS
    assert counters_of(status)["bytes"] >= 1
    with pytest.raises(gr.Error, match="context"):
        _gen(wb, "x" * wb.context_bytes, MODES[0], 1)
    with pytest.raises(gr.Error, match="mode"):
        _gen(wb, "x", "no-such-mode", 1)
    # out-of-range knobs: the library's own ValueError text
    with pytest.raises(gr.Error, match=r"alpha must be in \[0, 2\]"):
        _gen(wb, "x", "blt-d4", 4, alpha=3.0)
    with pytest.raises(gr.Error, match=r"eta must be in \[0, 10\]"):
        _gen(wb, "x", "blt-h", 4, eta=11.0)
    with pytest.raises(gr.Error, match=r"temperature must be in"):
        wbm.generate_once(wb, "x", "blt", 4, 20.0, 1.0, 0, "", *GEN.values())
    with pytest.raises(gr.Error, match="gamma must be in"):
        _gen(wb, "x", "blt-d4", 4, unmask="entropy bound γ", gamma=-1.0)


def decode_state_pools(model):
    from bltlab.decode import state

    return state._STATES.get(model, {}).values()


def test_streaming_yields_partial_output_and_stop_cancels(wb):
    updates = list(wbm.generate_stream(wb, "ab", "blt", 64, 0.0, 1.0, 0, "", *GEN.values(), interval=0.0))
    assert len(updates) >= 3  # several partial updates, then the final one
    texts = [u[0] for u in updates]
    assert texts[-1] and all(texts[-1].startswith(t.rstrip("\ufffd")) for t in texts[:-1])
    assert counters_of(updates[0][2])["GB_full_is"].startswith("lower bound") and "running" in updates[0][2]
    # the picture updates as bytes arrive, and says while running that its counts are so far
    assert "running" in updates[0][1].layout.title.text and "lower bound" in updates[0][1].layout.title.text
    n = [counters_of(u[2])["bytes"] for u in updates]
    assert n == sorted(n) and n[-1] == 64 and len(set(n)) >= 3
    assert [bars(u[1])["blt", "decoder"][1] for u in updates] == [max(k, 1) for k in n]  # one per byte
    assert not any("until its rule reruns" in u[1].layout.title.text for u in updates)  # blt's patches: exact
    # Stop: Gradio closes the generator; the decoding ends there and its state is free again
    stream = wbm.generate_stream(wb, "ab", "blt", 200, 0.0, 1.0, 0, "", *GEN.values(), interval=0.0)
    first = next(stream)
    stream.close()
    assert counters_of(first[2])["bytes"] < 200
    assert not any(s.busy for pool in decode_state_pools(wb.model) for s in pool)


def _trace(wb, mode, n=12, **kw):
    return wbm.run_generation(wb, wbm.gen_knobs("a<b>", mode, n, 0.0, 1.0, 0, "", **kw))


def measured(g) -> dict:
    """The counters blt_cost derives, as a real run reports them."""
    return {k: g.counters[k] for k in wbm.PASS_KEYS}


def derived(wb, g, stop: bytes = b"") -> dict:
    made = g.output + (stop if g.stop_reason == "stop" else b"")
    c = wbm.blt_cost(wb, g.mode, g.trace, g.prompt, made, eos=g.stop_reason == "eos")
    assert c.pop("kv_read") == 0  # not derived
    return c


def test_blt_cost_equals_a_real_blt_run(wb):
    """What blt spends for a mode's bytes, derived from that mode's trace, is what blt spends
    when it is run: for blt itself, for greedy blt-s16 (same bytes), with a stop string too."""
    for prompt, n, stop in (("def add(a, b):", 24, b""), ("", 6, b""), ("x", 1, b"")):
        ref = wbm.run_generation(wb, wbm.gen_knobs(prompt, "blt", n, 0.0, 1.0, 0, ""))
        assert derived(wb, ref) == measured(ref)
        g = wbm.run_generation(wb, wbm.gen_knobs(prompt, "blt-s16", n, 0.0, 1.0, 0, ""))
        assert g.output == ref.output and derived(wb, g) == measured(ref)
    stop = wbm.run_generation(wb, wbm.gen_knobs("q", "blt", 12, 0.0, 1.0, 0, "")).output[6:8]
    ref = wbm.run_generation(wb, wbm.gen_knobs("q", "blt", 12, 0.0, 1.0, 0, stop))
    assert ref.stop_reason == "stop"
    g = wbm.run_generation(wb, wbm.gen_knobs("q", "blt-s16", 12, 0.0, 1.0, 0, stop))
    assert g.output == ref.output and derived(wb, g, stop) == derived(wb, ref, stop) == measured(ref)


def test_cost_figure_sets_each_mode_beside_blt(wb):
    # mode blt: the derived blt bars are the measured ones, but for the KV-cache reads of the full formula
    _, fig, status, _ = _gen(wb, "def add(a, b):", "blt", 24)
    b, c = bars(fig), counters_of(status)
    for cat in ("decoder", "encoder+global", "paper formula"):
        assert b["blt", cat] == pytest.approx(b["mode", cat])
    assert b["blt", "decoder"] == (1.0, 24) and b["blt", "encoder+global"][1] == c["n_enc"]
    assert b["blt", "full formula"][1] < b["mode", "full formula"][1]  # blt's KV-cache reads are not derived
    assert "no KV-cache reads" in fig.layout.title.text
    # blt-s16, greedy: the same bytes; blt's bars are blt's own run, one decoder pass per byte; the
    # self-speculation runs encoder+global far less often
    _, fig16, status16, _ = _gen(wb, "def add(a, b):", "blt-s16", 24)
    b16 = bars(fig16)
    for cat in CATEGORIES:
        assert b16["blt", cat] == pytest.approx(b["blt", cat])
    assert b16["blt", "decoder"][0] == 1.0
    assert b16["mode", "encoder+global"][0] < b16["blt", "encoder+global"][0]
    assert b16["mode", "paper formula"][0] < b16["blt", "paper formula"][0]
    assert b16["mode", "decoder"][1] == counters_of(status16)["n_dec"]
    names = [t.name for t in fig16.data]
    assert names[0] == "blt-s16 (this run, measured)" and names[-1].replace("<br>", " ") == wbm.BLT_LABEL


def test_fallback_checkbox_decodes_left_to_right(wb):
    """The Generate tab's "Left to right, exact where unsure" box is the library's in_order and
    exact_first: every denoising pass of blt-d4 fills a run from the first masked slot (slot 0 exact)."""
    knobs = wbm.gen_knobs("a<b>", "blt-d4", 24, 0.0, 1.0, 0, "", "confidence α", 0.5, 1.0, 1.0, 8, True)
    assert knobs.in_order and knobs.exact_first
    g = wbm.run_generation(wb, knobs)
    blocks = [e for e in g.trace if e["type"] == "block"]
    assert blocks and g.output == generate(wb.model, "a<b>", "blt-d4", max_bytes=24, alpha=0.5, in_order=True,
                                           exact_first=True).output
    for e in blocks:
        done = 1
        for step in e["steps"]:
            assert step["unmasked"] == list(range(done, done + len(step["unmasked"])))
            done += len(step["unmasked"])


def test_blt_cost_is_blts_own_patching_for_block_modes(monkeypatch):
    """Diffusion blocks force patch starts, so a block mode's trace does not hold blt's patches:
    blt_cost runs blt's patching rule at the end. On the shipped model (whose patches are not every
    byte, as the random tiny model's are) greedy blt-d4, by the default rule, makes blt's bytes here;
    derived = blt's run. (blt-dv4 closes no patch for its drafts: its trace holds blt's patches.)"""
    from bltlab.checkpoint import SHIPPED

    assert "blt-d4" in wbm.BLOCK_MODES and "blt-dv4" not in wbm.BLOCK_MODES
    shipped = wbm.load_workbench(SHIPPED, "cpu")
    ref = wbm.run_generation(shipped, wbm.gen_knobs("def add(a, b):", "blt", 24, 0.0, 1.0, 0, ""))
    g = wbm.run_generation(shipped, wbm.gen_knobs("def add(a, b):", "blt-d4", 24, 0.0, 1.0, 0, ""))
    assert g.output == ref.output and derived(shipped, g) == measured(ref)
    # while streaming, blt's rule reruns every RULE_INTERVAL; bytes newer than its last run take the
    # run's own starts, and the picture says so
    knobs = {**GEN, "alpha": 0.99, "fallback": True}  # the default rule

    def stream(every: float) -> list[tuple]:
        monkeypatch.setattr(wbm, "RULE_INTERVAL", every)
        return list(wbm.generate_stream(shipped, "def add(a, b):", "blt-d4", 24, 0.0, 1.0, 0, "", *knobs.values(),
                                        interval=0.0))

    def provisional(u) -> bool:
        return "until its rule reruns" in u[1].layout.title.text

    once = stream(1e9)  # the rule runs at the first update only (on the prompt: nothing is newer yet)
    assert once[0][0] == "" and not provisional(once[0])
    assert all(provisional(u) for u in once[1:-1] if u[0]) and not provisional(once[-1])
    assert bars(once[-1][1])["blt", "encoder+global"][1] == measured(ref)["n_enc"]
    for u in stream(0.0):  # the rule at every update: blt's live bars are exact for the bytes so far
        assert not provisional(u) and u[0].isascii()  # ASCII here: the text is the bytes
        want = wbm.blt_cost(shipped, "blt-d4", g.trace, g.prompt, u[0].encode())
        assert bars(u[1])["blt", "encoder+global"][1] == want["n_enc"]


def test_step_pictures_from_real_traces(wb):
    g = _trace(wb, "blt")
    html_ = wbm.steps_html(g.trace, g.prompt, g.output)
    assert "Patches" in html_ and "Diffusion blocks" not in html_ and "Speculative drafts" not in html_
    assert "&lt;" in html_ and "a<b>" not in html_  # the prompt's text is escaped
    pos_byte, starts, _ = wbm.trace_layout(g.trace, g.prompt, g.output)
    assert bytes(pos_byte[p] for p in sorted(pos_byte)) == g.prompt + g.output
    assert html_.count('class="bl-b"') == len(g.prompt) + len(g.output)
    assert g.output.startswith(wbm.emitted_bytes(g.trace))  # live view: all but maybe the last byte
    # diffusion: one grid per block, one row per denoising step, every slot filled by the end
    g = _trace(wb, "blt-d4")
    blocks = [e for e in g.trace if e["type"] == "block"]
    html_ = wbm.steps_html(g.trace, g.prompt)
    assert html_.count('class="bl-grid"') == len(blocks) and "Diffusion blocks" in html_
    grid = wbm.block_grid_html(blocks[0])
    assert grid.count("<tr><th>step") == len(blocks[0]["steps"])
    last_row = grid.rsplit("<tr>", 1)[1]
    assert "bl-mask" not in last_row  # fully denoised after the last step
    assert all(e["pos"] in wbm.trace_layout(g.trace, g.prompt)[1] for e in blocks)  # blocks start patches
    # speculation: accepted green, rejected red, correction blue
    g = _trace(wb, "blt-dv4")
    drafts = [e for e in g.trace if e["type"] == "verify"]
    html_ = wbm.steps_html(g.trace, g.prompt)
    assert "Speculative drafts" in html_ and html_.count('class="bl-row"') == min(len(drafts), wbm.STEP_LIMIT)
    rej = next(e for e in drafts if e["rejected"] is not None)
    row = wbm.verify_html(rej)
    assert row.count('title="accepted"') == rej["accepted"] and 'title="rejected"' in row and "correction" in row
    # hybrid: switch points marked
    g = _trace(wb, "blt-h", eta=10.0, block=4)
    assert any(e["type"] == "switch" for e in g.trace)
    assert "bl-switch" in wbm.steps_html(g.trace, g.prompt)
    g = _trace(wb, "blt-h", eta=0.0)  # autoregressive steps: their patch starts are drawn too
    ar = [p for e in g.trace if e["type"] == "ar" for p in e["patch_starts"] or []]
    assert ar and set(ar) <= wbm.trace_layout(g.trace, g.prompt)[1]
    # byte glyphs escape HTML and show control bytes as escapes
    assert wbm.byte_glyph(ord("<")) == "&lt;" and wbm.byte_glyph(0) == "\\x00" and wbm.byte_glyph(10) == "⏎"
    assert wbm.byte_glyph(None) == "⟨EOS⟩"


def test_compare_blt_s8_is_identical_on_greedy(wb):
    rows = wbm.compare_runs(wb, "def ", ["blt-s8", "blt-d4"], 16, 0.0, 1.0, 0)
    assert [r["mode"] for r in rows] == ["blt", "blt-s8", "blt-d4"]
    assert rows[0]["identical_to_blt"] and rows[1]["identical_to_blt"] is True
    assert all(r["GB_full"] > 0 and r["GB_paper"] > 0 for r in rows)
    for r in rows:  # roofline: bytes/s that reading GB_full at the measured copy bandwidth allows
        assert r["roofline_bytes_per_s"] == pytest.approx(wb.copy_gbps * r["bytes"] / r["GB_full"], rel=1e-3, abs=0.1)
        assert r["pct_of_roofline"] == pytest.approx(100 * r["bytes_per_s"] / r["roofline_bytes_per_s"], rel=1e-2)
    table, fig, summary, outputs = wbm.compare_view(wb, "def ", ["blt-s8"], 8, 0.0, 1.0, 0)
    assert [r[0] for r in table] == ["blt", "blt-s8"] and "`blt-s8`" in summary
    assert "output" not in wbm.COMPARE_HEADERS and all(len(r) == len(wbm.COMPARE_HEADERS) for r in table)
    assert [t.name for t in fig.data] and len(fig.data) == 2 and list(fig.data[0].x) == ["blt", "blt-s8"]
    assert outputs.count('class="bl-out"') == 2 and "✓ identical to blt" in outputs
    with pytest.raises(gr.Error, match="1 to 3 modes"):
        wbm.compare_runs(wb, "x", [], 4, 0.0, 1.0, 0)
    with pytest.raises(gr.Error, match="1 to 3 modes"):
        wbm.compare_runs(wb, "x", ["blt-s8", "blt-s16", "blt-d4", "blt-d8"], 4, 0.0, 1.0, 0)
    with pytest.raises(gr.Error, match="Unknown decoding mode"):
        wbm.compare_runs(wb, "x", ["nope"], 4, 0.0, 1.0, 0)


def test_compare_shows_every_whole_output(wb):
    rows = wbm.compare_runs(wb, "x", ["blt-s8", "blt-d4"], 120, 0.0, 1.0, 0)
    _, _, _, outputs = wbm.compare_view(wb, "x", ["blt-s8", "blt-d4"], 120, 0.0, 1.0, 0)
    sections = outputs.split('<div class="bl-out">')[1:]
    assert [re.match(r"<div><b>([^<]+)</b>", sec).group(1) for sec in sections] == ["blt", "blt-s8", "blt-d4"]
    for r, sec in zip(rows, sections):
        assert len(r["output_bytes"]) == 120  # long outputs: no cut
        assert f"<pre>{wbm.readable_html(r['output_bytes'])}</pre>" in sec
        assert ("✓ identical to blt" in sec) == (r["mode"] != "blt" and r["identical_to_blt"])
        assert ("✗ differs from blt" in sec) == (not r["identical_to_blt"])
    # every byte readable: text escaped, invalid UTF-8 and control bytes as marked escapes
    shown = wbm.readable_html("a<b>&é\n\t".encode() + b"\x00\xff\xc3")
    assert shown.startswith("a&lt;b&gt;&amp;é\n\t") and "<b>" not in shown
    assert shown.count('class="bl-esc"') == 3 and "\\x00" in shown and "\\xff" in shown and "\\xc3" in shown
    assert wbm.readable_html(b"") == "" and "(no bytes)" in wbm.compare_outputs_html(
        [{"mode": "blt", "identical_to_blt": True, "stop_reason": "eos", "output_bytes": b""}])


def test_linked_view_runs_every_mode_and_follows_the_slider(wb):
    fig, column, slider, state = wbm.linked_run(wb, "ab")
    runs, view = state
    assert set(runs) == set(wbm.linked.MODES) and slider["maximum"] == view["N"] and 1 <= slider["value"] <= view["N"]
    assert isinstance(fig, go.Figure) and column.startswith(f"position {slider['value']}: byte ")
    fig2, column2 = wbm.linked_position(wb, state, 1)
    assert column2.startswith("position 1: byte a") and fig2.layout.shapes[-1].x0 == 0.5
    assert wbm.linked_position(wb, state, 10_000)[1].startswith(f"position {view['N']}:")  # clamped
    assert wbm.linked_position(wb, None, 3) == (None, "Run a prompt first.")
    with pytest.raises(gr.Error, match="context"):
        wbm.linked_run(wb, "x" * 300)


def test_model_card(wb):
    card = wbm.model_card(wb)
    total = sum(wb.model.param_counts().values())
    assert f"{total:,}" in card and "Reproducing the shipped model" in card
    assert f"{wb.cfg.patch.threshold:.4f}" in card and "random tiny model for tests" in card


def test_command_line_defaults_and_clear_failures(tmp_path, monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):  # cmd_app hands the address to Gradio in os.environ:
        monkeypatch.setenv(name, "")  # restored after the test
    args = cli.build_parser().parse_args(["app"])
    assert args.host is None and args.port is None and args.device == "auto"  # resolved by server_address
    assert Path(args.model) == wbm.SHIPPED and args.fn is cli.cmd_app
    with pytest.raises(SystemExit) as e:
        cli.main(["app", "--model", str(tmp_path / "nope"), "--device", "cpu"])
    assert "model directory not found" in str(e.value.code)
    assert (os.environ["GRADIO_SERVER_NAME"], os.environ["GRADIO_SERVER_PORT"]) == ("127.0.0.1", "7860")
    src = Path(wbm.__file__).read_text() + Path(cli.__file__).read_text()
    assert "share=True" not in src and src.count(".launch(") == 1 and "share=False" in src
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            wbm.resolve_device("cuda")
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            cli.main(["app", "--device", "cuda"])


def test_address_flags_then_environment_then_default():
    """--host/--port win; else GRADIO_SERVER_NAME/GRADIO_SERVER_PORT (empty = unset); else 127.0.0.1:7860."""
    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123"}
    assert cli.server_address(None, None, {}) == ("127.0.0.1", 7860)
    assert cli.server_address(None, None, env) == ("0.0.0.0", 8123)
    assert cli.server_address("127.0.0.1", 9000, env) == ("127.0.0.1", 9000)
    assert cli.server_address("10.0.0.5", None, env) == ("10.0.0.5", 8123)
    assert cli.server_address(None, 9000, {"GRADIO_SERVER_PORT": "oops"}) == ("127.0.0.1", 9000)  # the flag wins
    assert cli.server_address(None, None, {"GRADIO_SERVER_NAME": " ", "GRADIO_SERVER_PORT": ""}) == ("127.0.0.1", 7860)
    for bad in ("abc", "0", "65536", "-1", "80.5"):
        with pytest.raises(ValueError, match=f"GRADIO_SERVER_PORT='{re.escape(bad)}' is not a port number"):
            cli.server_address(None, None, {"GRADIO_SERVER_PORT": bad})
    args = cli.build_parser().parse_args(["app", "--host", "0.0.0.0", "--port", "8001"])
    assert (args.host, args.port) == ("0.0.0.0", 8001)


def _bltlab(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bltlab", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_app_command_help_and_bad_ports():
    out = _bltlab("app", "--help").stdout
    for flag in ("--model", "--host", "--port", "--device", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "auto",
                 "127.0.0.1", "7860"):
        assert flag in out, flag
    assert "app" in _bltlab("--help").stdout
    r = _bltlab("app", env={"GRADIO_SERVER_PORT": "abc"})  # refused before Gradio (which would crash on it)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: GRADIO_SERVER_PORT='abc' is not a port number: give an integer from 1 to 65535"
    r = _bltlab("app", "--port", "http")
    assert r.returncode == 2 and "argument --port: --port='http' is not a port number" in r.stderr
    assert "Traceback" not in r.stderr


def test_app_command_serves_on_the_environments_port(tiny_dir, tmp_path):
    """`python -m bltlab app` serves on GRADIO_SERVER_PORT, on 127.0.0.1 (GRADIO_SERVER_NAME unset),
    and is not shared even with GRADIO_SHARE=True."""
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SHARE": "True", "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bltlab", "app", "--model", str(tiny_dir), "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline, page = time.time() + 120, None
        # Gradio prints whether it shares after the local URL: wait for that line as well as for the page
        while page is None or not re.search("public link|share link", log.read_text()):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    page = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert page["title"] == "bltlab workbench"
        text = log.read_text()
        assert f"Running on local URL:  http://127.0.0.1:{port}" in text
        assert "To create a public link, set `share=True`" in text and "share link" not in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- the running app ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_dir):
    demo = wbm.build_demo(tiny_dir, "cpu")
    wbm.launch(demo, "127.0.0.1", _free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(demo.local_url, verbose=False)
        yield demo, client
    finally:
        demo.close()


def test_app_is_local_only(app):
    demo, _ = app
    assert demo.server_name == "127.0.0.1"
    assert demo.local_url.startswith("http://127.0.0.1:")
    assert not demo.share and demo.share_url is None
    # queued, with a concurrency limit on the generating events
    assert demo._queue.max_size == wbm.QUEUE_SIZE
    limits = {f.api_name: f.concurrency_limit for f in demo.fns.values()}
    assert limits["generate"] == limits["compare"] == wbm.CONCURRENCY


GEN_ARGS = ("confidence α", 0.9, 1.0, 1.0, 8, False)


def test_app_endpoints_and_stop_button(app):
    demo, client = app
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/patching", "/generate", "/stop", "/compare", "/linked", "/linked_position", "/model_card"} <= names
    # Stop really stops the work: the browser cancels the running generation (Gradio's `cancels`,
    # which a Python client does with job.cancel()); the decoding ends and frees its state
    from bltlab.decode import state

    job = client.submit("ab", "blt", 250, 0.0, 1.0, 0, "", *GEN_ARGS, api_name="/generate")
    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline and not job.done():
        time.sleep(0.05)
    assert job.cancel()
    deadline = time.time() + 30
    while any(s.busy for per in list(state._STATES.values()) for pool in per.values() for s in pool):
        assert time.time() < deadline, "the cancelled generation still holds its decoding state"
        time.sleep(0.05)
    assert counters_of(job.outputs()[-1][2])["bytes"] < 250
    assert "cancelled" in client.predict(api_name="/stop")  # what the Stop button shows


def test_app_patching(app):
    _, client = app
    plot, segments, summary = client.predict(TEXT, "global", 0.5, 4, 3, api_name="/patching")
    assert plot["type"] == "plotly" and '"bar"' in plot["plot"]
    assert len(segments) >= len(TEXT.encode()) // 4
    assert "patches" in summary
    with pytest.raises(Exception, match="empty"):
        client.predict("", "global", 0.5, 4, 3, api_name="/patching")


def test_app_generate_compare_and_model_card(app):
    _, client = app
    text, plot, status, steps = client.predict("ab", "blt-d4", 4, 0.0, 1.0, 0, "", *GEN_ARGS,
                                               api_name="/generate")
    counters = counters_of(status)
    assert isinstance(text, str) and 1 <= counters["bytes"] <= 4 and counters["n_dec"] >= 1
    assert "stopped" in status and "Diffusion blocks" in steps and counters["GB_paper"] > 0
    assert plot["type"] == "plotly"
    b = bars(plot)
    assert b["mode", "decoder"][1] == counters["n_dec"] and b["blt", "decoder"][1] == counters["bytes"]
    with pytest.raises(Exception, match="context"):
        client.predict("x" * 300, MODES[0], 8, 0.0, 1.0, 0, "", *GEN_ARGS, api_name="/generate")
    table, plot, summary, outputs = client.predict("ab", ["blt-s8"], 8, 0.0, 1.0, 0, api_name="/compare")
    same = table["headers"].index("identical_to_blt")
    assert [r[0] for r in table["data"]] == ["blt", "blt-s8"] and table["data"][1][same] is True
    assert plot["type"] == "plotly" and "`blt-s8`" in summary
    assert "<b>blt-s8</b>" in outputs and "✓ identical to blt" in outputs
    plot, column, position = client.predict("ab", api_name="/linked")
    assert plot["type"] == "plotly" and column.startswith("position ") and position["value"] >= 1  # an update
    card = client.predict(api_name="/model_card")
    assert "Reproducing the shipped model" in card


def test_app_load_20_concurrent_generations(app):
    demo, _ = app
    n, t0 = 20, time.time()

    def one(i):
        client = gradio_client.Client(demo.local_url, verbose=False)
        return client.predict(f"p{i}", "blt", 4, 0.0, 1.0, 0, "", *GEN_ARGS, api_name="/generate")

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n), timeout=120))
    assert len(results) == n  # none lost
    assert all("stopped: **max_bytes**" in r[2] and counters_of(r[2])["bytes"] == 4 for r in results)
    assert time.time() - t0 < 120


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _wait_status(page, mode: str) -> str:
    page.wait_for_function("m => { const s = document.querySelector('#gen-status');"
                           " return s && s.innerText.includes('stopped:') && s.innerText.includes(m); }",
                           arg=mode, timeout=90_000)
    return page.locator("#gen-status").inner_text()


def test_browser_generates_in_blt_and_diffusion(app, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium not found: install Debian's chromium (apt-get install chromium) "
                    "to run the real-browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    demo, _ = app
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(demo.local_url, timeout=60_000)
            page.get_by_role("tab", name="Generate").click()
            page.locator("#gen-prompt textarea").fill("def add(a, b):")
            for mode in ("blt", "blt-d4"):
                page.locator("#gen-mode").get_by_text(mode, exact=True).click()
                page.locator("#gen-go").click()
                status = _wait_status(page, mode)
                assert "stopped:" in status and mode in status
                assert page.locator("#gen-output textarea").input_value() != ""
                assert counters_of(status)["n_dec"] >= 1 and "bytes/s" in status  # the raw numbers, on the page
                # the cost picture: a plotly figure of this mode beside blt, drawn by the browser
                page.wait_for_function("m => { const s = document.querySelector('#gen-counters .gtitle');"
                                       " return s && s.textContent.includes(m + ' vs blt')"
                                       " && s.textContent.includes('final'); }", arg=mode, timeout=30_000)
                picture = page.locator("#gen-counters").text_content()
                assert "passes / generated byte" in picture and "GB / generated byte" in picture
                assert "blt for these bytes" in picture and f"{mode} (this run, measured)" in picture
                assert page.locator("#gen-counters g.trace.bars").count() == 4
            assert "Diffusion blocks" in page.locator("#gen-steps").inner_text()
            # Compare: every mode's whole output below the table
            page.get_by_role("tab", name="Compare").click()
            page.locator("#cmp-go").click()
            page.wait_for_function("() => { const s = document.querySelector('#cmp-outputs');"
                                   " return s && s.innerText.includes('blt-d4'); }", timeout=90_000)
            shown = page.locator("#cmp-outputs").inner_text()
            assert "blt-s8" in shown and "reference" in shown and shown.count("stopped:") == 3
            shots = [tmp_path / "workbench.png"]
            if os.environ.get("BLTLAB_SCREENSHOT_DIR"):
                shots.append(Path(os.environ["BLTLAB_SCREENSHOT_DIR"]) / "workbench.png")
            for shot in shots:
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_model_card_quotes_the_report_only_for_the_files_it_measured(tiny_dir, tmp_path):
    """The shipped model's report is package data beside its weights (the README's figures come
    from it); the card quotes a model directory's report.json only when its
    digests are those of the directory's weight files."""
    import shutil

    from bltlab.checkpoint import SHIPPED

    report = json.loads((SHIPPED / wbm.REPORT).read_text())
    quality = "\n".join(wbm.measured_quality(SHIPPED))
    tr = report["translation_fr"]
    assert f"| chrF / BLEU, greedy EN→FR ({tr['pairs']} pairs) | {tr['chrf']:.1f} / {tr['bleu']:.1f} |" in quality
    assert f"| bits/byte, code | {report['val_bpb']['code']:.3f} |" in quality
    assert wbm.measured_quality(tiny_dir) == []  # no report.json
    other = shutil.copytree(tiny_dir, tmp_path / "other")
    shutil.copy(SHIPPED / wbm.REPORT, other / wbm.REPORT)
    assert wbm.measured_quality(other) == []  # other weights: no borrowed figures
    (other / wbm.REPORT).write_text("[1, 2]")
    assert wbm.measured_quality(other) == []  # not a report: no card failure either
    shipped = shutil.copytree(SHIPPED, tmp_path / "shipped")
    assert "\n".join(wbm.measured_quality(shipped)) == quality  # any directory: the rule is the digests
    card = wbm.model_card(wbm.load_workbench(SHIPPED, "cpu"))
    assert "### Measured quality" in card and quality in card


def test_serves_transformers_layout_weights(tmp_path):
    """A transformers BltForCausalLM directory loads too; blt-s8 equals blt there, and the
    diffusion modes are refused with a message on the page."""
    import dataclasses

    from bltlab.config import get_config
    from bltlab.interop import save_hf
    from bltlab.model import BLT

    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, arch="hf", patch=dataclasses.replace(cfg.patch, max_patch=0))
    save_hf(BLT(cfg), tmp_path)
    hf_wb = wbm.load_workbench(tmp_path, "cpu")
    assert hf_wb.model.cfg.arch == "hf"
    assert _trace(hf_wb, "blt-s8").output == _trace(hf_wb, "blt").output
    # its prefill counts differently (a BOS-only prompt runs the global model too): blt_cost takes the
    # prefill from the trace, so what blt spends, derived, still matches a real run
    ref = _trace(hf_wb, "blt")
    assert derived(hf_wb, ref) == derived(hf_wb, _trace(hf_wb, "blt-s8")) == measured(ref)
    empty = wbm.run_generation(hf_wb, wbm.gen_knobs("", "blt", 6, 0.0, 1.0, 0, ""))
    assert derived(hf_wb, empty) == measured(empty)
    with pytest.raises(gr.Error, match="masked blocks"):
        _trace(hf_wb, "blt-d4")


def test_streamed_pictures_of_an_accepted_eos():
    """A verification that accepts a drafted EOS, a block and a hybrid step that end in one: the
    live bytes are those before it, and the step pictures draw EOS (no error, as a byte -2 gave)."""
    verify = {"type": "verify", "pos": 3, "draft": [104, 105], "eos": True, "accepted": 3, "rejected": None,
              "rejected_eos": False, "correction": None, "correction_eos": False, "patch_starts": []}
    assert wbm.emitted_bytes([verify]) == b"hi"
    assert "⟨EOS⟩" in wbm.verify_html(verify)
    block = {"type": "block", "pos": 4, "size": 2, "bytes": [104], "eos": True,
             "steps": [{"unmasked": [0, 1], "bytes": [104, None], "confidence": [0.9, 0.8], "entropy": [0.1, 0.2]}]}
    assert wbm.emitted_bytes([block]) == b"h" and "⟨EOS⟩" in wbm.block_grid_html(block)
    steps = [{"type": "ar", "byte": 104, "eos": False}, {"type": "ar", "byte": None, "eos": True}]
    assert wbm.emitted_bytes(steps) == b"h"
