"""Where Triton is missing (macOS, Windows: Linux wheels only) the tests of the Triton kernels skip, with
the reason, and nothing else does (tests/conftest.py: NEEDS_TRITON, needs_triton and the collection hook).
Here Triton is installed, so the hook must skip nothing; its absence is simulated in a subprocess."""
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import NEEDS_TRITON, NO_TRITON, needs_triton

from bltlab import kernels

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 'import sys\nsys.modules["triton"] = None  # `import triton` raises ImportError, as without the wheel\n'
TRITON_STEP = "tests/test_state.py::test_steps_with_the_triton_kernels_equal_the_references"
NB08 = "tests/test_notebooks.py::test_notebook_reruns_identically_under_nbval[08_triton_kernels]"


def test_the_decision_by_node_id():
    for nodeid in ("tests/test_kernels.py::test_swiglu[cpu-dtype0-shape0-True]", "tests/test_kernels_bench.py::t",
                   "tests/test_kernels_compile.py::test_every_kernel_compiles_for_h100", TRITON_STEP,
                   TRITON_STEP + "[case]", NB08, "test_kernels.py::test_x"):
        assert needs_triton(nodeid), nodeid
    for nodeid in ("tests/test_state.py::test_weights_written_in_place_reach_the_state",
                   "tests/test_state.py::test_steps_with_the_triton_kernels_equal_the_references_too",
                   "tests/test_notebooks.py::test_notebook_reruns_identically_under_nbval[09_decoding_state]",
                   "tests/test_notebooks.py::test_stored_outputs_are_current_and_clean[08_triton_kernels]",
                   "tests/test_no_triton.py::test_everything_runs_without_triton", "tests/test_app.py::test_kernels",
                   "tests/test_decode.py::test_x"):
        assert not needs_triton(nodeid), nodeid


def test_every_named_test_exists():
    """A renamed test would silently stop being skipped: each name in NEEDS_TRITON is still there."""
    for pattern in NEEDS_TRITON:
        file, _, name = pattern.partition("::")
        files = sorted((ROOT / "tests").glob(file))
        assert files, pattern
        if name:
            func, _, case = name.partition("[")
            assert re.search(rf"^def {func}\(", files[0].read_text(), re.M), pattern
            if case:
                assert (ROOT / "notebooks" / f"{case[:-1]}.ipynb").is_file(), pattern


def test_nothing_is_skipped_where_triton_is_installed(request):
    """In this very session: the hook marked exactly the NEEDS_TRITON tests, and only without Triton."""
    chosen = [item for item in request.session.items if needs_triton(item.nodeid)]
    marked = [item for item in request.session.items
              if any(m.kwargs.get("reason") == NO_TRITON for m in item.iter_markers("skip"))]
    assert marked == ([] if kernels.has_triton() else chosen)


def test_without_triton_exactly_the_kernel_tests_skip(tmp_path):
    """A pytest run where `import triton` fails: the Triton tests are skipped with the reason, and a
    test beside them still runs."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    kept = "tests/test_notebooks.py::test_series_is_complete"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        "tests/test_kernels.py", "tests/test_kernels_bench.py", "tests/test_kernels_compile.py",
                        TRITON_STEP, NB08, kept],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    skipped = int(re.search(r"(\d+) skipped", summary).group(1))
    assert re.search(r"\b1 passed", summary) and "failed" not in summary and "error" not in summary, summary
    reasons = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all(NO_TRITON in line for line in reasons), reasons
    assert sum(int(re.search(r"SKIPPED \[(\d+)\]", line).group(1)) for line in reasons) == skipped
    assert skipped >= 50  # the kernel files' tests, the Triton step and the notebook
