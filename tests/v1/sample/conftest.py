"""Run Triton kernels through the interpreter on CPU-only machines.

TRITON_INTERPRET is read when a kernel is decorated (module import), so it must be set before
any vllm kernel module is imported; conftest files load before their directory's tests.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
