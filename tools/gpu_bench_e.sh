#!/usr/bin/env bash
# Device call E (right after D, which carried .gguf/smol.part00): join the GGUF, GPU lossless
# test on the default model at batch 128, Nsight Compute on SmolLM2 (off vs stage), NWOR latency
# benchmark on SmolLM2. Results in $OUT/e.tar.gz and $OUT/ncu_smollm2.tar.gz.
set -uo pipefail
. tools/device_common.sh
join_gguf
G=$SMOL_GGUF
R=$PWD/gpu_results/e; mkdir -p "$R"
trap 'tar czf "$OUT/e.tar.gz" -C gpu_results e' EXIT
echo "== $(date +%T) lossless"
VLLM_TEST_DEFAULT_GGUF=$PWD/$G timeout 150 python3 -m pytest -q -m cuda -p no:cacheprovider -rf tests/v1/spec_decode/test_gpu_lossless_default_model.py > "$R/pytest_lossless.txt" 2>&1; tail -8 "$R/pytest_lossless.txt"
echo "== $(date +%T) ncu smollm2"
NCU_TIMEOUT=60 MODE_TIMEOUT=125 timeout 260 bash tools/gpu_ncu.sh smollm2 2>&1 | tail -45
echo "== $(date +%T) bench_nwor smollm2"
timeout 150 python3 tools/benchmarks/bench_nwor.py --model "$G" --models smollm2 --output "$R/bench_nwor_smollm2.json" > "$R/bench_nwor_smollm2.log" 2>&1; echo "rc=$?"
grep -E "^(smollm2|SmolLM2)|Error" "$R/bench_nwor_smollm2.log"
