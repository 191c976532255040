#!/usr/bin/env bash
# Seed 004: every experiment in turn (adaptive grid, early-exit grid, one-off scenarios), each
# into its own folder under the results root, the whole session in master_experiment.log.
set -uo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/experiments/run_all_experiments.sh [--quick] [--llama] [--dry-run] [--force]
                                                [--out-dir DIR] [-- extra microbench flags]

Runs, in this order, each with the same flags (see their --help):
  tools/experiments/run_adaptive_grid.sh      -> DIR/adaptive_grid/     (108 runs; --quick 4)
  tools/experiments/run_early_exit_grid.sh    -> DIR/early_exit_grid/   (16 runs under ncu when
                                                                         found; --quick 2)
  tools/experiments/run_oneoff_scenarios.sh   -> DIR/oneoff_scenarios/  (8 runs; --quick 4)
and logs the session to DIR/master_experiment.log. A failed run does not stop the others;
the exit status is non-zero if any failed. Finished runs are skipped (resume) unless --force.

  --quick      the reduced grids: 10 runs, about 7 minutes on one H200
  --llama      also the adaptive grid's Llama-3-8B-shapes part (dummy weights, CONTROLLED
               acceptance) -> DIR/adaptive_grid_llama8b/ (36 runs; --quick 4, about 4 more
               minutes); the other two scripts have no such part (their --help says why)
  --dry-run    print every command (one per line) and run nothing
  --force      re-run finished runs
  --out-dir    results root (default: sweeps/)
  -h, --help   this text

Environment: TARGET_MODEL, DRAFT_MODEL, SPEC_METHOD, TENSOR_PARALLEL_SIZE, LLAMA (1 = --llama),
LLAMA_MODEL, NCU, NCU_PATH, PYTHON, ... as documented by each script (docs/experiments.md).
Ctrl-C / kill stops the running microbench too; finished results stay, a rerun resumes.
USAGE
}

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
parse_common_args "$@"
# what each script gets: the same switches, the absolute results root, the extra flags last
FWD=(--out-dir "$OUT_ROOT")
if [ "$QUICK" = 1 ]; then FWD+=(--quick); fi
if [ "$DRY_RUN" = 1 ]; then FWD+=(--dry-run); fi
if [ "$FORCE" = 1 ]; then FWD+=(--force); fi
if [ "$LLAMA" = 1 ]; then FWD+=(--llama); fi
if [ ${#EXTRA[@]} -gt 0 ]; then FWD+=(-- "${EXTRA[@]}"); fi
HERE="$ROOT/tools/experiments"
MASTER="$OUT_ROOT/master_experiment.log"
LOG=$MASTER             # where _lib.sh's log (the interrupt message) writes
if [ "$DRY_RUN" = 0 ]; then mkdir -p "$OUT_ROOT"; fi

say() {
  if [ "$DRY_RUN" = 1 ]; then echo "# $*"; else echo "[$(date '+%F %T')] $*" | tee -a "$MASTER"; fi
}

rc=0
say "seed-004 experiments: quick=$QUICK out=$OUT_ROOT git=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
for script in run_adaptive_grid.sh run_early_exit_grid.sh run_oneoff_scenarios.sh; do
  t0=$SECONDS
  say "== $script"
  if [ "$DRY_RUN" = 1 ]; then
    bash "$HERE/$script" "${FWD[@]}" || rc=1
  else
    # in the background so that an interrupt reaches this script's trap (_lib.sh), which
    # passes it on to the grid script (and that to its microbench)
    bash "$HERE/$script" "${FWD[@]}" > >(tee -a "$MASTER") 2>&1 &
    CHILD=$! CURRENT=$script
    status=0
    wait "$CHILD" || status=$?
    CHILD="" CURRENT=""
    [ "$status" = 0 ] || rc=1
    say "== $script finished (exit $status, $((SECONDS - t0)) s)"
  fi
done
say "all done (exit $rc); results under $OUT_ROOT"
exit $rc
