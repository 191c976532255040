#!/usr/bin/env bash
# Nsight Compute over the three stages of profile_decode_step.py (V0 prefill, V1 prefill,
# V1 decode), one ncu run per stage: kernel replay of every kernel inside the stage's NVTX
# range (and between cudaProfilerStart/Stop), with the roofline metrics of ncu_metrics.py.
# No sudo: run it as a user allowed to read the GPU counters (root on the device machines).
# Writes <out-dir>/{stages.json, query_metrics.txt, metrics.txt, <stage>.ncu-rep, <stage>.csv,
# <stage>.log}; analyze_results.sh turns them into metrics JSON and the plot.
set -uo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/roofline/run_ncu.sh [--P 512] [--batch 1] [--model gpt2-medium] [--dtype float16]
                                 [--stages "v0_prefill v1_prefill v1_decode"] [--out-dir DIR]
                                 [--ncu PATH] [--stage-timeout SECONDS] [--no-nvtx]
                                 [--replay kernel|application]
  --P              prompt length (prefill tokens)                      [512]
  --batch          batch size                                          [1]
  --model          gpt2 | gpt2-medium | gpt2-large | smollm2 | llama3-8b [gpt2-medium]
  --dtype          float16 | bfloat16 | float32                        [float16]
  --stages         which stages                                        [all three]
  --out-dir        reports, CSVs, logs                [tools/roofline/ncu_reports/<model>_P<P>_b<batch>]
  --ncu            ncu binary          [$NCU, PATH, /usr/local/cuda/bin, /opt/nvidia/nsight-compute]
  --stage-timeout  seconds per ncu run                                 [900]
  --no-nvtx        select kernels by cudaProfilerStart/Stop only (no --nvtx-include)
  --replay         ncu replay mode: kernel (each kernel replayed per metric pass, caches flushed
                   first) or application (the whole program re-run per pass: faster when a
                   stage has hundreds of kernels; needs identical runs, which these are) [kernel]
Clocks are left alone (--clock-control none). Needs a CUDA GPU and permission to read its
performance counters.
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
P=512 BATCH=1 MODEL=gpt2-medium DTYPE=float16 STAGES="v0_prefill v1_prefill v1_decode"
OUT_DIR="" NCU_BIN=${NCU:-} STAGE_TIMEOUT=900 NVTX=1 REPLAY=kernel
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --P) P=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --out-dir) OUT_DIR=$2; shift 2 ;;
    --ncu) NCU_BIN=$2; shift 2 ;;
    --stage-timeout) STAGE_TIMEOUT=$2; shift 2 ;;
    --no-nvtx) NVTX=0; shift ;;
    --replay) REPLAY=$2; shift 2 ;;
    *) echo "run_ncu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$REPLAY" in kernel|application) ;; *) echo "run_ncu.sh: --replay $REPLAY: expected kernel or application" >&2; exit 2 ;; esac
OUT_DIR=${OUT_DIR:-$ROOT/tools/roofline/ncu_reports/${MODEL}_P${P}_b${BATCH}}
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -z "$NCU_BIN" ]; then
  NCU_BIN=$(command -v ncu || true)
  for c in /usr/local/cuda/bin/ncu $(ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | sort -r); do
    [ -z "$NCU_BIN" ] && [ -x "$c" ] && NCU_BIN=$c
  done
fi
if [ -z "$NCU_BIN" ] || [ ! -x "$NCU_BIN" ]; then
  echo "run_ncu.sh: Nsight Compute (ncu) not found (PATH, /usr/local/cuda/bin, /opt/nvidia/nsight-compute); pass --ncu PATH" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
echo "== ncu: $NCU_BIN ($("$NCU_BIN" --version 2>/dev/null | tail -1)); out: $OUT_DIR"

PROFILE=("$PY" "$ROOT/tools/roofline/profile_decode_step.py" --P "$P" --batch "$BATCH"
         --model "$MODEL" --dtype "$DTYPE")

# 1. Which tensor counters this GPU's ncu has (ncu_metrics.py picks one family).
timeout 120 "$NCU_BIN" --query-metrics > "$OUT_DIR/query_metrics.txt" 2>&1 || true
"$PY" "$ROOT/tools/roofline/ncu_metrics.py" --available "$OUT_DIR/query_metrics.txt" \
  > "$OUT_DIR/metrics.txt" || exit 1
"$PY" "$ROOT/tools/roofline/ncu_metrics.py" --available "$OUT_DIR/query_metrics.txt" \
  --no-tensor > "$OUT_DIR/metrics_no_tensor.txt" 2>/dev/null

# 2. Times (CUDA events) and analytic counts, no profiler attached.
timeout -k 10 "${PROFILE_TIMEOUT:-600}" "${PROFILE[@]}" --output "$OUT_DIR/stages.json" \
  > "$OUT_DIR/stages.log" 2>&1 || { echo "profile run failed:"; tail -20 "$OUT_DIR/stages.log"; exit 1; }
grep -v "^INFO" "$OUT_DIR/stages.log" | tail -5

# 3. One ncu run per stage. Fallbacks, each recorded in the stage's log: without the tensor
#    counters if ncu rejects a metric, then without the NVTX filter if nothing was profiled.
run_stage() {   # stage metrics_file nvtx(0/1) -> rc; report at $OUT_DIR/$stage.ncu-rep
  local stage=$1 mfile=$2 nvtx=$3 filt=()
  [ "$nvtx" = 1 ] && filt=(--nvtx --nvtx-include "$stage/")
  rm -f "$OUT_DIR/$stage.ncu-rep"
  {
    echo "\$ ncu --replay-mode $REPLAY --metrics @$(basename "$mfile") nvtx=$nvtx"
    timeout -k 10 "$STAGE_TIMEOUT" "$NCU_BIN" --target-processes all --profile-from-start off \
      --replay-mode "$REPLAY" --clock-control none "${filt[@]}" \
      --metrics "$(cat "$mfile")" --export "$OUT_DIR/$stage" --force-overwrite \
      "${PROFILE[@]}" --stage "$stage" --warmup 2 --iters 0
    LAST_RC=$?
    echo "== rc=$LAST_RC"
  } >> "$OUT_DIR/$stage.log" 2>&1
  [ -s "$OUT_DIR/$stage.ncu-rep" ]
}
timed_out() { [ "$LAST_RC" = 124 ] || [ "$LAST_RC" = 137 ]; }
rc=0
for stage in $STAGES; do
  : > "$OUT_DIR/$stage.log"
  t0=$(date +%s)
  ok=0
  LAST_RC=0
  cp "$OUT_DIR/metrics.txt" "$OUT_DIR/metrics_$stage.txt"
  for attempt in 1 2 3 4; do
    if run_stage "$stage" "$OUT_DIR/metrics_$stage.txt" "$NVTX"; then ok=1; break; fi
    timed_out && break
    # ncu names a metric it does not know: drop it and try again (recorded in the log)
    bad=$(grep -iE "failed to find metric|invalid metric|unknown metric" "$OUT_DIR/$stage.log" \
          | grep -oE "[a-z0-9_]+__[a-z0-9_]+" | tail -1)
    [ -z "$bad" ] && break
    grep -q "$bad" "$OUT_DIR/metrics_$stage.txt" || break
    echo "note: ncu rejected $bad: retrying without it" | tee -a "$OUT_DIR/$stage.log"
    tr , '\n' < "$OUT_DIR/metrics_$stage.txt" | grep -v "^$bad\." | paste -sd, - \
      > "$OUT_DIR/metrics_$stage.tmp" && mv "$OUT_DIR/metrics_$stage.tmp" "$OUT_DIR/metrics_$stage.txt"
  done
  if [ $ok = 1 ]; then :
  elif timed_out; then        # a fallback would only time out again
    echo "note: $stage timed out after $STAGE_TIMEOUT s" | tee -a "$OUT_DIR/$stage.log"
  elif grep -qiE "failed to find metric|invalid metric|not supported|unknown metric" "$OUT_DIR/$stage.log" \
       && run_stage "$stage" "$OUT_DIR/metrics_no_tensor.txt" "$NVTX"; then
    ok=1; echo "note: $stage profiled WITHOUT tensor counters (ncu rejected them)" | tee -a "$OUT_DIR/$stage.log"
  elif [ "$NVTX" = 1 ] && run_stage "$stage" "$OUT_DIR/metrics_$stage.txt" 0; then
    ok=1; echo "note: $stage profiled without the NVTX filter (cudaProfilerStart/Stop only)" | tee -a "$OUT_DIR/$stage.log"
  fi
  if [ $ok = 1 ]; then
    "$NCU_BIN" --import "$OUT_DIR/$stage.ncu-rep" --csv --page raw --print-units base \
      > "$OUT_DIR/$stage.csv" 2>> "$OUT_DIR/$stage.log" || rc=1
    echo "== $stage: $(($(date +%s) - t0)) s, $(grep -c "^\"[0-9]" "$OUT_DIR/$stage.csv") kernels -> $OUT_DIR/$stage.csv"
  else
    rc=1
    echo "== $stage FAILED after $(($(date +%s) - t0)) s; log tail:"; grep -v "^INFO" "$OUT_DIR/$stage.log" | tail -12
  fi
done
exit $rc
