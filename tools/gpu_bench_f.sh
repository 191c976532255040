#!/usr/bin/env bash
# Device call F (after a call that carried .gguf/smol.part00): join the GGUF; float32 lossless
# test on the default model at batch 128; batch invariance in bf16 vs float32; Nsight Compute on
# SmolLM2 (NWOR off vs stage, whole steps + KV-write kernels). Results in $OUT/f.tar.gz and
# $OUT/ncu_smollm2.tar.gz.
set -uo pipefail
. tools/device_common.sh
join_gguf
G=$SMOL_GGUF
R=$PWD/gpu_results/f; mkdir -p "$R"
trap 'tar czf "$OUT/f.tar.gz" -C gpu_results f' EXIT
echo "== $(date +%T) lossless fp32"
VLLM_TEST_DEFAULT_GGUF=$PWD/$G timeout 120 python3 -m pytest -q -m cuda -p no:cacheprovider -rf tests/v1/spec_decode/test_gpu_lossless_default_model.py > "$R/pytest_lossless.txt" 2>&1; tail -4 "$R/pytest_lossless.txt"
echo "== $(date +%T) batch invariance"
timeout 100 python3 tools/benchmarks/batch_invariance.py --model "$G" --output "$R/batch_invariance.json" > "$R/batch_invariance.log" 2>&1; grep -E "differ|Error" "$R/batch_invariance.log"
echo "== $(date +%T) ncu smollm2"
NCU_TIMEOUT=120 MODE_TIMEOUT=170 timeout 350 bash tools/gpu_ncu.sh smollm2 2>&1 | tail -45
