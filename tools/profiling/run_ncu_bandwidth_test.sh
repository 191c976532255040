#!/usr/bin/env bash
# NWOR bandwidth test under Nsight Compute: baseline (NWOR off) vs NWOR stage, small and large
# batches, each temperature. Writes sweeps/ncu_analysis/{small,large}_{baseline,nwor}_t{T}.json
# (microbench JSON with ncu_metrics) and {small,large}_t{T}_stats.txt (the comparison, with the
# byte model's prediction beside each number). See docs/profiling.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/profiling/run_ncu_bandwidth_test.sh [--quick] [extra run_nwor_microbench.py flags...]

  --quick  one device call end to end (a few minutes on an H100/H200): small size only,
           T=0.0, SmolLM2-135M shapes with DUMMY weights and CONTROLLED acceptance 0.6
           (unless TARGET_MODEL is set), 8 requests x 1 batch, no warm-up batch, 8 new tokens,
           SCV vectorized, eager, KV-write/commit kernels only (the fused _rope_kv_write_kernel
           or the unfused _write_kv_kernel, and _commit_staged_kv_kernel).
           Output: OUT=sweeps/ncu_quick.

Whole-step totals (steps pass) cover exactly the measured batches: range replay also profiles
the warm-up batches' steps, which are dropped by count; each JSON's ncu_metrics.totals_cover
(and the stats file) says what the totals are over.

Environment (defaults in brackets):
  OUT          output folder                              [sweeps/ncu_analysis]
  TEMPS        temperatures                               ["0.0 0.7"]
  SIZES        which of small / large                     ["small large"]
  SMALL_ARGS   workload of "small"   ["--scenario short --requests 8 --batches 1 --warmup 1"]
  LARGE_ARGS   workload of "large"   ["--scenario medium --requests 64 --batches 1 --warmup 1"]
  DRAFT_TOKENS k                                          [4]
  MAX_TOKENS   output tokens per request (ncu is slow)    [32]
  SCV_MODE     SCV mode of both runs                      [graph]
  PYTHON       interpreter                                [python3]
  TARGET_MODEL / DRAFT_MODEL / TENSOR_PARALLEL_SIZE as for the microbench.
Needs a CUDA GPU and ncu (PATH or /usr/local/cuda/bin; else pass --ncu-path PATH) with
permission to read performance counters.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
QUICK_FLAGS=()
if [ "${1:-}" = "--quick" ]; then
  shift
  OUT=${OUT:-sweeps/ncu_quick} TEMPS=${TEMPS:-0.0} SIZES=${SIZES:-small}
  SMALL_ARGS=${SMALL_ARGS:-"--scenario synthetic --requests 8 --batches 1 --warmup 0"}
  MAX_TOKENS=${MAX_TOKENS:-8} SCV_MODE=${SCV_MODE:-vectorized}
  # = tools/profiling/ncu.py KV_KERNEL_REGEX (a test checks)
  QUICK_FLAGS=(--enforce-eager --max-model-len 512
               --ncu-kernel-regex '_rope_kv_write|_write_kv|_commit_staged'
               --ncu-timeout "${NCU_TIMEOUT:-200}")
  if [ -z "${TARGET_MODEL:-}" ]; then
    # SmolLM2-135M's shapes, config only: weights come from --load-format dummy
    TARGET_MODEL=${TMPDIR:-/tmp}/smollm2-135m-shapes
    "$PY" -c "
import sys
from transformers import LlamaConfig
c = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=True)
c.architectures = ['LlamaForCausalLM']
c.save_pretrained(sys.argv[1])" "$TARGET_MODEL"
    export TARGET_MODEL
    QUICK_FLAGS+=(--load-format dummy --dtype bfloat16 --acceptance-rate 0.6)
  fi
fi
OUT=${OUT:-sweeps/ncu_analysis}
TEMPS=${TEMPS:-"0.0 0.7"}
SIZES=${SIZES:-"small large"}
SMALL_ARGS=${SMALL_ARGS:-"--scenario short --requests 8 --batches 1 --warmup 1"}
LARGE_ARGS=${LARGE_ARGS:-"--scenario medium --requests 64 --batches 1 --warmup 1"}
K=${DRAFT_TOKENS:-4}
MAX_TOKENS=${MAX_TOKENS:-32}
SCV=${SCV_MODE:-graph}
mkdir -p "$OUT"

rc=0
for size in $SIZES; do
  case "$size" in
    small) WORK=$SMALL_ARGS ;;
    large) WORK=$LARGE_ARGS ;;
    *) echo "unknown size $size (expected small or large)" >&2; exit 2 ;;
  esac
  for t in $TEMPS; do
    for mode in baseline nwor; do
      if [ "$mode" = baseline ]; then nwor=off; else nwor=stage; fi
      echo "== $size $mode T=$t" >&2
      # shellcheck disable=SC2086
      "$PY" tools/profiling/run_nwor_microbench.py $WORK --draft-tokens "$K" \
        --max-tokens "$MAX_TOKENS" --temperature "$t" --nwor-modes "$nwor" --scv-modes "$SCV" \
        --ncu --output "$OUT/${size}_${mode}_t${t}.json" "${QUICK_FLAGS[@]}" "$@" || rc=1
    done
    if [ -f "$OUT/${size}_baseline_t${t}.json" ] && [ -f "$OUT/${size}_nwor_t${t}.json" ]; then
      "$PY" tools/profiling/ncu_stats.py "$OUT/${size}_baseline_t${t}.json" \
        "$OUT/${size}_nwor_t${t}.json" --output "$OUT/${size}_t${t}_stats.txt" || rc=1
    fi
  done
done
echo "results in $OUT (*_stats.txt: the comparison)" >&2
exit $rc
