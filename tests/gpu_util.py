"""Helpers of the GPU (`cuda`) tests."""
from __future__ import annotations

from typing import Callable

import torch


def capture_graph(step: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Runs ``step`` once on a side stream (Triton compiles, the allocator settles), then
    captures it into a CUDA graph; returns the graph (not yet replayed) and what ``step``
    returned during the capture (the graph's static outputs)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out
