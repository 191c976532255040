#!/usr/bin/env bash
# Device call A (no GGUF needed): GPU tests, Llama-3-8B dummy decode + NWOR, isolated SCV
# benchmark, host profile. Each step is time-boxed; whatever finished lands in $OUT/a.tar.gz
# (an EXIT trap packs it even when a step times out).
set -uo pipefail
. tools/device_common.sh
R=$PWD/gpu_results/a; mkdir -p "$R"
trap 'tar czf "$OUT/a.tar.gz" -C gpu_results a' EXIT
nvidia-smi > "$R/nvidia_smi.txt"
step 170 python3 -m pytest -q -m cuda -p no:cacheprovider -rf tests/kernels tests/v1 > "$R/pytest_cuda.txt" 2>&1; tail -6 "$R/pytest_cuda.txt"
step 150 python3 tools/benchmarks/bench_nwor.py --models llama3-8b-dummy --max-tokens 48 --output "$R/bench_nwor_llama8b.json" > "$R/bench_nwor_llama8b.log" 2>&1; grep -iE "^(llama)|error" "$R/bench_nwor_llama8b.log" | tail -20
step 100 python3 tools/benchmarks/bench_decode.py --parts b --max-tokens 64 --output "$R/bench_decode_llama8b.json" > "$R/bench_decode_llama8b.log" 2>&1; grep -E "^\[b\]|Error" "$R/bench_decode_llama8b.log"
OUT_SCV="$R/scv_benefit"; step 90 env OUT="$OUT_SCV" E2E=0 NSYS=0 bash tools/profiling/run_scv_benefit_analysis.sh > "$R/scv_benefit.log" 2>&1; tail -15 "$R/scv_benefit.log"
step 50 python3 tools/benchmarks/profile_host.py --batches 1,64 --steps 60 --output "$R/profile_host.json" > "$R/profile_host.log" 2>&1; grep "^batch" "$R/profile_host.log"
