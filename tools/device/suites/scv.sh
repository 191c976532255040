# what: SCV's acceptance mask in isolation: host time, kernel and graph launches, syncs per mode
set -uo pipefail
step 120 env OUT="$R/scv_benefit" E2E=0 NSYS=0 bash tools/profiling/run_scv_benefit_analysis.sh \
  > "$R/scv_benefit.log" 2>&1
tail -15 "$R/scv_benefit.log"
