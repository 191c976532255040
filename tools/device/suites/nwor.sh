# what: NWOR off vs stage latency (both engines in one process, alternating rounds): Llama-3-8B shapes, SmolLM2 with its GGUF
set -uo pipefail
step 170 python3 -m tools.benchmarks.bench_nwor --models llama3-8b-dummy --max-tokens 32 \
  --output "$R/bench_nwor_llama8b.json" > "$R/bench_nwor_llama8b.log" 2>&1
grep -iE "^(llama)|error" "$R/bench_nwor_llama8b.log" | tail -20
if have_gguf; then
  step 200 python3 -m tools.benchmarks.bench_nwor --model "$SMOL_GGUF" --models smollm2 \
    --output "$R/bench_nwor_smollm2.json" > "$R/bench_nwor_smollm2.log" 2>&1
  grep -E "^(smollm2|SmolLM2)|Error" "$R/bench_nwor_smollm2.log"
fi
