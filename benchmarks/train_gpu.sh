#!/usr/bin/env bash
# Retrain the shipped `small` model on a GPU (the README's recipe with a GPU-sized batch and time
# budget), from the corpus packed by `python benchmarks/pack_corpus.py .corpus` on the machine
# whose Python the shipped data split was made with. Writes the exported model to $OUT/small
# (blt.safetensors split into 15 MiB parts: `cat blt.safetensors.part-* > blt.safetensors`).
#   OUT=/tmp/out bash benchmarks/train_gpu.sh
set -euo pipefail
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
ENTROPY_MIN=${ENTROPY_MIN:-1.5}
BLT_MIN=${BLT_MIN:-5.5}
export BLTLAB_STDLIB=${BLTLAB_STDLIB:-.corpus/stdlib} PYTHONPATH=.corpus/site:. PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.csv"
$PY -m bltlab data
$PY -m bltlab train entropy --preset small --steps 100000 --minutes "$ENTROPY_MIN" --batch-size 64 --lr 2e-3 \
    --warmup 100 --eval-every 1000 --eval-windows 16 --out runs/entropy --device cuda 2>&1 | tr '\r' '\n' | grep -v "%|" | tee "$OUT/train_entropy.log"
$PY -m bltlab train blt --preset small --entropy-dir runs/entropy --steps 100000 --minutes "$BLT_MIN" \
    --batch-size 64 --lr 2e-3 --warmup 200 --eval-every 1000 --eval-windows 16 --out runs/small --device cuda \
    2>&1 | tr '\r' '\n' | grep -v "%|" | tee "$OUT/train_blt.log"
$PY -m bltlab export runs/small "$OUT/small"
split -b 15M -d "$OUT/small/blt.safetensors" "$OUT/small/blt.safetensors.part-"
rm "$OUT/small/blt.safetensors"
ls -la "$OUT/small"
