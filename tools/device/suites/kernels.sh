#!/usr/bin/env bash
# what: kernels per decode step, fusion on/off, eager host cost per kernel wrapper, drafter CUDA graphs
# Device suite "kernels" (issue 12, part: fewer kernels per step, eager path, drafter graphs).
# One call, <= 5 min on one H200; each step time-boxed, partial results kept. Assumes an earlier
# call of the same warm machine joined the default model's GGUF (tools/device_common.sh); without
# it the SmolLM2 steps fall back to SmolLM2 shapes with dummy weights (labelled in the JSON).
#   bash tools/device/suites/kernels.sh                 tests,smol,spec (~4 min)
#   bash tools/device/suites/kernels.sh llama           Llama-3-8B shapes (~2.5 min, own call)
# Results: $OUT/kernels/*.json, *.log  (and $OUT/kernels.tar.gz)
set -uo pipefail
. tools/device_common.sh
PARTS=${1:-tests,smol,spec}
OUT=${OUT:-/tmp/out}
R=$OUT/kernels; mkdir -p "$R"
trap 'tar czf "$OUT/kernels.tar.gz" -C "$OUT" kernels 2>/dev/null' EXIT
KPS=tools/benchmarks/kernels_per_step.py
has() { case ",$PARTS," in *",$1,"*) return 0;; esac; return 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$R/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$R/gpu.txt"

if [ -f "$SMOL_GGUF" ] && echo "$SMOL_SHA256  $SMOL_GGUF" | sha256sum -c --quiet -; then
  SMOL=(--model "$SMOL_GGUF"); DRAFT=$PWD/$SMOL_GGUF
elif [ -f .gguf/smol.part00 ] && [ -f .gguf/smol.part01 ] && (join_gguf); then
  SMOL=(--model "$SMOL_GGUF"); DRAFT=$PWD/$SMOL_GGUF
else
  echo "no default-model GGUF: SmolLM2 shapes with dummy weights" | tee -a "$R/gpu.txt"
  SMOL=(--shapes smollm2); DRAFT=""
fi

if has tests; then
  step 50 python3 -m pytest -q -m cuda -p no:cacheprovider -rf tests/kernels/test_rope_kv_write.py \
    tests/kernels/test_kv_write.py tests/kernels/test_fused_layers.py \
    tests/kernels/test_attention_fusion_switch.py > "$R/pytest_kernels.log" 2>&1
  tail -3 "$R/pytest_kernels.log"
  step 70 python3 -m pytest -q -m cuda -p no:cacheprovider -rf \
    tests/v1/spec_decode/test_gpu_draft_graphs.py > "$R/pytest_draft_graphs.log" 2>&1
  tail -3 "$R/pytest_draft_graphs.log"
fi
if has smol; then
  # Fusion on vs off (VLLM_DISABLE_KERNEL_FUSION) x graph / eager x batch 1 / 64, one process;
  # plus the host cost per kernel-wrapper call.
  step 85 python3 $KPS "${SMOL[@]}" --batches 1,64 --modes graph,eager --fusion both \
    --steps 30 --launch-overhead --output "$R/kps_smollm2.json" > "$R/kps_smollm2.log" 2>&1
  grep -E "^fusion=|host us|== rc|Error" "$R/kps_smollm2.log"
fi
if has spec; then
  # SmolLM2 drafting for itself (k=4) at batch 1: drafter CUDA graphs on vs off.
  SPEC="{\"method\":\"draft_model\",\"model\":\"${DRAFT:-SELF}\",\"num_speculative_tokens\":4}"
  if [ -z "$DRAFT" ]; then echo "spec part needs the GGUF; skipped"; else
  step 70 python3 $KPS "${SMOL[@]}" --batches 1 --modes graph --fusion on --draft-graphs both \
    --steps 20 --spec "$SPEC" --output "$R/kps_smollm2_draft.json" > "$R/kps_smollm2_draft.log" 2>&1
  grep -E "^fusion=|== rc|Error" "$R/kps_smollm2_draft.log"
  fi
fi
if has llama; then
  step 150 python3 $KPS --shapes llama3-8b --batches 1,64 --modes graph,eager --fusion both \
    --steps 10 --warmup 3 --no-cprofile --gpu-memory-utilization 0.5 \
    --output "$R/kps_llama8b.json" > "$R/kps_llama8b.log" 2>&1
  grep -E "^fusion=|== rc|Error" "$R/kps_llama8b.log"
fi
echo "== done $(date +%T)"
