#!/usr/bin/env bash
# Device call C (right after B, the joined GGUF still there): NWOR x SCV microbench on SmolLM2,
# Nsight Compute bandwidth test. Results in $OUT/c.tar.gz.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
export TARGET_MODEL=$PWD/.gguf/smol.gguf
R=$PWD/gpu_results/c; mkdir -p "$R"
ls -la .gguf/ | head
timeout 200 python3 tools/profiling/run_nwor_microbench.py --scenario medium --requests 16 --batches 3 --draft-tokens 4 --max-model-len 1024 --nwor-modes off,stage --scv-modes off,vectorized,graph,adaptive --output "$R/microbench_medium.json" 2>&1 | tail -14
OUT="$R/ncu_analysis" TEMPS="0.0" SIZES="small large" MAX_TOKENS=16 timeout 330 bash tools/profiling/run_ncu_bandwidth_test.sh --max-model-len 1024 2>&1 | tail -40
ls -R "$R" | head -40
tar czf "$OUT/c.tar.gz" -C gpu_results c
