#!/usr/bin/env bash
# Device call C (right after B, the joined GGUF still there): NWOR x SCV microbench on SmolLM2,
# Nsight Compute bandwidth test. Time-boxed; results in $OUT/c.tar.gz (EXIT trap).
set -uo pipefail
. tools/device_common.sh
export TARGET_MODEL=$PWD/.gguf/smol.gguf
[ -f "$TARGET_MODEL" ] || { echo "no joined GGUF: run gpu_bench_b.sh first"; exit 3; }
R=$PWD/gpu_results/c; mkdir -p "$R"
trap 'find gpu_results/c -name "*.ncu-rep" -delete; tar czf "$OUT/c.tar.gz" -C gpu_results c' EXIT
step 200 python3 tools/profiling/run_nwor_microbench.py --scenario medium --requests 16 --batches 3 --draft-tokens 4 --max-model-len 1024 --nwor-modes off,stage --scv-modes off,vectorized,graph,adaptive --no-progress --output "$R/microbench_medium.json" > "$R/microbench_medium.log" 2>&1; tail -14 "$R/microbench_medium.log"
step 340 env OUT="$R/ncu_analysis" TEMPS="0.0" SIZES="small large" MAX_TOKENS=16 bash tools/profiling/run_ncu_bandwidth_test.sh --max-model-len 1024 > "$R/ncu_bw.log" 2>&1; tail -40 "$R/ncu_bw.log"
