# what: the NWOR x SCV microbench on SmolLM2: latency, spec counters and the KV byte model per mode
set -uo pipefail
have_gguf || { echo "microbench needs the default model's GGUF (.gguf/smol.part00 and .part01)"; exit 3; }
step 300 python3 -m tools.profiling.run_nwor_microbench --target-model "$PWD/$SMOL_GGUF" \
  --scenario medium --requests 16 --batches 3 --draft-tokens 4 --max-model-len 1024 \
  --nwor-modes off,stage --scv-modes off,vectorized,graph,adaptive --no-progress \
  --output "$R/microbench_medium.json" > "$R/microbench_medium.log" 2>&1
tail -14 "$R/microbench_medium.log"
