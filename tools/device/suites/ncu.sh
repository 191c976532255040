# what: Nsight Compute: whole-step DRAM bytes and KV-kernel L2 writes, NWOR off vs stage
# Argument: llama8b (default; Llama-3-8B shapes, dummy weights, controlled acceptance),
# smollm2 (the default model; needs its GGUF) or bandwidth (run_ncu_bandwidth_test.sh on
# SmolLM2: small and large workloads).
set -uo pipefail
KIND=${1:-llama8b}
case "$KIND" in
  llama8b)
    export TARGET_MODEL=$(python3 -c "from tools.common import llama3_8b_folder; print(llama3_8b_folder('/tmp'))")
    WORK="--scenario synthetic --requests 8 --load-format dummy --dtype bfloat16 --acceptance-rate 0.6" ;;
  smollm2|bandwidth)
    have_gguf || { echo "ncu $KIND needs the default model's GGUF"; exit 3; }
    export TARGET_MODEL=$PWD/$SMOL_GGUF
    WORK="--scenario medium --requests 8" ;;
  *) echo "ncu: unknown kind '$KIND' (llama8b, smollm2, bandwidth)"; exit 2 ;;
esac
if [ "$KIND" = bandwidth ]; then
  step 400 env OUT="$R/ncu_bandwidth" TEMPS="0.0" SIZES="small large" MAX_TOKENS=16 \
    bash tools/profiling/run_ncu_bandwidth_test.sh --max-model-len 1024 > "$R/ncu_bw.log" 2>&1
  tail -40 "$R/ncu_bw.log"
  exit 0
fi
for mode in off stage; do
  # shellcheck disable=SC2086
  step ${MODE_TIMEOUT:-195} python3 -m tools.profiling.run_nwor_microbench $WORK --batches 1 \
    --warmup 0 --draft-tokens 4 --max-tokens 12 --max-model-len 1024 --temperature 0.0 \
    --nwor-modes $mode --scv-modes vectorized --ncu --ncu-passes steps,kernels \
    --ncu-kernel-regex '_write_kv|_commit_staged' --ncu-launch-count 600 \
    --ncu-timeout ${NCU_TIMEOUT:-95} --output "$R/${KIND}_${mode}.json" 2>&1 \
    | grep -v "^INFO\|microbench:" | tail -6
done
python3 -m tools.profiling.ncu_stats "$R/${KIND}_off.json" "$R/${KIND}_stage.json" \
  --output "$R/${KIND}_stats.txt" 2>&1 | tail -40
