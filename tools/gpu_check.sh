#!/usr/bin/env bash
# One device call: GPU unit tests (cuda marker) + GPU engine tests. Writes logs under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -m cuda -p no:cacheprovider tests/ "$@" 2>&1 | tee "$OUT/pytest_cuda.log" | tail -40
