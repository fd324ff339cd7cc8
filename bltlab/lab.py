"""What every notebook's first cell does, kept out of the lesson: seeds, threads, and how figures are stored.

Figures are shown with plotly's mimetype renderer: the figure's JSON, which JupyterLab draws as an
interactive plot and nbval compares exactly (no random div ids, no plotly.js in the file). GitHub and
nbviewer draw no plotly JSON, so `make notebooks` sets BLTLAB_FIGURE_PNG=1 and every figure is stored a
second time as a PNG in the same output: a picture for whoever reads the series without running it. nbval
skips image/png, so a run without the PNGs (CI, a student's own) still matches the stored outputs.
Drawing the PNGs needs the `kaleido` package (the project's dev extra) and a Chrome or Chromium browser.
"""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import plotly.io as pio
import torch

PNG_ENV = "BLTLAB_FIGURE_PNG"
PNG_WIDTH = 960  # pixels, about a notebook's width in JupyterLab (a figure's own layout.width wins)


def setup(seed: int = 0, threads: int = 1) -> None:
    """Seed Python, NumPy and torch; use `threads` torch threads; choose the plotly renderer.

    One thread gives the same float sums on every run, which the stored outputs rely on (nbval compares
    them exactly); more threads may split a sum differently from one run to the next.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    renderer = "plotly_mimetype"
    if os.environ.get(PNG_ENV) == "1":
        _start_png_server()
        pio.renderers["png"].width = PNG_WIDTH
        renderer += "+png"
    pio.renderers.default = renderer


def _start_png_server() -> None:
    """Keep one headless browser for the whole run (about 0.3 s a figure instead of 4 s)."""
    try:
        import kaleido
    except ImportError as err:
        raise RuntimeError(f"{PNG_ENV}=1 stores a PNG of each figure, which needs kaleido>=1: "
                           "pip install -e '.[dev]'") from err
    try:
        kaleido.start_sync_server(silence_warnings=True)
    except Exception as err:  # choreographer found no browser, or could not start it
        raise RuntimeError(f"{PNG_ENV}=1 needs a Chrome or Chromium browser for kaleido "
                           f"(Debian: apt-get install chromium): {err}") from err
    # plotly passes its per-call options, which a running server ignores, and warns on every figure
    warnings.filterwarnings("ignore", message="The kopts argument is ignored", category=UserWarning)
