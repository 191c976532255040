#!/usr/bin/env bash
# what: several GPUs (kind nvidia-h200-x2): all-reduce cost, TP=2 vs TP=1, DP=2 vs DP=1, NWOR microbench at TP=1/2
# Device suite for several GPUs (issue 18), kind nvidia-h200-x2. Two parts, each one call of
# at most ~8.5 min; every step is time-boxed and partial results are kept.
#   core: all-reduce cost per layer (NCCL eager / in CUDA graphs / P2P one-shot), TP=2 vs TP=1
#         on Llama-3-8B shapes at batch 1 and 32 (tokens, max |logprob diff|, tokens/s, CUDA
#         graphs, shutdown time), the two-GPU `cuda` tests of tests/distributed.
#   dp:   DP=2 vs DP=1 through `vllm serve` at 128 concurrent streams (SmolLM2; needs the
#         fastapi/uvicorn wheels in .whl/, skipped otherwise), the NWOR microbench at TP=1 and
#         TP=2 (NWOR off / stage).
# Usage: bash tools/device/suites/tp2.sh core|dp     Results: $OUT/tp2_<part>/ (+ .tar.gz).
set -uo pipefail
PART=${1:-core}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
. tools/device_common.sh
OUT=${OUT:-/tmp/out}
R=$OUT/tp2_$PART; mkdir -p "$R"
trap 'tar czf "$OUT/tp2_$PART.tar.gz" -C "$OUT" "tp2_$PART" 2>/dev/null' EXIT
T0=$(date +%s)
# tbox SECONDS NAME CMD...: run CMD (killed with its children at the deadline), log to $R/NAME.log
tbox() {
  local t=$1 name=$2; shift 2
  echo "== $(date +%T) [$name] $*"
  timeout -k 10 "$t" "$@" > "$R/$name.log" 2>&1
  local rc=$?
  echo "== [$name] rc=$rc after $(( $(date +%s) - T0 )) s"
  return $rc
}
nvidia-smi > "$R/nvidia_smi.txt" 2>&1; nvidia-smi topo -m >> "$R/nvidia_smi.txt" 2>&1
python3 -c 'import torch; print("torch", torch.__version__, "gpus", torch.cuda.device_count())'

if [ "$PART" = core ]; then
  tbox 60 allreduce python3 -m tools.benchmarks.allreduce_bench --timeout 50 --output "$R/allreduce_tp2.json"
  grep -E "^tokens=|Error" "$R/allreduce.log"
  tbox 230 tp_check python3 -m tools.benchmarks.tp_check --model llama3-8b-dummy \
    --dtype bfloat16 --batches 1,32 --output "$R/tp_check_llama8b.json"
  grep -E "^TP=|Error" "$R/tp_check.log"
  tbox 200 cuda_tests python3 -m pytest -q -m cuda --timeout 100 -p no:cacheprovider \
    tests/distributed
  tail -15 "$R/cuda_tests.log"
elif [ "$PART" = dp ]; then
  if python3 -c "import fastapi, uvicorn" 2>/dev/null; then
    if [ -f .gguf/smol.part00 ] && [ -f .gguf/smol.part01 ]; then
      join_gguf; MODEL=$PWD/$SMOL_GGUF
    else
      MODEL=smollm2-dummy
    fi
    tbox 260 dp_serve python3 -m tools.benchmarks.dp_serve_bench --model "$MODEL" \
      --dp-sizes 1,2 --streams 128 --requests 512 --max-tokens 128 --prompt-len 128 \
      --output "$R/dp_serve_smollm2.json"
    grep -E "^DP=|Error" "$R/dp_serve.log"
  else
    echo "SKIP dp_serve: fastapi/uvicorn missing (carry the .whl/ folder)" | tee "$R/dp_serve.log"
  fi
  export TARGET_MODEL=$(python3 -c "from tools.common import llama3_8b_folder; print(llama3_8b_folder('/tmp'))")
  for tp in 1 2; do
    TENSOR_PARALLEL_SIZE=$tp tbox 110 microbench_tp$tp python3 -m tools.profiling.run_nwor_microbench \
      --scenario synthetic --requests 16 --load-format dummy --dtype bfloat16 \
      --acceptance-rate 0.6 --batches 2 --draft-tokens 4 --max-model-len 1024 \
      --nwor-modes off,stage --scv-modes vectorized --no-progress \
      --output "$R/microbench_tp$tp.json"
    tail -5 "$R/microbench_tp$tp.log"
  done
else
  echo "usage: $0 core|dp"; exit 2
fi
echo "== done in $(( $(date +%s) - T0 )) s"
