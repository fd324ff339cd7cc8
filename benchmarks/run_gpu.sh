#!/usr/bin/env bash
# Every GPU figure in one go, for a machine with an NVIDIA GPU (torch, triton, einops and
# transformers are enough: nothing here needs gradio or plotly). Writes into $OUT
# (default benchmarks/gpu): the device, kernel and static-engine parity on CUDA, the kernel benchmark, the
# decoding speed benchmark with the transformers baselines and a profile of each static step
# kind, each as JSON + the printed table.
#   PYTHONPATH=. OUT=benchmarks/gpu bash benchmarks/run_gpu.sh
# MODEL=DIR times another model directory than the shipped one; KERNELS=0 skips the kernel tests
# and benchmark (for a second run after a decoding change); COMPILED=0 skips the compiled engine.
set -euo pipefail
OUT=${OUT:-benchmarks/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.csv"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee "$OUT/versions.txt"
if [ "${KERNELS:-1}" = 1 ]; then
    $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -5 | tee "$OUT/kernel_tests.txt"
    $PY -m bltlab bench-kernels --train-steps 10 --json "$OUT/kernels.json" | tee "$OUT/kernels.md"
fi
# the decoding state's CUDA tests (the rest of tests/test_state.py runs on the CPU in CI)
$PY -m pytest -q -p no:cacheprovider tests/test_state.py -k "cuda or compiled" 2>&1 | tail -5 | tee "$OUT/static_tests.txt"
$PY -m bltlab speed --device cuda --batch 16 --hf ${MODEL:+--model "$MODEL"} --json "$OUT/speed.json" 2>&1 | grep -v "%|" | tee "$OUT/speed.md"
if [ "${COMPILED:-1}" = 1 ]; then  # torch.compile'd static steps beside the plain ones, blt only (compiling takes minutes)
    $PY -m bltlab speed --device cuda --batch 16 --modes blt --compiled ${MODEL:+--model "$MODEL"} \
        --json "$OUT/speed_compiled.json" 2>&1 | grep -v "%|" | tee "$OUT/speed_compiled.md"
fi
# last, and not fatal (the profiler needs CUPTI): where a step's time goes, each step kind's
# kernels under the profiler at batch 1 and 16 (stderr: profile_static.log)
for B in 1 16; do
    $PY benchmarks/profile_static.py --batch $B ${MODEL:+--model "$MODEL"} --json "$OUT/profile_static_b$B.json" \
        2>>"$OUT/profile_static.log" | tee "$OUT/profile_static_b$B.md" || echo "profile at batch $B failed"
done
