#!/usr/bin/env bash
# run_ncu.sh's CSVs -> per-stage metrics JSON (parse_ncu_results.py) -> roofline PNG + PDF
# (plot_roofline.py). Parameters must match the profiling run (they name its folder).
set -uo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/roofline/analyze_results.sh [--P 512] [--batch 1] [--model gpt2-medium]
           [--dtype float16] [--gpu H200] [--in-dir DIR] [--out-dir DIR]
           [--peaks-json FILE] [--formats "png pdf"]
  --in-dir      run_ncu.sh's folder    [tools/roofline/ncu_reports/<model>_P<P>_b<batch>]
  --out-dir     metrics JSON and plots [tools/roofline/results/<model>_P<P>_b<batch>]
  --gpu         A6000 | A100-40GB | A100-80GB | H100-80GB | H200            [H200]
  --peaks-json  measure_peaks.py output: the measured roof beside the datasheet's
Writes <out-dir>/{v0_prefill,v1_prefill,v1_decode}_metrics.json, roofline.png, roofline.pdf,
roofline_summary.json.
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
P=512 BATCH=1 MODEL=gpt2-medium DTYPE=float16 GPU=H200 IN_DIR="" OUT_DIR="" PEAKS=""
FORMATS="png pdf"
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --P) P=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --gpu) GPU=$2; shift 2 ;;
    --in-dir) IN_DIR=$2; shift 2 ;;
    --out-dir) OUT_DIR=$2; shift 2 ;;
    --peaks-json) PEAKS=$2; shift 2 ;;
    --formats) FORMATS=$2; shift 2 ;;
    *) echo "analyze_results.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
TAG=${MODEL}_P${P}_b${BATCH}
IN_DIR=${IN_DIR:-$ROOT/tools/roofline/ncu_reports/$TAG}
OUT_DIR=${OUT_DIR:-$ROOT/tools/roofline/results/$TAG}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"

plot_args=()
rc=0
for stage in v0_prefill v1_prefill v1_decode; do
  csv="$IN_DIR/$stage.csv"
  if [ ! -s "$csv" ]; then
    echo "analyze: no $csv (stage not profiled): left out of the plot" >&2
    rc=1
    continue
  fi
  prof=()
  [ -f "$IN_DIR/stages.json" ] && prof=(--profile-json "$IN_DIR/stages.json")
  if "$PY" "$ROOT/tools/roofline/parse_ncu_results.py" --input "$csv" --stage "$stage" \
      "${prof[@]}" --output "$OUT_DIR/${stage}_metrics.json"; then
    plot_args+=("--$stage" "$OUT_DIR/${stage}_metrics.json")
  else
    rc=1
  fi
done
[ ${#plot_args[@]} -eq 0 ] && { echo "analyze: nothing to plot" >&2; exit 1; }
peaks=()
[ -n "$PEAKS" ] && peaks=(--peaks-json "$PEAKS")
# shellcheck disable=SC2086
"$PY" "$ROOT/tools/roofline/plot_roofline.py" "${plot_args[@]}" --gpu "$GPU" --dtype "$DTYPE" \
  --model "$MODEL" --batch-size "$BATCH" --seq-length "$P" --formats $FORMATS "${peaks[@]}" \
  --output "$OUT_DIR/roofline" || rc=1
exit $rc
