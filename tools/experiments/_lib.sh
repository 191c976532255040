# Shared by the seed-004 experiment scripts (sourced, not run): argument parsing, one
# microbench run with resume / dry-run / timeout, logging. See docs/experiments.md.
# The sourcing script defines usage() before calling parse_common_args.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CALLER_PWD=$PWD
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DRY_RUN=0
QUICK=0
FORCE=0
LLAMA=${LLAMA:-0}
OUT_ROOT=${OUT_DIR:-}
EXTRA=()
N_RUN=0
N_SKIP=0
N_FAIL=0
N_DONE=0

parse_common_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --quick) QUICK=1 ;;
      --force) FORCE=1 ;;
      --llama) LLAMA=1 ;;
      --out-dir) [ $# -ge 2 ] || { echo "--out-dir needs a folder" >&2; exit 2; }
                 OUT_ROOT=$2; shift ;;
      --out-dir=*) OUT_ROOT=${1#*=} ;;
      --) shift; EXTRA=("$@"); break ;;
      *) echo "unknown argument: $1 (see --help; microbench flags go after --)" >&2; exit 2 ;;
    esac
    shift
  done
  # --out-dir / OUT_DIR relative to where the script was started; default: the repo's sweeps/
  case "$OUT_ROOT" in
    "") OUT_ROOT="$ROOT/sweeps" ;;
    /*) ;;
    *) OUT_ROOT="$CALLER_PWD/$OUT_ROOT" ;;
  esac
  # every command names its model and TP size when they were set, so the log alone repeats a run
  MODEL_ARGS=()
  if [ -n "${TARGET_MODEL:-}" ]; then MODEL_ARGS+=(--target-model "$TARGET_MODEL"); fi
  if [ -n "${TENSOR_PARALLEL_SIZE:-}" ]; then
    MODEL_ARGS+=(--tensor-parallel-size "$TENSOR_PARALLEL_SIZE")
  fi
}

# log MESSAGE: to the terminal and, unless dry-run, to $LOG
log() {
  local line
  line="[$(date '+%F %T')] $*"
  if [ "$DRY_RUN" = 1 ]; then echo "# $*"; return; fi
  echo "$line"
  if [ -n "${LOG:-}" ]; then echo "$line" >>"$LOG"; fi
}

# setup_grid NAME: $GRID_DIR = $OUT_ROOT/NAME, $LOG = its experiment.log, counts reset
setup_grid() {
  GRID_DIR="$OUT_ROOT/$1"
  LOG="$GRID_DIR/experiment.log"
  N_RUN=0 N_SKIP=0 N_FAIL=0 N_DONE=0
  if [ "$DRY_RUN" = 0 ]; then mkdir -p "$GRID_DIR"; fi
}

# default_model: the engine's embedded default model name (TARGET_MODEL wins)
default_model() {
  if [ -n "${TARGET_MODEL:-}" ]; then echo "$TARGET_MODEL"; return; fi
  "$PY" -c "from vllm.engine.arg_utils import DEFAULT_MODEL; print(DEFAULT_MODEL)"
}

# drafter_args METHOD: --spec-method and, for a model drafter, --draft-model (DRAFT_MODEL, else
# the target itself: SmolLM2 drafting for SmolLM2 until a trained EAGLE head exists)
drafter_args() {
  local method=$1
  DRAFTER=(--spec-method "$method")
  if [ "$method" != ngram ]; then
    DRAFTER+=(--draft-model "${DRAFT_MODEL:-$(default_model)}")
  fi
}

# llama_args: $LLAMA_ARGS, the microbench flags of the Llama-3-8B-shapes runs: a config-only
# folder (LLAMA_MODEL, else made under DIR/models/), dummy weights in bf16, synthetic prompts
# (token ids), n-gram drafts with a CONTROLLED acceptance rate (each run adds
# --acceptance-rate): the engine's real shapes and kernels, not real acceptance
llama_args() {
  local folder=${LLAMA_MODEL:-$OUT_ROOT/models/llama3-8b-shapes}
  if [ "$DRY_RUN" = 0 ] && [ -z "${LLAMA_MODEL:-}" ]; then
    folder=$("$PY" -c "import sys; from tools.common import llama3_8b_folder as f
print(f(sys.argv[1]))" "$OUT_ROOT/models")
  fi
  LLAMA_ARGS=(--target-model "$folder" --load-format dummy --dtype bfloat16
              --scenario synthetic --max-model-len 1024 --spec-method ngram)
}

# ncu_available: 0 when Nsight Compute is found (NCU=0 turns it off, NCU_PATH points at it)
ncu_available() {
  [ "${NCU:-auto}" != 0 ] || return 1
  "$PY" -c "import sys; from tools.profiling import ncu; ncu.find_ncu(sys.argv[1] or None)" \
    "${NCU_PATH:-}" >/dev/null 2>&1
}

# result_ok JSON: the file is a microbench result whose every mode ran (resume skips it)
result_ok() {
  [ -s "$1" ] || return 1
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import json, sys
per = json.load(open(sys.argv[1]))["summary"]["per_mode"]
doc = json.load(open(sys.argv[1]))
per = doc["summary"]["per_mode"]
ok = bool(per) and all("error" not in e for e in per)
if doc["config"].get("ncu"):   # written once before ncu runs: done only with its metrics
    ok = ok and all(e.get("ncu_metrics") and "error" not in e["ncu_metrics"] for e in per)
sys.exit(0 if ok else 1)
PYEOF
}

# An interrupt (Ctrl-C, kill, timeout of the whole session) stops the running microbench too:
# it runs under `timeout`, which leads its own process group, so the signal is passed on to it
# here. Results are written atomically (tools/common.write_json), so what exists is complete,
# and a rerun skips it.
# The background jobs (`jobs -p`) are signalled as well as $CHILD: a signal that lands between
# `timeout ... &` and `CHILD=$!` runs this trap before CHILD is set, and the run started just
# then must not be left running on its own.
CHILD=""
CURRENT=""
on_signal() {
  local pid
  for pid in $CHILD $(jobs -p); do
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  log "interrupted (SIG$1)${CURRENT:+ during $CURRENT}: finished results are kept; rerun to resume"
  exit $((128 + $2))
}
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM
trap 'on_signal HUP 1' HUP

# run_one OUT_JSON MICROBENCH_ARGS...: one microbench run (skipped when OUT_JSON is done)
run_one() {
  local out=$1; shift
  local cmd=("$PY" -m tools.profiling.run_nwor_microbench "${MODEL_ARGS[@]}" "$@"
             --output "$out" --no-progress "${EXTRA[@]}")
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "${cmd[@]}" | sed 's/ $//'
    echo
    return 0
  fi
  if [ "$FORCE" = 0 ] && result_ok "$out"; then
    log "skip (done): $out"
    N_SKIP=$((N_SKIP + 1))
    return 0
  fi
  N_RUN=$((N_RUN + 1))
  log "run: $(printf '%q ' "${cmd[@]}")"
  local t0=$SECONDS rc=0
  CURRENT=$out
  timeout -k 30 "${RUN_TIMEOUT}" "${cmd[@]}" >>"$LOG" 2>&1 </dev/null &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD="" CURRENT=""
  if [ "$rc" = 0 ]; then
    N_DONE=$((N_DONE + 1))
    log "ok ($((SECONDS - t0)) s): $out"
  else
    N_FAIL=$((N_FAIL + 1))
    if [ "$rc" = 124 ]; then log "TIMEOUT after ${RUN_TIMEOUT} s: $out"; fi
    log "FAILED (exit $rc, $((SECONDS - t0)) s): $out; last lines of $LOG:"
    tail -n 15 "$LOG" | sed 's/^/    /'
  fi
}

# finish_grid: the grid's summary (tools/experiments/summarize.py) and the exit status
finish_grid() {
  local cmd=("$PY" -m tools.experiments.summarize "$GRID_DIR")
  if [ "$DRY_RUN" = 1 ]; then
    echo "# then: $(printf '%q ' "${cmd[@]}")"
    return 0
  fi
  log "done: $N_DONE ran, $N_SKIP skipped (already done), $N_FAIL failed"
  "${cmd[@]}" 2>&1 | tee -a "$LOG" || true
  [ "$N_FAIL" = 0 ]
}
