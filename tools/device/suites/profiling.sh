#!/usr/bin/env bash
# what: NWOR latency resolved from CUDA events (off/stage interleaved) and the Nsight Systems attempt; PARTS=bw: ncu bandwidth test --quick
# Device suite (one call, <= 9 min on one H200): the profiling items of issue 17.
#   nwor  bench_nwor.py: NWOR stage/off latency on Llama-3-8B shapes (dummy weights, controlled
#         acceptance 0.6), k=4, batch 32: CUDA-event GPU time per step, 30 steps a round,
#         interleaved rounds until the 95% CI is within +-0.5% (or its time budget)
#   nsys  nsys_scv.py: Nsight Systems around the SCV mask computation (off, vectorized), with
#         every attempt (nsys, QdstrmImporter) recorded
#   bw    run_ncu_bandwidth_test.sh --quick: whole-step DRAM bytes (measured batches only) and
#         KV-write L2 sectors, NWOR off vs stage, SmolLM2 shapes
# PARTS selects and orders them; each is time-boxed against a deadline. Default "nwor nsys"
# (about 6 min); the bandwidth test wants a call of its own: PARTS=bw (about 5-8 min).
# Back in $OUT: bench_nwor.json, nsys_attempt.json, small_t0.0_stats.txt, profiling_results.tar.gz
# (everything, reports excluded), suite.log.
#   bash tools/device/suites/profiling.sh                 # nwor + nsys
#   PARTS=bw bash tools/device/suites/profiling.sh        # the bandwidth test, a second call
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-$PWD/out}
BUDGET=${BUDGET:-530}
PARTS=${PARTS:-"nwor nsys"}
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
R=$PWD/gpu_results/profiling
mkdir -p "$R" "$OUT"
exec > >(tee "$OUT/suite.log") 2>&1
pack() {
  find "$R" \( -name "*.ncu-rep" -o -name "*.nsys-rep" -o -name "*.qdstrm" -o -name "*.sqlite" \) -delete
  cp "$R/bench_nwor.json" "$R/nsys/nsys_attempt.json" "$R/ncu_quick/small_t0.0_stats.txt" "$OUT/" 2>/dev/null
  tar czf "$OUT/profiling_results.tar.gz" -C "$R" . 2>/dev/null
  ls -la "$OUT"
}
trap pack EXIT
step() { local t=$1; shift; echo "== $(date +%T) [left $(left) s] $*"; timeout -k 10 "$t" "$@"; local rc=$?; echo "== rc=$rc"; return $rc; }
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"

for part in $PARTS; do
  case "$part" in
    nwor)
      step 250 python3 tools/benchmarks/bench_nwor.py --models llama3-8b-dummy --ks 4 \
        --batches 32 --steps-per-round 30 --budget-s 120 --output "$R/bench_nwor.json" \
        > "$R/bench_nwor.log" 2>&1
      grep -E "^llama|Error|error" "$R/bench_nwor.log" | tail -8 ;;
    nsys)
      { echo "which nsys: $(command -v nsys)"; ls -la /opt/nvidia/ 2>&1;
        find / -xdev \( -name "nsys" -o -name "QdstrmImporter*" \) -type f 2>/dev/null | head -20;
      } > "$R/nsys_search.txt" 2>&1
      mkdir -p "$R/nsys"; mv "$R/nsys_search.txt" "$R/nsys/"
      step 220 python3 tools/profiling/nsys_scv.py --out-dir "$R/nsys" --modes off,vectorized \
        --timeout 90 ;;
    bw)
      [ "$(left)" -lt 90 ] && { echo "== skipped bw: $(left) s left"; continue; }
      # 4 ncu passes (NWOR off and stage, steps and kernels) share what is left
      step $(( $(left) - 15 )) env OUT="$R/ncu_quick" NCU_TIMEOUT=$(( ($(left) - 60) / 4 )) \
        bash tools/profiling/run_ncu_bandwidth_test.sh --quick > "$R/ncu_quick.log" 2>&1
      grep -vE "^INFO|it/s\]" "$R/ncu_quick.log" | tail -12
      [ -f "$R/ncu_quick/small_t0.0_stats.txt" ] && head -40 "$R/ncu_quick/small_t0.0_stats.txt" ;;
    *) echo "unknown part $part (nwor, nsys, bw)" ;;
  esac
done
echo "== done in $(( $(date +%s) - T0 )) s"
