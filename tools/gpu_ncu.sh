#!/usr/bin/env bash
# Device call: Nsight Compute whole-step DRAM bytes (app-range over the NVTX "step" ranges) and
# per-kernel L2 write sectors of the KV write / NWOR commit kernels, NWOR off vs stage.
#   bash tools/gpu_ncu.sh llama8b   # Llama-3-8B shapes, dummy weights, controlled acceptance
#   bash tools/gpu_ncu.sh smollm2   # the default model (needs .gguf/smol.gguf or its halves)
set -uo pipefail
. tools/device_common.sh
KIND=$1
R=$PWD/gpu_results/ncu_$KIND; mkdir -p "$R"
trap 'find "$R" -name "*.ncu-rep" -delete; tar czf "$OUT/ncu_$KIND.tar.gz" -C gpu_results "ncu_$KIND"' EXIT
if [ "$KIND" = llama8b ]; then
  export TARGET_MODEL=$(python3 -c "import sys; sys.path.insert(0,'tools/benchmarks'); from common import llama3_8b_folder; print(llama3_8b_folder('/tmp'))")
  WORK="--scenario synthetic --requests 8 --load-format dummy --dtype bfloat16 --acceptance-rate 0.6"
else
  join_gguf
  export TARGET_MODEL=$PWD/$SMOL_GGUF
  WORK="--scenario medium --requests 8"
fi
for mode in off stage; do
  # shellcheck disable=SC2086
  timeout ${MODE_TIMEOUT:-195} python3 tools/profiling/run_nwor_microbench.py $WORK --batches 1 --warmup 0 \
    --draft-tokens 4 --max-tokens 12 --max-model-len 1024 --temperature 0.0 \
    --nwor-modes $mode --scv-modes vectorized --ncu --ncu-passes steps,kernels \
    --ncu-kernel-regex '_write_kv|_commit_staged' --ncu-launch-count 600 --ncu-timeout ${NCU_TIMEOUT:-95} --output "$R/${KIND}_${mode}.json" 2>&1 \
    | grep -v "^INFO\|microbench:" | tail -6
done
python3 tools/profiling/ncu_stats.py "$R/${KIND}_off.json" "$R/${KIND}_stage.json" --output "$R/${KIND}_stats.txt" 2>&1 | tail -40

