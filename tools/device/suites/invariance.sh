# what: greedy outputs across batch sizes in bf16 vs float32 on SmolLM2 (batch invariance)
set -uo pipefail
have_gguf || { echo "invariance needs the default model's GGUF (.gguf/smol.part00 and .part01)"; exit 3; }
step 100 python3 -m tools.benchmarks.batch_invariance --model "$SMOL_GGUF" \
  --output "$R/batch_invariance.json" > "$R/batch_invariance.log" 2>&1
grep -E "differ|Error" "$R/batch_invariance.log"
