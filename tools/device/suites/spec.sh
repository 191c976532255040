# what: speculative decoding speed on SmolLM2 vs plain decoding and transformers' assisted generation
set -uo pipefail
have_gguf || { echo "spec needs the default model's GGUF (.gguf/smol.part00 and .part01)"; exit 3; }
step 240 python3 -m tools.benchmarks.bench_spec --model "$SMOL_GGUF" --hf \
  --output "$R/bench_spec.json" > "$R/bench_spec.log" 2>&1
grep -E "tok/s|Error" "$R/bench_spec.log" | tail -40
