# what: seed 004's experiments on SmolLM2 (tools/experiments; default --quick: 10 runs, ~7 min)
# Arguments: run_all_experiments.sh's (default --quick; --dry-run to see the commands).
# Results: $R/{adaptive_grid,early_exit_grid,oneoff_scenarios}/, master_experiment.log.
set -uo pipefail
have_gguf || { echo "experiments need the default model's GGUF (.gguf/smol.part00 and .part01)"; exit 3; }
export TARGET_MODEL=$PWD/$SMOL_GGUF
[ $# -gt 0 ] || set -- --quick
step ${EXPERIMENTS_TIMEOUT:-530} bash tools/experiments/run_all_experiments.sh "$@" \
  --out-dir "$R" -- --max-model-len 1024 > "$R/run_all.log" 2>&1
grep -v "^ *INFO\|^\[.*\] run: " "$R/run_all.log" | tail -60
