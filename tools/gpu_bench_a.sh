#!/usr/bin/env bash
# Device call A (no GGUF needed): GPU tests, host profile, Llama-3-8B dummy decode + NWOR,
# isolated SCV benchmark. Everything lands in $OUT/a.tar.gz.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$PWD/gpu_results/a; mkdir -p "$R"
nvidia-smi > "$R/nvidia_smi.txt"
python3 -m pytest -q -m cuda -p no:cacheprovider -rf tests/kernels tests/v1 2>&1 | tail -15 | tee "$R/pytest_cuda.txt"
python3 tools/benchmarks/profile_host.py --batches 1,64 --steps 100 --output "$R/profile_host.json" 2>&1 | grep "^batch"
python3 tools/benchmarks/bench_decode.py --parts b --max-tokens 64 --output "$R/bench_decode_llama8b.json" 2>&1 | grep "^\[b\]"
python3 tools/benchmarks/bench_nwor.py --models llama3-8b-dummy --max-tokens 48 --output "$R/bench_nwor_llama8b.json" 2>&1 | grep -E "^(llama|Llama)"
OUT="$R/scv_benefit" E2E=0 NSYS=0 timeout 150 bash tools/profiling/run_scv_benefit_analysis.sh 2>&1 | tail -25
tar czf "$OUT/a.tar.gz" -C gpu_results a
