#!/usr/bin/env bash
# what: asynchronous scheduling, early check without the GGUF: async cuda tests, decode sync vs async (SmolLM2 and Llama-3-8B shapes, dummy weights)
# Early check of asynchronous scheduling on the GPU, no GGUF needed (one call, ~6 min):
# the async cuda tests, then decode sync vs async on SmolLM2 shapes (dummy weights) and
# Llama-3-8B shapes (dummy), with GPU busy fraction and kernels per step.
set -uo pipefail
source tools/device_common.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
step 200 python3 -m pytest -q -x -m cuda -p no:cacheprovider tests/v1/engine/test_async_scheduling.py \
  tests/v1/engine/test_gpu_engine.py 2>&1 | tee "$OUT/pytest_async.log" | tail -15
python3 - <<'PY'
from transformers import LlamaConfig
c = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)
c.architectures = ["LlamaForCausalLM"]; c.save_pretrained("/tmp/smol-shapes")
PY
step 200 python3 -m tools.benchmarks.bench_decode --model /tmp/smol-shapes --load-format dummy \
  --parts a --batches 1,64 --max-tokens 96 --output "$OUT/decode_smolshapes.json"
step 150 python3 -m tools.benchmarks.bench_decode --parts b --llama-batches 1,32 --max-tokens 64 \
  --output "$OUT/decode_llama8b.json"
