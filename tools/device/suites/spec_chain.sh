#!/usr/bin/env bash
# what: chained speculative steps (issue 12): EAGLE / draft model chained vs synchronous vs no-spec, SmolLM2 batch 1/8/32/64; step phases; cuda tests
# Issue "Decode at the hardware's pace" (speculative part), on an H200 with the default model's
# GGUF halves. Every engine in one run so the ratios compare like with like.
#   tests:   the `cuda` tests of tests/v1/spec_decode and tests/v1/engine (SKIP_TESTS=1: skip)
#   main:    no-spec sync/async, EAGLE (shipped head) and n-gram, chained and not (-nochain),
#            EAGLE with adaptive draft length (the chain switch); k=4; code and chat prompts;
#            batch 1/8/32/64; temperature 0 (TEMPS="0,0.7": also sampled, chained on device)
#   phases:  host ms per step phase and GPU busy time, EAGLE chained vs not, batch 1 and 32
#   env: METHODS, BATCHES, TEMPS, MAIN_S, PHASES_S (0 skips)
set -uo pipefail
have_gguf || { echo "spec_chain needs the default model's GGUF (.gguf/smol.part00 and .part01)"; exit 3; }
[ -n "${SKIP_TESTS:-}" ] || step 200 python3 -m pytest -q -m cuda --timeout 120 -p no:cacheprovider tests/v1/spec_decode \
  tests/v1/engine > "$R/cuda_tests.log" 2>&1
[ -f "$R/cuda_tests.log" ] && tail -4 "$R/cuda_tests.log"
step ${MAIN_S:-330} python3 -m tools.benchmarks.bench_spec --model "$SMOL_GGUF" --batches ${BATCHES:-1,8,32,64} \
  --temperatures ${TEMPS:-0} --ks 4 --methods ${METHODS:-none,eagle,eagle-nochain,eagle-adaptive,ngram,ngram-nochain} \
  --max-tokens 128 --output "$R/bench_spec_chain.json" > "$R/bench_spec_chain.log" 2>&1
grep -E "tok/s|Error|error" "$R/bench_spec_chain.log" | tail -60
[ "${PHASES_S:-120}" -gt 0 ] && step ${PHASES_S:-120} python3 -m tools.benchmarks.spec_step_profile --model "$SMOL_GGUF" \
  --batches 1,32 --methods none,eagle,eagle-nochain --acceptance-rate -1 --steps 60 \
  --output "$R/spec_step_phases.json" > "$R/spec_step_phases.log" 2>&1
[ -f "$R/spec_step_phases.log" ] && grep -E "^b[0-9]" "$R/spec_step_phases.log"
true
