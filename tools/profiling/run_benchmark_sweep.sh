#!/usr/bin/env bash
# Latency-only sweep over batch size x k x temperature (no profiler attached): one microbench
# JSON per point, sweeps/latency_b{B}_k{K}_t{T}.json, and a summary table. See
# docs/profiling.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/profiling/run_benchmark_sweep.sh [extra run_nwor_microbench.py flags...]

Environment (defaults in brackets):
  OUT          output folder                 [sweeps]
  BATCHES      requests per batch            ["1 8 32"]
  KS           draft tokens k                ["2 4 8"]
  TEMPS        temperatures                  ["0.0 0.7"]
  NWOR_MODES   microbench --nwor-modes       [off,stage]
  SCV_MODES    microbench --scv-modes        [graph]
  SCENARIO     prompt set                    [short]
  NUM_BATCHES  measured batches per point    [4]
  PYTHON       interpreter                   [python3]
  TARGET_MODEL / DRAFT_MODEL / TENSOR_PARALLEL_SIZE as for the microbench.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-sweeps}
BATCHES=${BATCHES:-"1 8 32"}
KS=${KS:-"2 4 8"}
TEMPS=${TEMPS:-"0.0 0.7"}
NWOR=${NWOR_MODES:-off,stage}
SCV=${SCV_MODES:-graph}
SCENARIO=${SCENARIO:-short}
NUM_BATCHES=${NUM_BATCHES:-4}
mkdir -p "$OUT"

rc=0
files=()
for b in $BATCHES; do
  for k in $KS; do
    for t in $TEMPS; do
      f="$OUT/latency_b${b}_k${k}_t${t}.json"
      echo "== batch=$b k=$k T=$t -> $f" >&2
      "$PY" -m tools.profiling.run_nwor_microbench --scenario "$SCENARIO" --requests "$b" \
        --batches "$NUM_BATCHES" --draft-tokens "$k" --temperature "$t" \
        --nwor-modes "$NWOR" --scv-modes "$SCV" --output "$f" --no-progress "$@" || rc=1
      [ -f "$f" ] && files+=("$f")
    done
  done
done
if [ ${#files[@]} -gt 0 ]; then
  "$PY" -m tools.profiling.sweep_summary "${files[@]}" | tee "$OUT/latency_sweep_summary.txt"
fi
exit $rc
