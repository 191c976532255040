#!/usr/bin/env bash
# Device call: SCV graph-capture check, host-time profile of decode steps, Llama-3-8B dummy
# decode bandwidth. Results under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 - <<'PY' 2>&1 | tee "$OUT/scv_capture.txt"
import torch
from vllm.v1.spec_decode.scv import ScvVerifier
v = ScvVerifier("graph", "cuda", max_num_reqs=8, max_spec_len=4)
d = torch.randint(0, 50, (8,), device="cuda"); cu = torch.tensor([4, 8], device="cuda")
s = torch.randint(0, 50, (2, 5), device="cuda")
r = v.compute(d, cu, s, num_draft_tokens=[4, 4], max_spec_len=4)
print("mode", r.mode, "err", v.last_capture_error)
PY
python3 tools/benchmarks/profile_host.py --batches 1,64 --steps 100 --output "$OUT/profile_host.json" 2>&1 | grep -v "^INFO" | head -120
python3 tools/benchmarks/profile_host.py --batches 32 --steps 50 --spec '{"method":"ngram","num_speculative_tokens":4}' --output "$OUT/profile_host_spec.json" 2>&1 | grep -v "^INFO" | head -60
python3 tools/benchmarks/bench_decode.py --parts b --max-tokens 64 --output "$OUT/bench_decode_llama8b.json" 2>&1 | grep -v "^INFO" | tail -8
