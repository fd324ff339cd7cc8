"""The kernels compile for a GPU (sm_90) even where none is present (bltlab/kernels/compile_check.py).

The CPU parity tests run the kernels in Triton's interpreter, which executes them as Python and
would not notice code that Triton's compiler rejects; this lowers them to cubins instead. It
runs in a subprocess because this test process defines the kernels in interpreter mode.
"""
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the parity tests compile and run every kernel")
def test_every_kernel_compiles_for_h100(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a fresh compile, not a cached one
    r = subprocess.run([sys.executable, "-W", "ignore", "-m", "bltlab.kernels.compile_check", "--quick"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "33/33 kernels compiled for sm_90" in r.stdout
