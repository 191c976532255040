import os

import pytest
import torch

# Triton kernels run on CPU tensors in the interpreter when there is no GPU (kernel tests).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Small KV budget on the CPU so engines in tests start fast.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "0.25")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
