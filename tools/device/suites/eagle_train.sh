#!/usr/bin/env bash
# what: EAGLE head for the default model (issue 16): self-distilled data, training, acceptance at k=4, spec vs no-spec tok/s
# One call (~9.5 min) on one H200 with the default model's GGUF halves (.gguf/smol.part00 carried
# by the previous call, .gguf/smol.part01 by this one; joined and checked here). Carry .gguf and
# .whl. Phases (time-boxed; budgets in seconds from the environment, defaults in brackets):
#   gen:   tools.eagle.gen_data, EAGLE_NUM_PROMPTS [10000] prompts x EAGLE_MAX_TOKENS [256]
#          response tokens, stops starting new chunks after EAGLE_GEN_BUDGET_S [120] (incl. load);
#   train: tools.eagle.train for EAGLE_TRAIN_BUDGET_S [170] s of steps (plus ~15 s load / save),
#          EAGLE_BATCH_TOKENS [16384] tokens a batch;
#   eval:  tools.eagle.eval_acceptance, k = EAGLE_K [4], EAGLE_EVAL_PROMPTS [64] held-out prompts,
#          128 greedy tokens, with the lossless check against no speculation;
#   bench: tools.benchmarks.bench_spec none vs eagle k=4 at batch 1 and 32, only when at least
#          100 s of EAGLE_TOTAL_S [560] are left.
# Results in $R (packed into $OUT/eagle_train.tar.gz by run.sh) and, plainly, the head in
# $OUT/eagle_head/ (config.json, model.safetensors, SHA256SUMS) with loss_curve.png,
# data_manifest.json, train_result.json, eval_acceptance.json, bench_spec.json beside it in $OUT.
# Continuing a head across calls: EAGLE_INIT_HEAD=DIR (a head folder in the upstream EAGLE layout,
# relative to the repository root) is passed to train as --init-head, e.g.
#   EAGLE_INIT_HEAD=vllm/data/eagle/smollm2-135m-instruct bash tools/device/run.sh eagle_train
# continues from the shipped head (its sha256s land in train_result.json). EAGLE_DATA_DIR [/tmp/
# eagle_data] is where the data is written; when it already holds a dataset (manifest.json, e.g.
# a carried folder) generation is skipped and its ~3 min are free (raise EAGLE_TRAIN_BUDGET_S
# by that much). A fresh gen with the same seed reproduces the same data; for new data pass
# EAGLE_GEN_ARGS="--seed N" (the held-out prompts then change too) and EAGLE_TRAIN_ARGS="--seed N"
# for a new batch order.
# EAGLE_GEN_ARGS / EAGLE_TRAIN_ARGS pass extra flags to gen_data / train. Without matplotlib on
# the device there is no PNG: redraw it here with python3 -m tools.eagle.plot_loss.
#   bash tools/device/run.sh eagle_train
set -uo pipefail
T0=$(date +%s)
TOTAL=${EAGLE_TOTAL_S:-560}
GEN=${EAGLE_GEN_BUDGET_S:-120}
TRAIN=${EAGLE_TRAIN_BUDGET_S:-170}
NUM_PROMPTS=${EAGLE_NUM_PROMPTS:-10000}
MAX_TOKENS=${EAGLE_MAX_TOKENS:-256}
K=${EAGLE_K:-4}
EVAL_PROMPTS=${EAGLE_EVAL_PROMPTS:-64}
BATCH_TOKENS=${EAGLE_BATCH_TOKENS:-16384}
GEN_ARGS=${EAGLE_GEN_ARGS:-}        # extra flags, e.g. "--temperature 0"
TRAIN_ARGS=${EAGLE_TRAIN_ARGS:-}    # extra flags, e.g. "--lr 3e-4 --w-cls 0.5"
INIT_HEAD=${EAGLE_INIT_HEAD:-}      # head folder to continue training from (empty: fresh init)
R=${R:-$PWD/gpu_results/eagle_train}; OUT=${OUT:-/tmp/out}; mkdir -p "$R" "$OUT"
DATA=${EAGLE_DATA_DIR:-/tmp/eagle_data}; HEAD=$R/head
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
have_gguf || { echo "eagle_train needs the default model's GGUF (.gguf/smol.part00 and .part01)"; exit 3; }
exec > >(tee "$R/eagle_train.log") 2>&1

if [ -f "$DATA/manifest.json" ]; then
  echo "SKIP gen_data: $DATA already holds a dataset"
else
  step $((GEN + 60)) python3 -m tools.eagle.gen_data --model "$SMOL_GGUF" --out "$DATA" \
    --num-prompts "$NUM_PROMPTS" --num-eval "$EVAL_PROMPTS" --max-tokens "$MAX_TOKENS" \
    --time-budget-s "$GEN" --max-num-seqs 256 --chunk 1024 $GEN_ARGS
fi
cp "$DATA/manifest.json" "$R/data_manifest.json" 2>/dev/null
[ -f "$DATA/manifest.json" ] || { echo "no training data"; exit 4; }

step $((TRAIN + 60)) python3 -m tools.eagle.train --model "$SMOL_GGUF" --data "$DATA" \
  --out "$HEAD" --results "$R" --time-budget-s "$TRAIN" --steps 100000 \
  --batch-tokens "$BATCH_TOKENS" ${INIT_HEAD:+--init-head "$INIT_HEAD"} $TRAIN_ARGS
[ -f "$HEAD/SHA256SUMS" ] || { echo "no trained head"; exit 5; }
mkdir -p "$OUT/eagle_head" && cp "$HEAD"/* "$OUT/eagle_head/"

EVAL_T=$(left); [ "$EVAL_T" -gt 150 ] && EVAL_T=150; [ "$EVAL_T" -lt 60 ] && EVAL_T=60
step "$EVAL_T" python3 -m tools.eagle.eval_acceptance \
  --model "$SMOL_GGUF" --data "$DATA" --head "$HEAD" --k "$K" --max-tokens 128 \
  --check-lossless --output "$R/eval_acceptance.json"

if [ "$(left)" -ge 100 ]; then
  step $(( $(left) - 10 )) python3 -m tools.benchmarks.bench_spec --model "$SMOL_GGUF" \
    --batches 1,32 --temperatures 0 --ks "$K" --methods none,eagle,eagle-adaptive --eagle-model "$HEAD" \
    --max-tokens 128 --output "$R/bench_spec.json"
else
  echo "SKIP bench_spec: $(left) s left"
fi
for f in loss_curve.png data_manifest.json train_result.json eval_acceptance.json bench_spec.json; do
  [ -f "$R/$f" ] && cp "$R/$f" "$OUT/"
done
echo "== eagle_train done in $(( $(date +%s) - T0 )) s"
