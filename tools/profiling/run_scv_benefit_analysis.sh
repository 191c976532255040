#!/usr/bin/env bash
# SCV benefit analysis: per SCV mode, kernel launches, graph launches, syncs, CUDA API time,
# host time in scv_compute_mask and GPU time of the mask computation (torch.profiler traces,
# Chrome JSON: open in https://ui.perfetto.dev), end-to-end tokens/s per mode from the
# microbench, and Nsight Systems reports where nsys works. See docs/profiling.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/profiling/run_scv_benefit_analysis.sh [extra scv_benefit.py flags...]

Environment (defaults in brackets):
  OUT      output folder                                   [sweeps/scv_benefit_analysis]
  E2E      1: end-to-end tokens/s per SCV mode (microbench) [1]
  E2E_ARGS microbench flags for the e2e runs    ["--scenario short --requests 8 --batches 4"]
  NSYS     1: one nsys report per mode, where nsys works    [1]
  PYTHON   interpreter                                      [python3]
Outputs: scv_benefit_summary.json, scv_<mode>_trace.json, e2e_microbench.json,
scv_<mode>_nsys.nsys-rep (+ stats CSVs) when nsys works.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-sweeps/scv_benefit_analysis}
E2E=${E2E:-1}
NSYS=${NSYS:-1}
E2E_ARGS=${E2E_ARGS:-"--scenario short --requests 8 --batches 4"}
flags=(--output-dir "$OUT")
[ "$E2E" = 1 ] && flags+=(--e2e --e2e-args "$E2E_ARGS")
[ "$NSYS" = 1 ] && flags+=(--nsys)
exec "$PY" -m tools.profiling.scv_benefit "${flags[@]}" "$@"
