#!/usr/bin/env bash
# Seed 004, grid 1: adaptive draft length on/off over batch size x output length x temperature
# x k. One microbench JSON per point, sweeps/adaptive_grid/run{N}_r{R}_t{T}_temp{TEMP}_d{K}_
# adaptive{0,1}.json (N numbers the (R, T, TEMP, K) point in the full grid, so a --quick file
# has the same name as its full-grid twin), experiment.log, and summary.{md,csv,json} + plots.
# --llama adds the Llama-3-8B-shapes part (dummy weights, CONTROLLED acceptance) in
# sweeps/adaptive_grid_llama8b/.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/experiments/run_adaptive_grid.sh [--quick] [--llama] [--dry-run] [--force]
                                              [--out-dir DIR] [-- extra microbench flags]

Adaptive draft length (speculative_config.adaptive_draft_length via the microbench's
--adaptive-draft-length 0|1), every point run with 0 and with 1:
  requests 12, 36, 60 x max tokens 64, 128, 256 x temperature 0.0, 0.7 x k 10, 5, 15
  = 108 runs (54 points x adaptive 0/1), medium prompt set (code with repeated structure).

  --quick      requests 12, 64 tokens, T 0.0 and 0.7, k 10, 2 measured batches: 4 runs,
               about 2 minutes on one H200 (engine start-up dominates)
  --llama      also the Llama-3-8B-shapes part, DIR/adaptive_grid_llama8b/: a config-only
               Llama-3-8B folder with DUMMY weights (bf16), synthetic token-id prompts, n-gram
               drafts accepted at random with a CONTROLLED rate (--acceptance-rate; labelled
               "controlled" in every result, token quality meaningless): the engine's real
               8B shapes and kernels, with the acceptance the controller sees set by hand.
               acceptance 0.3, 0.6, 0.9 x requests 12, 36, 60 x k 10, 5 x adaptive 0/1, 128
               tokens, T 0.0 = 36 runs; with --quick: acceptance 0.3 and 0.9, requests 36, k 10,
               1 batch = 4 runs, about 4 more minutes on one H200 (LLAMA=1 does the same)
  --dry-run    print the commands (one per line) and run nothing
  --force      re-run points whose JSON already exists (default: skip them: resume)
  --out-dir    results root (default: sweeps/); this grid writes DIR/adaptive_grid/
  -h, --help   this text

Output: DIR/adaptive_grid/run{N}_r{R}_t{T}_temp{TEMP}_d{K}_adaptive{A}.json (microbench JSON:
.summary.per_mode[0].latency_avg_s, spec_num_draft_tokens, spec_acceptance_ratio, ...),
experiment.log (every run's output), summary.md / .csv / .json and plots/*.png (adaptive 1
vs its adaptive 0 twin, latency vs k, the controller's decisions: tools/experiments/
summarize.py). The --llama part: DIR/adaptive_grid_llama8b/run{N}_acc{A}_r{R}_t128_d{K}_
adaptive{A}.json and the same summary.

Environment (defaults in brackets):
  TARGET_MODEL          target model                     [the engine's default, SmolLM2-135M-Instruct]
  SPEC_METHOD           ngram | draft_model | eagle      [ngram: no trained EAGLE head exists yet]
  DRAFT_MODEL           drafter of draft_model / eagle   [the target itself]
  TENSOR_PARALLEL_SIZE  tensor-parallel size, both parts [1]
  LLAMA_MODEL           the --llama part's model folder  [a config-only Llama-3-8B, DIR/models/]
  SCENARIO              microbench prompt set            [medium]
  BATCHES / WARMUP      measured / warm-up batches       [3 / 1; --quick: 2 / 1]
  NWOR_MODE / SCV_MODE  the one engine mode of each run  [off / graph]
  RUN_TIMEOUT           seconds per run                  [1800; --quick: 150]
  LLAMA_RUN_TIMEOUT     seconds per --llama run          [1800; --quick: 300]
  PYTHON                interpreter                      [python3]
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
parse_common_args "$@"

REQUESTS=(12 36 60)
TOKENS=(64 128 256)
TEMPS=(0.0 0.7)
KS=(10 5 15)          # k = 10 first: run1 is the seed's run1_r12_t64_temp0.0_d10
if [ "$QUICK" = 1 ]; then
  Q_REQUESTS=" 12 " Q_TOKENS=" 64 " Q_TEMPS=" 0.0 0.7 " Q_KS=" 10 "
  BATCHES=${BATCHES:-2} RUN_TIMEOUT=${RUN_TIMEOUT:-150}
else
  Q_REQUESTS=" ${REQUESTS[*]} " Q_TOKENS=" ${TOKENS[*]} " Q_TEMPS=" ${TEMPS[*]} " Q_KS=" ${KS[*]} "
  BATCHES=${BATCHES:-3} RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
fi
WARMUP=${WARMUP:-1}
METHOD=${SPEC_METHOD:-ngram}
drafter_args "$METHOD"

setup_grid adaptive_grid
log "adaptive grid: method=$METHOD model=${TARGET_MODEL:-default} quick=$QUICK -> $GRID_DIR"
n=0
for r in "${REQUESTS[@]}"; do
  for t in "${TOKENS[@]}"; do
    for temp in "${TEMPS[@]}"; do
      for k in "${KS[@]}"; do
        n=$((n + 1))
        case "$Q_REQUESTS" in *" $r "*) ;; *) continue ;; esac
        case "$Q_TOKENS" in *" $t "*) ;; *) continue ;; esac
        case "$Q_TEMPS" in *" $temp "*) ;; *) continue ;; esac
        case "$Q_KS" in *" $k "*) ;; *) continue ;; esac
        for a in 0 1; do
          run_one "$GRID_DIR/run${n}_r${r}_t${t}_temp${temp}_d${k}_adaptive${a}.json" \
            --scenario "${SCENARIO:-medium}" --requests "$r" --batches "$BATCHES" \
            --warmup "$WARMUP" --max-tokens "$t" --temperature "$temp" --draft-tokens "$k" \
            "${DRAFTER[@]}" --adaptive-draft-length "$a" \
            --nwor-modes "${NWOR_MODE:-off}" --scv-modes "${SCV_MODE:-graph}"
        done
      done
    done
  done
done
rc=0
finish_grid || rc=1

if [ "$LLAMA" = 1 ]; then
  ACCS=(0.3 0.6 0.9)
  L_REQUESTS=(12 36 60)
  L_KS=(10 5)
  if [ "$QUICK" = 1 ]; then
    Q_ACCS=" 0.3 0.9 " Q_REQUESTS=" 36 " Q_KS=" 10 " L_BATCHES=1
    RUN_TIMEOUT=${LLAMA_RUN_TIMEOUT:-300}
  else
    Q_ACCS=" ${ACCS[*]} " Q_REQUESTS=" ${L_REQUESTS[*]} " Q_KS=" ${L_KS[*]} "
    L_BATCHES=2 RUN_TIMEOUT=${LLAMA_RUN_TIMEOUT:-1800}
  fi
  setup_grid adaptive_grid_llama8b
  llama_args
  # the model is the Llama folder (TARGET_MODEL / DRAFT_MODEL do not apply); TP still does
  MODEL_ARGS=(${TENSOR_PARALLEL_SIZE:+--tensor-parallel-size "$TENSOR_PARALLEL_SIZE"})
  log "adaptive grid, Llama-3-8B shapes (dummy weights, CONTROLLED acceptance): quick=$QUICK" \
      "-> $GRID_DIR"
  n=0
  for acc in "${ACCS[@]}"; do
    for r in "${L_REQUESTS[@]}"; do
      for k in "${L_KS[@]}"; do
        n=$((n + 1))
        case "$Q_ACCS" in *" $acc "*) ;; *) continue ;; esac
        case "$Q_REQUESTS" in *" $r "*) ;; *) continue ;; esac
        case "$Q_KS" in *" $k "*) ;; *) continue ;; esac
        for a in 0 1; do
          run_one "$GRID_DIR/run${n}_acc${acc}_r${r}_t128_d${k}_adaptive${a}.json" \
            "${LLAMA_ARGS[@]}" --acceptance-rate "$acc" --requests "$r" \
            --batches "$L_BATCHES" --warmup "$WARMUP" --max-tokens 128 --temperature 0.0 \
            --draft-tokens "$k" --adaptive-draft-length "$a" \
            --nwor-modes "${NWOR_MODE:-off}" --scv-modes "${SCV_MODE:-graph}"
        done
      done
    done
  done
  finish_grid || rc=1
fi
exit $rc
