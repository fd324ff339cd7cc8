import pytest
import torch

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
