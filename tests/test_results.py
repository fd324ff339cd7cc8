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


def test_the_committed_page_is_what_the_committed_json_give(tmp_path):
    """docs/results.md is write_page of the committed bench and diagnose JSON (the Makefile's `results`
    steps): regenerating it changes nothing, and the diagnostic's rows carry the JSON's figures."""
    import json

    benches = load_benches([f"translation={ROOT / 'benchmarks' / 'bench_translation.json'}",
                            f"code={ROOT / 'benchmarks' / 'bench_code.json'}"])
    diag = json.loads((ROOT / "benchmarks" / "diagnose_small.json").read_text())
    out = tmp_path / "results.md"
    write_page(benches, out, "make results", diag)
    assert out.read_text() == (ROOT / "docs" / "results.md").read_text()
    row = next(r for r in diag["modes"]["rows"] if r["label"] == "blt-d4 α=0.99 in-order exact-first")
    assert (f"| {row['task']} | `{row['label']}` | {row['passes_per_byte']:.2f} | {row['enc_per_byte']:.2f} | "
            f"{row['chrf']:.1f} |") in out.read_text()
