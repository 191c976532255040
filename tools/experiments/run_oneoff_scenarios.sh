#!/usr/bin/env bash
# Seed 004, one-off scenarios: four representative deployments, each with its own prompt set
# (tools/profiling/prompts/<scenario>.json), run with the features on and once more with them
# off (the _baseline twin the summary compares against). sweeps/oneoff_scenarios/
# scenario_{a,b,c,d}_<name>.json (+ _baseline.json), experiment.log, summary.{csv,json}.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/experiments/run_oneoff_scenarios.sh [--quick] [--llama] [--dry-run] [--force]
                                                 [--out-dir DIR] [-- extra microbench flags]

  scenario  prompt set         requests tokens  T    drafter              features on
  A code completion  code_completion   12   64  0.0  ngram, k 10          adaptive
  B chatbot          chatbot           36  128  0.7  ngram, k 10          adaptive
  C high throughput  high_throughput   60  128  0.0  draft_model, k 5     adaptive + confidence
                                                     (target drafts for   threshold 0.5, under
                                                     itself)              ncu when found
  D creative writing creative_writing  12  256  0.7  ngram, k 10          adaptive
Each scenario also runs as <name>_baseline (--adaptive-draft-length 0 --confidence-threshold
0.0, same workload, ncu for C too): 8 runs.

  --quick      scenarios B and C (+ baselines), 1 measured batch, no ncu: 4 runs, about 2
               minutes on one H200
  --llama      accepted (run_all passes it on) but adds nothing here: the scenarios are about
               their prompt sets, which dummy weights cannot continue meaningfully
  --dry-run    print the commands (one per line) and run nothing
  --force      re-run scenarios whose JSON already exists (default: skip them: resume)
  --out-dir    results root (default: sweeps/); this script writes DIR/oneoff_scenarios/
  -h, --help   this text

Output: DIR/oneoff_scenarios/scenario_a_code_completion.json, scenario_b_chatbot.json,
scenario_c_high_throughput.json, scenario_d_creative_writing.json and their *_baseline.json
twins, experiment.log, summary.md / .csv / .json (each scenario vs its baseline), plots/.

Environment (defaults in brackets):
  TARGET_MODEL          target model                     [the engine's default, SmolLM2-135M-Instruct]
  SPEC_METHOD           every scenario's drafter         [ngram; C: draft_model]
  DRAFT_MODEL           drafter of draft_model / eagle   [the target itself]
  TENSOR_PARALLEL_SIZE  tensor-parallel size             [1]
  DRAFT_TOKENS          k of every scenario              [10; C: 5]
  BATCHES / WARMUP      measured / warm-up batches       [2 / 1; --quick: 1 / 1]
  NWOR_MODE / SCV_MODE  the one engine mode of each run  [off / graph]
  NCU / NCU_PATH / NCU_PASSES / NCU_TIMEOUT  as for run_early_exit_grid.sh (scenario C)
  RUN_TIMEOUT           seconds per run                  [3600; --quick: 150]
  PYTHON                interpreter                      [python3]
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
parse_common_args "$@"

if [ "$QUICK" = 1 ]; then
  SCENARIOS=" b c " BATCHES=${BATCHES:-1} RUN_TIMEOUT=${RUN_TIMEOUT:-150} NCU=0
else
  SCENARIOS=" a b c d " BATCHES=${BATCHES:-2} RUN_TIMEOUT=${RUN_TIMEOUT:-3600}
fi
WARMUP=${WARMUP:-1}

setup_grid oneoff_scenarios
if [ "$LLAMA" = 1 ]; then
  log "--llama: this grid has no Llama-3-8B-shapes part: the scenarios' prompt sets mean nothing to dummy weights"
fi
C_NCU=()
if ncu_available; then
  C_NCU=(--ncu --ncu-passes "${NCU_PASSES:-steps,kernels}" --ncu-timeout "${NCU_TIMEOUT:-3600}"
         ${NCU_PATH:+--ncu-path "$NCU_PATH"})
  log "ncu found: scenario C also runs under Nsight Compute"
elif [ "$QUICK" = 1 ]; then
  log "--quick: no ncu"
else
  log "Nsight Compute (ncu) not found or NCU=0: scenario C runs without ncu"
fi
log "one-off scenarios: [${SCENARIOS}] quick=$QUICK -> $GRID_DIR"

# scenario LETTER NAME REQUESTS TOKENS TEMP METHOD K FEATURE_FLAGS...
scenario() {
  local letter=$1 name=$2 r=$3 t=$4 temp=$5 method=$6 k=$7; shift 7
  case "$SCENARIOS" in *" $letter "*) ;; *) return 0 ;; esac
  drafter_args "${SPEC_METHOD:-$method}"
  local extra=()
  if [ "$letter" = c ]; then extra=("${C_NCU[@]}"); fi
  local common=(--scenario "$name" --requests "$r" --batches "$BATCHES" --warmup "$WARMUP"
                --max-tokens "$t" --temperature "$temp" --draft-tokens "${DRAFT_TOKENS:-$k}"
                "${DRAFTER[@]}" --nwor-modes "${NWOR_MODE:-off}"
                --scv-modes "${SCV_MODE:-graph}" "${extra[@]}")
  run_one "$GRID_DIR/scenario_${letter}_${name}.json" "${common[@]}" "$@"
  run_one "$GRID_DIR/scenario_${letter}_${name}_baseline.json" "${common[@]}" \
    --adaptive-draft-length 0 --confidence-threshold 0.0
}

scenario a code_completion  12  64 0.0 ngram       10 --adaptive-draft-length 1
scenario b chatbot          36 128 0.7 ngram       10 --adaptive-draft-length 1
scenario c high_throughput  60 128 0.0 draft_model  5 --adaptive-draft-length 1 \
  --confidence-threshold 0.5
scenario d creative_writing 12 256 0.7 ngram       10 --adaptive-draft-length 1
finish_grid
