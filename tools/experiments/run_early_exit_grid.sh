#!/usr/bin/env bash
# Seed 004, grid 2: confidence early exit (speculative_config.confidence_threshold) under
# Nsight Compute: thresholds x temperature x short / long. One microbench JSON per run,
# sweeps/early_exit_grid/run{N}_r{R}_t{T}_temp{TEMP}_thresh{X}.json (ncu_metrics filled when
# ncu is there), experiment.log, summary.{csv,json}.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/experiments/run_early_exit_grid.sh [--quick] [--llama] [--dry-run] [--force]
                                                [--out-dir DIR] [-- extra microbench flags]

Confidence early exit (the microbench's --confidence-threshold X): a model drafter stops a
request's draft once its top-1 probability falls below X. Grid, N in this order:
  temperature 0.0, 0.7 x {short: short prompts, 36 requests, 128 tokens;
                          long: long prompts, 36 requests, 256 tokens} x threshold 0.0, 0.3,
  0.5, 0.7 = 16 runs (run1 = r36_t128_temp0.0_thresh0.0, run3 = ..._thresh0.5: the seed's
  baseline / default-threshold pair), each with --ncu (DRAM bytes over whole decode steps and
  the KV-write kernels' L2 writes) when Nsight Compute is found; without it the script says so
  and runs the same grid without ncu.

The drafter must give probabilities (draft_model or eagle; ngram has none and the engine
rejects a threshold > 0). No trained EAGLE head exists yet, so the default is draft_model with
the target itself as drafter: SmolLM2-135M drafting for SmolLM2-135M. Its greedy drafts agree
with the target at T=0 almost always, so acceptance is near 1 there and the threshold mostly
cuts drafts that would have been accepted; set DRAFT_MODEL (and SPEC_METHOD=eagle) for a real
drafter.

  --quick      thresholds 0.0 and 0.5, T 0.0, short only, 1 measured batch, ncu (if found) on
               the KV-write / commit kernels only, at most 60 of them per run: 2 runs, about
               3 minutes on one H200 (the ncu numbers are a plumbing check, not a result)
  --llama      accepted (run_all passes it on) but adds nothing here: the threshold acts on the
               drafter's top-1 probability, and a dummy-weight drafter has none worth
               measuring (near-uniform over 128k tokens: every draft stops at once)
  --dry-run    print the commands (one per line) and run nothing
  --force      re-run points whose JSON already exists (default: skip them: resume)
  --out-dir    results root (default: sweeps/); this grid writes DIR/early_exit_grid/
  -h, --help   this text

Output: DIR/early_exit_grid/run{N}_r{R}_t{T}_temp{TEMP}_thresh{X}.json, with
.summary.per_mode[0].ncu_metrics."dram__bytes_write.sum" (whole decode steps; see
ncu_metrics.totals_cover) and spec_draft_tokens_short_of_k (the tokens the threshold stopped,
plus drafts cut by max_tokens, the same in every run of a point); run{N}_..._ncu/ (reports,
CSVs, ncu logs); experiment.log (grep "Confidence early exit stats"); summary.md / .csv / .json
(each threshold vs its threshold-0.0 twin) and plots/*.png (latency and DRAM writes vs
threshold).

Environment (defaults in brackets):
  TARGET_MODEL          target model                     [the engine's default, SmolLM2-135M-Instruct]
  SPEC_METHOD           draft_model | eagle              [draft_model]
  DRAFT_MODEL           the drafter                      [the target itself]
  TENSOR_PARALLEL_SIZE  tensor-parallel size             [1]
  DRAFT_TOKENS          k                                [5]
  BATCHES / WARMUP      measured / warm-up batches       [2 / 1; --quick: 1 / 1]
  NWOR_MODE / SCV_MODE  the one engine mode of each run  [off / graph]
  NCU                   0: never ncu; auto: when found   [auto]
  NCU_PATH              the ncu binary                   [PATH, /usr/local/cuda/bin, ...]
  NCU_PASSES            steps,kernels (see --ncu-passes) [steps,kernels; --quick: kernels]
  NCU_TIMEOUT           seconds per ncu pass             [3600; --quick: 100]
  RUN_TIMEOUT           seconds per run (ncu included)   [7200; --quick: 220]
  PYTHON                interpreter                      [python3]
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
parse_common_args "$@"

TEMPS=(0.0 0.7)
LENGTHS=(short long)
THRESHOLDS=(0.0 0.3 0.5 0.7)
NCU_FLAGS=()
if [ "$QUICK" = 1 ]; then
  Q_TEMPS=" 0.0 " Q_LENGTHS=" short " Q_THRESHOLDS=" 0.0 0.5 "
  BATCHES=${BATCHES:-1} RUN_TIMEOUT=${RUN_TIMEOUT:-220}
  NCU_PASSES=${NCU_PASSES:-kernels} NCU_TIMEOUT=${NCU_TIMEOUT:-100}
  NCU_FLAGS+=(--ncu-launch-count 60 --ncu-kernel-regex '_rope_kv_write|_write_kv|_commit_staged')
else
  Q_TEMPS=" ${TEMPS[*]} " Q_LENGTHS=" ${LENGTHS[*]} " Q_THRESHOLDS=" ${THRESHOLDS[*]} "
  BATCHES=${BATCHES:-2} RUN_TIMEOUT=${RUN_TIMEOUT:-7200}
fi
WARMUP=${WARMUP:-1}
METHOD=${SPEC_METHOD:-draft_model}
drafter_args "$METHOD"

setup_grid early_exit_grid
if [ "$LLAMA" = 1 ]; then
  log "--llama: this grid has no Llama-3-8B-shapes part: dummy weights give the drafter no meaningful confidence"
fi
if ncu_available; then
  NCU_FLAGS=(--ncu --ncu-passes "${NCU_PASSES:-steps,kernels}"
             --ncu-timeout "${NCU_TIMEOUT:-3600}" ${NCU_PATH:+--ncu-path "$NCU_PATH"}
             "${NCU_FLAGS[@]}")
  log "ncu found: every run also runs under Nsight Compute (passes ${NCU_PASSES:-steps,kernels})"
else
  NCU_FLAGS=()
  if [ "${NCU:-auto}" = 0 ]; then
    log "NCU=0: running without Nsight Compute (ncu_metrics stay empty)"
  else
    log "Nsight Compute (ncu) not found (PATH, /usr/local/cuda/bin, /opt/nvidia/nsight-compute;" \
        "NCU_PATH=${NCU_PATH:-unset}): running the grid WITHOUT ncu, ncu_metrics stay empty"
  fi
fi
log "early-exit grid: method=$METHOD drafter=${DRAFTER[*]} quick=$QUICK -> $GRID_DIR"
n=0
for temp in "${TEMPS[@]}"; do
  for len in "${LENGTHS[@]}"; do
    if [ "$len" = short ]; then scen=short r=36 t=128; else scen=long r=36 t=256; fi
    for x in "${THRESHOLDS[@]}"; do
      n=$((n + 1))
      case "$Q_TEMPS" in *" $temp "*) ;; *) continue ;; esac
      case "$Q_LENGTHS" in *" $len "*) ;; *) continue ;; esac
      case "$Q_THRESHOLDS" in *" $x "*) ;; *) continue ;; esac
      run_one "$GRID_DIR/run${n}_r${r}_t${t}_temp${temp}_thresh${x}.json" \
        --scenario "$scen" --requests "$r" --batches "$BATCHES" --warmup "$WARMUP" \
        --max-tokens "$t" --temperature "$temp" --draft-tokens "${DRAFT_TOKENS:-5}" \
        "${DRAFTER[@]}" --confidence-threshold "$x" \
        --nwor-modes "${NWOR_MODE:-off}" --scv-modes "${SCV_MODE:-graph}" "${NCU_FLAGS[@]}"
    done
  done
done
finish_grid
