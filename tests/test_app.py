"""The workbench app: its pure functions, then the running server through gradio_client."""
import socket
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `apps` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
go = pytest.importorskip("plotly.graph_objects")

from apps import workbench as wbm  # noqa: E402
from bltlab.decode import MODES  # noqa: E402
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


def test_generate_view_budget_counters_and_errors(wb):
    text, counters, status = wbm.generate_view(wb, "ab\ud800", MODES[0], 3, 0.0, 1.0, 0, "")
    assert len(text.encode("utf-8", "surrogatepass")) <= 3 * 3  # at most 3 bytes, each maybe U+FFFD
    assert 1 <= counters["bytes"] <= 3
    for k in ("n_dec", "n_enc", "n_ent", "bytes", "seconds", "bytes_per_s"):
        assert k in counters
    assert counters["n_dec"] >= 1 and "stopped" in status and "cpu" in status
    with pytest.raises(gr.Error, match="context"):
        wbm.generate_view(wb, "x" * wb.context_bytes, MODES[0], 1, 0.0, 1.0, 0, "")
    with pytest.raises(gr.Error, match="mode"):
        wbm.generate_view(wb, "x", "no-such-mode", 1, 0.0, 1.0, 0, "")


def test_model_card(wb):
    card = wbm.model_card(wb)
    total = sum(wb.model.param_counts().values())
    assert f"{total:,}" in card and "Reproducing the shipped model" in card
    assert f"{wb.cfg.patch.threshold:.4f}" in card and "random tiny model for tests" in card


def test_command_line_defaults_and_clear_failures(tmp_path, capsys):
    args = wbm.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.device == "cpu"
    assert Path(args.model) == wbm.SHIPPED
    with pytest.raises(SystemExit) as e:
        wbm.main(["--model", str(tmp_path / "nope")])
    assert "model directory not found" in str(e.value.code)
    src = Path(wbm.__file__).read_text()
    assert "share=True" not in src
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            wbm.resolve_device("cuda")


# ---- the running app ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_dir):
    demo = wbm.build_demo(tiny_dir, "cpu")
    demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=_free_port(),
                                                   prevent_thread_lock=True, quiet=True)
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


def test_app_endpoints_and_stop_button(app):
    demo, client = app
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/patching", "/generate", "/model_card"} <= names
    deps = demo.config["dependencies"]
    gen_id = next(d["id"] for d in deps if d.get("api_name") == "generate")
    assert any(gen_id in (d.get("cancels") or []) for d in deps)  # the Stop button cancels it


def test_app_patching(app):
    _, client = app
    plot, segments, summary = client.predict(TEXT, "global", 0.5, 4, 3, api_name="/patching")
    assert plot["type"] == "plotly" and '"bar"' in plot["plot"]
    assert len(segments) >= len(TEXT.encode()) // 4
    assert "patches" in summary
    with pytest.raises(Exception, match="empty"):
        client.predict("", "global", 0.5, 4, 3, api_name="/patching")


def test_app_generate_and_model_card(app):
    _, client = app
    text, counters, status = client.predict("ab", MODES[0], 2, 0.0, 1.0, 0, "", api_name="/generate")
    assert isinstance(text, str) and 1 <= counters["bytes"] <= 2 and counters["n_dec"] >= 1
    assert "stopped" in status
    with pytest.raises(Exception, match="context"):
        client.predict("x" * 300, MODES[0], 8, 0.0, 1.0, 0, "", api_name="/generate")
    card = client.predict(api_name="/model_card")
    assert "Reproducing the shipped model" in card
