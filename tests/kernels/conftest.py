"""Kernel tests: without CUDA, Triton kernels run on CPU tensors through the Triton interpreter,
which must be switched on before anything imports triton (it is read when @triton.jit decorates).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def triton_cpu():
    """Skip unless a Triton kernel can be launched on CPU tensors (interpreter active)."""
    try:
        import triton  # noqa: F401
        from triton.runtime.interpreter import InterpretedFunction
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"triton not importable: {exc}")
    from vllm.v1.attention.kv_write import _write_kv_kernel
    if not isinstance(_write_kv_kernel, InterpretedFunction):
        pytest.skip("TRITON_INTERPRET=1 was not set before triton was imported "
                    "(run tests/kernels on its own, or set it in the environment)")
    return True


def pytest_configure(config):
    # The lead registers `cuda` in the root config; registering it twice is harmless.
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")
