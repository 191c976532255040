# what: the GPU test suite (pytest -m cuda; with the default model's GGUF also its lossless test)
# Arguments: test paths for pytest (default: tests/). ~3 min on an H100.
set -uo pipefail
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
} > "$R/versions.txt" 2>&1
cat "$R/versions.txt"
# test_gpu_lossless_default_model.py skips unless it finds the default model
have_gguf && export VLLM_TEST_DEFAULT_GGUF=$PWD/$SMOL_GGUF
paths=("$@"); [ $# -eq 0 ] && paths=(tests/)
step 450 python3 -m pytest -q -m cuda -p no:cacheprovider -rfs "${paths[@]}" > "$R/pytest_cuda.txt" 2>&1
rc=$?
tail -30 "$R/pytest_cuda.txt"
exit $rc
