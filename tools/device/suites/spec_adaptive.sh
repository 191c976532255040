#!/usr/bin/env bash
# what: adaptive draft length vs no-spec (sync and async) vs fixed k, n-gram and draft model, SmolLM2 batch 1/32/64/128 (issue 15); spec-decode cuda tests
# Issue "Elastic speculation" benchmark, one call (~7 min) on an H200 with the default model's
# GGUF halves: every engine in one run so the ratios compare like with like.
#   tests:  the `cuda` tests of tests/v1/spec_decode and tests/v1/engine
#   main:   no-spec sync/async, n-gram and SmolLM2-drafting-itself at k=4, fixed and adaptive,
#           code and chat prompts, batch 1/32/64/128, temperature 0
#   env: METHODS (bench_spec --methods), SKIP_TESTS=1, MAIN_S / EXTRA_S (time boxes; EXTRA_S=0 skips)
#   extra:  fixed k=2 and k=8 (the best fixed k the adaptive engine is compared with)
set -uo pipefail
have_gguf || { echo "spec_adaptive needs the default model's GGUF (.gguf/smol.part00 and .part01)"; exit 3; }
[ -n "${SKIP_TESTS:-}" ] || step 150 python3 -m pytest -q -m cuda --timeout 120 -p no:cacheprovider tests/v1/spec_decode \
  tests/v1/engine > "$R/cuda_tests.log" 2>&1
[ -f "$R/cuda_tests.log" ] && tail -4 "$R/cuda_tests.log"
step ${MAIN_S:-300} python3 -m tools.benchmarks.bench_spec --model "$SMOL_GGUF" --batches 1,32,64,128 \
  --temperatures 0 --ks 4 --methods ${METHODS:-none,ngram,ngram-adaptive,draft_model,draft_model-adaptive} \
  --max-tokens 128 --output "$R/bench_spec_adaptive.json" > "$R/bench_spec_adaptive.log" 2>&1
grep -E "tok/s|Error|error" "$R/bench_spec_adaptive.log" | tail -60
[ "${EXTRA_S:-90}" -gt 0 ] && step ${EXTRA_S:-90} python3 -m tools.benchmarks.bench_spec --model "$SMOL_GGUF" --batches 1,32,64,128 \
  --temperatures 0 --ks 2,8 --methods ngram,draft_model --max-tokens 128 \
  --output "$R/bench_spec_fixed_k.json" > "$R/bench_spec_fixed_k.log" 2>&1
[ -f "$R/bench_spec_fixed_k.log" ] && grep -E "tok/s|Error|error" "$R/bench_spec_fixed_k.log" | tail -40
