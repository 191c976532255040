"""CUDA graphs of the model forward, one per token count (so 1 + k tokens per request fit).

Any batch whose token count fits a captured size replays that graph: the attention kernels
read per-token request ids, context lengths and block tables from the persistent buffers, and
padded tokens carry request id -1 and slot -1, so they neither attend nor write."""
from __future__ import annotations

import bisect
import logging
import time
from typing import Callable, Optional

import torch

from vllm.logger import init_logger, log_once

logger = init_logger(__name__)


def default_capture_sizes(max_tokens: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 513, 32))
    return [s for s in sizes if s <= max_tokens]


class CudaGraphRunner:
    def __init__(self, sizes: list[int], pool=None, name: str = "forward"):
        self.sizes = sorted(sizes)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, object] = {}
        self.pool = pool          # a memory pool shared with graphs that never run concurrently
        self.name = name
        self.enabled = bool(sizes)
        self.num_replays = 0

    def padded_size(self, num_tokens: int) -> Optional[int]:
        if not self.enabled or not self.graphs:
            return None
        i = bisect.bisect_left(self.sizes, num_tokens)
        return self.sizes[i] if i < len(self.sizes) else None

    def capture(self, run_forward: Callable[[int], object]) -> None:
        """run_forward(T) runs the model on the first T rows of the persistent buffers (with
        the forward context already set up by the caller) and returns its output tensor(s)."""
        t0 = time.perf_counter()
        try:
            for T in reversed(self.sizes):
                run_forward(T)            # warm-up: Triton compiles, allocator settles
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=self.pool):
                    out = run_forward(T)
                if self.pool is None:
                    self.pool = g.pool()
                self.graphs[T] = g
                self.outputs[T] = out
            torch.cuda.synchronize()
        except Exception as e:  # capture unavailable, out of memory, an uncapturable op
            self.graphs.clear()
            self.outputs.clear()
            self.enabled = False
            log_once(logger, logging.WARNING, f"cudagraph-capture-failed-{self.name}",
                     "CUDA graph capture (%s) failed (%s: %s); running it eagerly",
                     self.name, type(e).__name__, e)
            return
        logger.info("Captured %d CUDA graphs (%s, %d..%d tokens) in %.1f s", len(self.graphs),
                    self.name, self.sizes[0], self.sizes[-1], time.perf_counter() - t0)

    def replay(self, T_padded: int):
        self.graphs[T_padded].replay()
        self.num_replays += 1
        return self.outputs[T_padded]
