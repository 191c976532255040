# what: host time per decode step: cProfile and kernel launches per step, engine bookkeeping
set -uo pipefail
step 60 python3 -m tools.benchmarks.profile_host --batches 1,64 --steps 60 \
  --output "$R/profile_host.json" > "$R/profile_host.log" 2>&1
grep "^batch" "$R/profile_host.log"
if have_gguf; then
  step 120 python3 -m tools.benchmarks.host_step_time --model "$SMOL_GGUF" --batch 64 \
    --output "$R/host_step_time.json" > "$R/host_step_time.log" 2>&1
  tail -5 "$R/host_step_time.log"
fi
