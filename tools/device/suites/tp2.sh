# what: tensor parallelism on two GPUs: TP=2 vs TP=1 tokens, logprobs and speed; the NWOR microbench at TP=1 and 2
# Run on a two-GPU machine (kind nvidia-h200-x2). NVLink multicast stays off in every process.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi topo -m > "$R/nvidia_topo.txt" 2>&1
step 240 python3 -m tools.benchmarks.tp_check --model llama3-8b-dummy --dtype bfloat16 \
  --batches 1,32 --output "$R/tp_check_llama8b.json" > "$R/tp_check_llama8b.log" 2>&1
grep -E "^TP=|Error" "$R/tp_check_llama8b.log"
if have_gguf; then
  step 150 python3 -m tools.benchmarks.tp_check --model "$SMOL_GGUF" --batches 1,32 \
    --output "$R/tp_check_smollm2.json" > "$R/tp_check_smollm2.log" 2>&1
  grep -E "^TP=|Error" "$R/tp_check_smollm2.log"
  export TARGET_MODEL=$PWD/$SMOL_GGUF; WORK="--scenario medium --requests 16"
else
  export TARGET_MODEL=$(python3 -c "from tools.common import llama3_8b_folder; print(llama3_8b_folder('/tmp'))")
  WORK="--scenario synthetic --requests 16 --load-format dummy --dtype bfloat16 --acceptance-rate 0.6"
fi
for tp in 1 2; do
  # shellcheck disable=SC2086
  TENSOR_PARALLEL_SIZE=$tp step 150 python3 -m tools.profiling.run_nwor_microbench $WORK \
    --batches 2 --draft-tokens 4 --max-model-len 1024 --nwor-modes off,stage \
    --scv-modes vectorized --no-progress --output "$R/microbench_tp$tp.json" \
    > "$R/microbench_tp$tp.log" 2>&1
  tail -5 "$R/microbench_tp$tp.log"
done
