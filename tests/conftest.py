import os
from fnmatch import fnmatch

import pytest
import torch

# tests/test_kernels*.py run the Triton kernels on CPU tensors through Triton's interpreter when
# there is no GPU. Triton fixes at definition time (when a bltlab.kernels module is first
# imported) whether a kernel is compiled or interpreted, and any test module may import bltlab
# before the kernel tests run, so the switch is set here, before anything imports bltlab. It
# changes nothing else: the default backend ('auto') still runs PyTorch on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`make test`: one worker per core) each worker gets its share of the cores, so that
# the workers' PyTorch threads do not outnumber the cores and wait for each other; subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)

from bltlab.checkpoint import save_model
from bltlab.config import get_config
from bltlab.model import BLT

# The tests of the Triton kernels themselves, as "file pattern" or "file::test" (a parametrized test's
# cases included). Triton has Linux wheels only: on macOS and Windows these are skipped, with the reason;
# every other test runs there as here (on the PyTorch references, as `tests/test_no_triton.py` checks).
NEEDS_TRITON = (
    "test_kernels*.py",
    "test_state.py::test_steps_with_the_triton_kernels_equal_the_references",
    "test_notebooks.py::test_notebook_reruns_identically_under_nbval[08_triton_kernels]",
)
NO_TRITON = "needs Triton, which is not installed here (Linux wheels only; bltlab.kernels.has_triton() is False)"


def needs_triton(nodeid: str) -> bool:
    """Whether the test with this pytest node id ("tests/test_state.py::test_x[case]") is one of NEEDS_TRITON."""
    path, _, name = nodeid.partition("::")
    file = path.rsplit("/", 1)[-1]
    for pattern in NEEDS_TRITON:
        pat_file, _, pat_name = pattern.partition("::")
        if fnmatch(file, pat_file) and (not pat_name or name == pat_name or name.startswith(pat_name + "[")):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    """Skip NEEDS_TRITON where Triton cannot be imported (asked only when such a test was collected)."""
    chosen = [item for item in items if needs_triton(item.nodeid)]
    if chosen:
        from bltlab import kernels

        if not kernels.has_triton():
            for item in chosen:
                item.add_marker(pytest.mark.skip(reason=NO_TRITON))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A randomly initialised tiny model saved as a model directory."""
    torch.manual_seed(0)
    m = BLT(get_config("tiny"))
    d = tmp_path_factory.mktemp("tiny")
    save_model(m, d, {"note": "random tiny model for tests"})
    return d
