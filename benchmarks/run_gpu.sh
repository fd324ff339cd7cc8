#!/usr/bin/env bash
# Every GPU figure in one go, for a machine with an NVIDIA GPU (torch, triton, einops and
# transformers are enough: nothing here needs gradio or plotly). Writes into $OUT
# (default benchmarks/gpu): the device, kernel and static-engine parity on CUDA, the kernel benchmark and the
# decoding speed benchmark with the transformers baselines, each as JSON + the printed table.
#   PYTHONPATH=. OUT=benchmarks/gpu bash benchmarks/run_gpu.sh
# MODEL=DIR times another model directory than the shipped one.
set -euo pipefail
OUT=${OUT:-benchmarks/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.csv"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee "$OUT/versions.txt"
$PY -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_static.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
$PY -m bltlab bench-kernels --json "$OUT/kernels.json" | tee "$OUT/kernels.md"
$PY -m bltlab speed --device cuda --batch 16 --hf ${MODEL:+--model "$MODEL"} --json "$OUT/speed.json" | tee "$OUT/speed.md"
