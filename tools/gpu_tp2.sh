#!/usr/bin/env bash
# Device call for tensor parallelism on two GPUs (issue 8; kind nvidia-h200-x2 / nvidia-h100-x2).
# With .gguf/smol.part00 carried by the call before and .gguf/smol.part01 by this one, the
# default model is checked too; otherwise only Llama-3-8B shapes (dummy weights).
#   1. TP=2 vs TP=1: greedy tokens and logprobs (tools/benchmarks/tp_check.py), tokens/s;
#   2. the NWOR microbench with TENSOR_PARALLEL_SIZE=1 and 2, NWOR off and stage.
# Results in $OUT/tp2.tar.gz. NVLink multicast stays off in every process (shared hosts).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
. tools/device_common.sh
R=$PWD/gpu_results/tp2; mkdir -p "$R"
trap 'tar czf "$OUT/tp2.tar.gz" -C gpu_results tp2' EXIT
nvidia-smi > "$R/nvidia_smi.txt"; nvidia-smi topo -m >> "$R/nvidia_smi.txt" 2>&1
step 240 python3 tools/benchmarks/tp_check.py --model llama3-8b-dummy --dtype bfloat16 \
  --batches 1,32 --output "$R/tp_check_llama8b.json" > "$R/tp_check_llama8b.log" 2>&1
grep -E "^TP=|Error" "$R/tp_check_llama8b.log"
if [ -f .gguf/smol.part00 ] && [ -f .gguf/smol.part01 ]; then
  join_gguf
  step 150 python3 tools/benchmarks/tp_check.py --model "$SMOL_GGUF" --batches 1,32 \
    --output "$R/tp_check_smollm2.json" > "$R/tp_check_smollm2.log" 2>&1
  grep -E "^TP=|Error" "$R/tp_check_smollm2.log"
  export TARGET_MODEL=$PWD/$SMOL_GGUF; WORK="--scenario medium --requests 16"
else
  export TARGET_MODEL=$(python3 -c "import sys; sys.path.insert(0,'tools/benchmarks'); from common import llama3_8b_folder; print(llama3_8b_folder('/tmp'))")
  WORK="--scenario synthetic --requests 16 --load-format dummy --dtype bfloat16 --acceptance-rate 0.6"
fi
for tp in 1 2; do
  # shellcheck disable=SC2086
  TENSOR_PARALLEL_SIZE=$tp step 150 python3 tools/profiling/run_nwor_microbench.py $WORK \
    --batches 2 --draft-tokens 4 --max-model-len 1024 --nwor-modes off,stage \
    --scv-modes vectorized --no-progress --output "$R/microbench_tp$tp.json" \
    > "$R/microbench_tp$tp.log" 2>&1
  tail -5 "$R/microbench_tp$tp.log"
done
