"""bltlab.linked, one generation read as linked views, checked against the model itself on the shipped
checkpoint (the views are read from traces only, so each check ties a view to what the model computes)."""
from __future__ import annotations

import pytest
import torch

from bltlab import linked
from bltlab.checkpoint import SHIPPED, load_model
from bltlab.tokens import encode

PROMPT = "    for i in range(len("


@pytest.fixture(scope="module")
def model():
    return load_model(SHIPPED)[0]


@pytest.fixture(scope="module")
def runs(model):
    return linked.run_all(model, PROMPT)


@pytest.fixture(scope="module")
def view(runs):
    return linked.blt_view(runs["blt"])


def test_views_1_and_2_are_the_models_patches(model, runs, view):
    whole = torch.tensor([encode(view["data"])])
    N = view["N"]
    assert N == len(PROMPT) + len(runs["blt"].output) and view["n_prompt"] == len(PROMPT)
    H = model.entropy.entropies(whole)[0].tolist()
    assert max(abs(a - b) for a, b in zip(view["H"][1:], H[1:])) < 1e-3  # the trace rounds to 4 decimals
    assert model.patch(whole)[0, :N].nonzero()[:, 0].tolist() == view["starts"]
    assert view["p"] == sorted(view["p"]) and view["p"][0] == 0 and len(view["p"]) == N + 1


def test_greedy_modes_write_blts_bytes_and_the_rejection_is_replaced_by_blts_byte(runs, view):
    assert all(g.output == runs["blt"].output for g in runs.values())
    sel = linked.first_rejection(runs)
    assert sel is not None
    replaced = [c for c in linked.s_cells(runs[linked.S_MODE]) if c[3] == "replaced by" and c[1] == sel]
    assert len(replaced) == 1 and replaced[0][2] == view["data"][sel - 1]  # the exact byte is blt's


def test_blocks_start_at_patch_starts_and_committed_bytes_are_blts(model, runs, view):
    whole = torch.tensor([encode(view["data"])])
    rule = set(model.patch(whole)[0].nonzero()[:, 0].tolist())
    cells = linked.d_cells(runs[linked.D_MODE])
    assert {c[0] for c in cells if c[1] == 0} <= rule
    assert any(c[4] is not None for c in cells)  # α = 0.7 commits guessed slots
    assert all(c[2] == view["data"][c[0] - 1] for c in cells if c[0] <= view["N"])


@pytest.mark.parametrize("name", list(linked.MODES))
def test_ledger_adds_up_to_the_counters_and_settles_each_byte_once(model, runs, view, name):
    g = runs[name]
    rows = linked.ledger(model, g)
    parts = {k: sum(r[k] for r in rows) for k in linked.PARTS}
    assert parts == linked.params_read(model, g.counters) and rows[-1]["total"] == sum(parts.values())
    covered = sorted(t for r in rows[1:] for t in range(r["span"][0], r["span"][1] + 1))
    assert covered == list(range(view["n_prompt"] + 1, view["N"] + 1))


def test_figure_and_column(model, runs, view):
    sel = linked.first_rejection(runs)
    fig = linked.figure(model, runs, view, sel)
    assert [a.text for a in fig.layout.annotations][:5] == [
        "1 · entropy H_t (nats) and patches", "2 · global output the decoder at t reads: patch p(t) − 1",
        f"3 · BLT-S rounds ({linked.S_MODE})", f"4 · BLT-D denoising grid ({linked.D_MODE})",
        "5 · parameters read so far (M)"]
    assert any(s.x0 == sel - 0.5 and s.x1 == sel + 0.5 for s in fig.layout.shapes)  # the highlighted column
    text = linked.describe(model, sel, runs, view)
    assert text.startswith(f"position {sel}: byte ") and "drafted, rejected" in text and "5 parameters" in text
