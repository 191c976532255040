#!/usr/bin/env bash
# NWOR latency sweep over batch size x k (x temperature): tools/benchmarks/bench_nwor.py, the
# one NWOR latency harness (both engines in one process, interleaved rounds, GPU time per step
# from CUDA events, rounds until the 95% CI of stage/off is within +-0.5%). One JSON per
# temperature, $OUT/latency_nwor_t{T}.json, and its table on stdout. See docs/profiling.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/profiling/run_benchmark_sweep.sh [extra bench_nwor.py flags...]

Environment (defaults in brackets):
  OUT          output folder                                   [sweeps]
  BATCHES      batch sizes                                     ["8 32"]
  KS           draft tokens k                                  ["2 4 8"]
  TEMPS        temperatures                                    ["0.0"]
  MODELS       bench_nwor.py --models (smollm2, llama3-8b-dummy) [smollm2]
  TARGET_MODEL the smollm2 model (path or name)                [SmolLM2-135M-Instruct]
  PYTHON       interpreter                                     [python3]
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-sweeps}
BATCHES=${BATCHES:-"8 32"}
KS=${KS:-"2 4 8"}
TEMPS=${TEMPS:-"0.0"}
MODELS=${MODELS:-smollm2}
mkdir -p "$OUT"

rc=0
for t in $TEMPS; do
  f="$OUT/latency_nwor_t${t}.json"
  echo "== T=$t batches=[$BATCHES] k=[$KS] -> $f" >&2
  "$PY" -m tools.benchmarks.bench_nwor --models "$MODELS" \
    --model "${TARGET_MODEL:-SmolLM2-135M-Instruct}" --batches "$(echo $BATCHES | tr ' ' ,)" \
    --ks "$(echo $KS | tr ' ' ,)" --temperature "$t" --output "$f" "$@" || rc=1
done
exit $rc
