#!/usr/bin/env bash
# Device call D (no GGUF; carry .gguf/smol.part00 along for call E): Nsight Compute on Llama-3-8B
# shapes (NWOR off vs stage), then the NWOR latency benchmark on them (both engines in one
# process, warmed up on the same workload, off/stage in alternating rounds). Results in $OUT/ncu_llama8b.tar.gz and $OUT/d.tar.gz.
set -uo pipefail
. tools/device_common.sh
R=$PWD/gpu_results/d; mkdir -p "$R"
trap 'tar czf "$OUT/d.tar.gz" -C gpu_results d' EXIT
timeout 400 bash tools/gpu_ncu.sh llama8b
echo "== $(date +%T) bench_nwor llama8b"
timeout 170 python3 tools/benchmarks/bench_nwor.py --models llama3-8b-dummy --max-tokens 32 --output "$R/bench_nwor_llama8b.json" > "$R/bench_nwor_llama8b.log" 2>&1; echo "rc=$?"
grep -iE "^(llama)|error" "$R/bench_nwor_llama8b.log" | tail -20
