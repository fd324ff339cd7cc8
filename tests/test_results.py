"""The results page (bltlab/results.py): tables from the committed bench JSON, and a figure that
opens offline."""
import re
from pathlib import Path

from bltlab.results import load_benches, write_page

ROOT = Path(__file__).resolve().parent.parent


def test_page_from_the_committed_benches_opens_offline(tmp_path):
    benches = load_benches([f"translation={ROOT / 'benchmarks' / 'bench_translation.json'}"])
    out = tmp_path / "results.md"
    write_page(benches, out, "make results")
    page = out.read_text()
    assert "## translation" in page and "| `blt-d16` |" in page and "[results.html](results.html)" in page
    html = (tmp_path / "results.html").read_text()
    sources = re.findall(r'<script[^>]*src="([^"]+)"', html)
    assert sources == ["plotly.min.js"]  # beside the page, not from a CDN
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000 and "Plotly.newPlot" in html
