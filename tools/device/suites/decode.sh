# what: decode throughput: Llama-3-8B shapes (dummy weights) and, with its GGUF, SmolLM2
set -uo pipefail
step 120 python3 -m tools.benchmarks.bench_decode --parts b --max-tokens 64 \
  --output "$R/bench_decode_llama8b.json" > "$R/bench_decode_llama8b.log" 2>&1
grep -E "^\[b\]|Error" "$R/bench_decode_llama8b.log"
if have_gguf; then
  step 170 python3 -m tools.benchmarks.bench_decode --model "$SMOL_GGUF" --parts a,c \
    --output "$R/bench_decode_smollm2.json" > "$R/bench_decode_smollm2.log" 2>&1
  grep -E "^\[(a|c)\]|Error" "$R/bench_decode_smollm2.log"
else
  echo "no default-model GGUF: SmolLM2 decode skipped"
fi
