import os

import pytest
import torch

# tests/test_kernels*.py run the Triton kernels on CPU tensors through Triton's interpreter when
# there is no GPU. Triton fixes at definition time (when a bltlab.kernels module is first
# imported) whether a kernel is compiled or interpreted, and any test module may import bltlab
# before the kernel tests run, so the switch is set here, before anything imports bltlab. It
# changes nothing else: the default backend ('auto') still runs PyTorch on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bltlab.checkpoint import save_model
from bltlab.config import get_config
from bltlab.model import BLT


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A randomly initialised tiny model saved as a model directory."""
    torch.manual_seed(0)
    m = BLT(get_config("tiny"))
    d = tmp_path_factory.mktemp("tiny")
    save_model(m, d, {"note": "random tiny model for tests"})
    return d
