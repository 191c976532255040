#!/usr/bin/env bash
# what: the prefill vs decode roofline (seed 003): measured peaks, ncu FLOPs and bytes per stage, plot
# Device suite (one call, <= 9 min on one H200): the roofline of seed 003.
#   1. measure_peaks.py: copy bandwidth and bf16/fp16 matmul rate (the measured roof)
#   2. run_ncu.sh + analyze_results.sh: GPT-2-medium shapes, P=512, batch 1, float16, all three
#      stages (ncu kernel replay, --clock-control none)
#   3. if time is left: Llama-3-8B shapes, V1 prefill + V1 decode, P=512, batch 1, bfloat16
# Every step is time-boxed against a deadline; whatever finished is packed by the EXIT trap.
# Back in $OUT: roofline.png, roofline.pdf (GPT-2-medium), roofline_results.tar.gz (metrics JSON,
# summaries, stages.json, ncu logs, query_metrics.txt, peaks.json, the real test sample, the
# Llama plot if made), suite.log.
#   bash tools/device/suites/roofline.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-$PWD/out}
BUDGET=${BUDGET:-530}
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
R=$PWD/gpu_results/roofline
mkdir -p "$R" "$OUT"
exec > >(tee "$OUT/suite.log") 2>&1
pack() {
  find "$R" -name "*.ncu-rep" -delete
  cp "$R/results/${G:-none}/roofline.png" "$R/results/${G:-none}/roofline.pdf" "$OUT/" 2>/dev/null
  # the big per-kernel CSVs stay out, except the trimmed test sample
  tar czf "$OUT/roofline_results.tar.gz" -C "$R" --exclude="*.csv" . 2>/dev/null
  ls -la "$OUT"
}
trap pack EXIT
step() { local t=$1; shift; echo "== $(date +%T) [left $(left) s] $*"; timeout -k 10 "$t" "$@"; local rc=$?; echo "== rc=$rc"; return $rc; }

echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1)"
NCU_BIN=$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | sort -r | head -1)
echo "== ncu: $NCU_BIN $("$NCU_BIN" --version 2>&1 | tail -1)"
python3 -c "import torch, triton, matplotlib; print('torch', torch.__version__, 'triton', triton.__version__, 'matplotlib', matplotlib.__version__)"

step 90 python3 tools/roofline/measure_peaks.py --output "$R/peaks.json"

# RF_MODEL / RF_P / RF_DTYPE override the first model (a CPU dry run: RF_MODEL=tiny-gpt2
# RF_P=16 RF_DTYPE=float32 RF_LLAMA=0 NCU=/path/to/fake-ncu)
M=${RF_MODEL:-gpt2-medium} P=${RF_P:-512} DT=${RF_DTYPE:-float16}
G=${M}_P${P}_b1
[ -n "${NCU:-}" ] && NCU_BIN=$NCU
REPLAY=${RF_REPLAY:-kernel}     # RF_REPLAY=application: one program run per metric pass
step $(( $(left) - 50 )) bash tools/roofline/run_ncu.sh --P "$P" --batch 1 --model "$M" \
  --dtype "$DT" --ncu "$NCU_BIN" --replay "$REPLAY" --stage-timeout $(( ($(left) - 110) / 3 )) \
  --out-dir "$R/ncu/$G"
PEAKS=(); [ -f "$R/peaks.json" ] && PEAKS=(--peaks-json "$R/peaks.json")
step 60 bash tools/roofline/analyze_results.sh --P "$P" --batch 1 --model "$M" \
  --dtype "$DT" --gpu H200 --in-dir "$R/ncu/$G" --out-dir "$R/results/$G" "${PEAKS[@]}"
cp "$R/ncu/$G"/*.log "$R/ncu/$G"/stages.json "$R/results/$G/" 2>/dev/null
[ -s "$R/ncu/$G/v1_decode.csv" ] && step 30 python3 tools/roofline/make_test_sample.py \
  "$R/ncu/$G/v1_decode.csv" "$R/results/ncu_sample_h200_roofline.csv" --rows 40 \
  --note "REAL H200 output (ncu --replay-mode $REPLAY, --clock-control none, $(date -u +%F)): the first 40 kernels of V1 decode, $M shapes, P=$P, batch 1, $DT; expected values summed with the csv module (make_test_sample.py), independently of the parser"
# keep the (small) sample CSV: rename so the tar's *.csv exclusion spares it
[ -f "$R/results/ncu_sample_h200_roofline.csv" ] && mv "$R/results/ncu_sample_h200_roofline.csv" "$R/results/ncu_sample_h200_roofline.csv.txt"

if [ "${RF_LLAMA:-1}" = 1 ] && [ "$(left)" -gt 150 ]; then
  L=llama3-8b_P512_b1
  step $(( $(left) - 45 )) bash tools/roofline/run_ncu.sh --P 512 --batch 1 --model llama3-8b \
    --dtype bfloat16 --stages "v1_prefill v1_decode" --ncu "$NCU_BIN" --replay "$REPLAY" \
    --stage-timeout $(( ($(left) - 100) / 2 )) \
    --out-dir "$R/ncu/$L"
  step 40 bash tools/roofline/analyze_results.sh --P 512 --batch 1 --model llama3-8b \
    --dtype bfloat16 --gpu H200 --in-dir "$R/ncu/$L" --out-dir "$R/results/$L" "${PEAKS[@]}"
  cp "$R/ncu/$L"/*.log "$R/ncu/$L"/stages.json "$R/results/$L/" 2>/dev/null
else
  echo "== skipped Llama-3-8B shapes: $(left) s left"
fi
for s in "$R"/results/*/roofline_summary.json; do echo "== $s"; python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))
for k,p in d['points'].items(): print(f\"{p['label']:11s} AI={p['arithmetic_intensity']:.3g} {p['flops_per_s']/1e12:.3f} TFLOP/s {p['efficiency_pct']:.1f}% {p['bottleneck']}\")" "$s"; done
echo "== done in $(( $(date +%s) - T0 )) s"
