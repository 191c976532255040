#!/usr/bin/env bash
# what: the engine step (issue 12): decode sync vs async, graphs vs eager, GPU busy fraction; spec vs no-spec; host profile (real default model)
# Issue "Decode at the hardware's pace" benchmark, one call (~8.5 min) on a warm H200 that has the
# default model's GGUF halves (.gguf/smol.part00 carried by the previous call, .gguf/smol.part01
# carried by this one; joined and checked here):
#   decode: SmolLM2-135M (real GGUF) graphs/eager x sync/async, batches 1/8/32/64, with GPU busy
#           fraction and kernels per step; Llama-3-8B shapes (dummy) sync/async at batch 1/32;
#           transformers generate (static cache) on the same prompts;
#   spec:   no-spec sync and async, n-gram k=4, SmolLM2 drafting for itself k=4, batch 1 and 32;
#   host:   cProfile of async decode steps.
#   bash tools/device/suites/engine_step.sh        (carry .gguf and .whl)
set -uo pipefail
source tools/device_common.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
join_gguf
exec > >(tee "$OUT/engine_step.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
step 230 python3 -m tools.benchmarks.bench_decode --model "$SMOL_GGUF" --batches 1,8,32,64 \
  --max-tokens 128 --llama-batches 1,32 --hf-batches 1,32 --parts a,b,c \
  --output "$OUT/bench_decode.json"
step 200 python3 -m tools.benchmarks.bench_spec --model "$SMOL_GGUF" --batches 1,32 \
  --temperatures 0 --ks 4 --methods none,ngram,draft_model --max-tokens 128 \
  --output "$OUT/bench_spec.json"
step 60 python3 -m tools.benchmarks.profile_host --model "$SMOL_GGUF" --batches 1,64 --steps 100 \
  --output "$OUT/profile_host.json"
