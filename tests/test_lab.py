"""bltlab.lab.setup, the notebooks' first cell: seeds, threads, and the renderer that stores figures."""
from __future__ import annotations

import shutil
import sys

import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from bltlab import lab


@pytest.fixture
def restore():
    renderer, threads = pio.renderers.default, torch.get_num_threads()
    yield
    pio.renderers.default = renderer
    torch.set_num_threads(threads)


def test_setup_seeds_and_keeps_figures_as_json(restore, monkeypatch):
    monkeypatch.delenv(lab.PNG_ENV, raising=False)
    lab.setup(seed=3)
    assert pio.renderers.default == "plotly_mimetype"
    first = torch.rand(4)
    lab.setup(seed=3)
    assert torch.equal(first, torch.rand(4)) and torch.get_num_threads() == 1


def test_png_without_kaleido_is_one_clear_error(restore, monkeypatch):
    monkeypatch.setenv(lab.PNG_ENV, "1")
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido now raises ImportError
    with pytest.raises(RuntimeError, match="kaleido"):
        lab.setup()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chrome or Chromium to draw the PNG with")
def test_png_renderer_stores_a_picture_beside_the_json(restore, monkeypatch):
    kaleido = pytest.importorskip("kaleido")
    monkeypatch.setenv(lab.PNG_ENV, "1")
    try:
        lab.setup()
        assert pio.renderers.default == "plotly_mimetype+png"
        bundle = pio.renderers._build_mime_bundle(go.Figure(go.Bar(x=["a", "b"], y=[1, 2])).to_dict())
    finally:
        kaleido.stop_sync_server(silence_warnings=True)
    assert bundle["image/png"] and "application/vnd.plotly.v1+json" in bundle
