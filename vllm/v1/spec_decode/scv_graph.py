"""SCV's CUDA graphs: the acceptance-mask computation captured once per padded shape
(batch bucket, mask width) and replayed from static buffers (modes 'graph' and 'adaptive').

A capture is an optimization: when it fails the shape is remembered as failed, counted, logged
once, and the caller runs the un-captured path instead."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from vllm.logger import init_logger, log_once
from vllm.v1.constants import PLACEHOLDER_TOKEN_ID

logger = init_logger(__name__)

# (draft [T], cu [R], sampled [R, C], width) -> (mask [R, W], num_acc [R], valid [R])
MaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int],
                  tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def batch_buckets(max_num_reqs: int) -> list[int]:
    """Powers of two below max_num_reqs, then max_num_reqs itself."""
    buckets, b = [], 1
    while b < max_num_reqs:
        buckets.append(b)
        b *= 2
    buckets.append(max_num_reqs)
    return buckets


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    draft: torch.Tensor      # [Rb * W] int64 static input
    cu: torch.Tensor         # [Rb] int64 static input
    sampled: torch.Tensor    # [Rb, W + 1] int64 static input
    mask: torch.Tensor       # [Rb, W] bool static output
    num_acc: torch.Tensor    # [Rb] int32 static output
    valid: torch.Tensor      # [Rb] int32 static output


class ScvGraphCache:
    def __init__(self, mask_fn: MaskFn, device: torch.device, max_num_reqs: int,
                 max_spec_len: int, adaptive_capture_after: int):
        self.mask_fn = mask_fn
        self.device = device
        self.max_spec_len = max_spec_len
        self.adaptive_capture_after = adaptive_capture_after
        self.buckets = batch_buckets(max_num_reqs)
        self.num_captures = 0
        self.capture_failures = 0
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._failed: set[tuple[int, int]] = set()
        self._seen: dict[tuple[int, int], int] = {}
        self._pool = None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def bucket(self, num_reqs: int) -> Optional[int]:
        for b in self.buckets:
            if b >= num_reqs:
                return b
        return None

    def warmup(self, batch_sizes: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None) -> int:
        """Capture the given shapes now (default: every bucket and width). Returns captures."""
        before = self.num_captures
        for rb in sorted({self.bucket(b) for b in (batch_sizes or self.buckets)} - {None}):
            for w in (widths or range(1, self.max_spec_len + 1)):
                self._get(rb, w)
        return self.num_captures - before

    def run(self, adaptive: bool, draft: torch.Tensor, cu: torch.Tensor, sampled: torch.Tensor,
            width: int):
        """Replays the graph of this shape -> (mask, num_acc, valid) views of its static
        outputs, or None when the shape has no graph (adaptive: not hot yet; or it failed)."""
        num_reqs = cu.shape[0]
        rb = self.bucket(num_reqs)
        if (rb is None or num_reqs == 0 or not 1 <= width <= self.max_spec_len
                or any(t.device != self.device for t in (draft, cu, sampled))):
            return None
        key = (rb, width)
        if adaptive and key not in self._graphs:
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] < self.adaptive_capture_after:
                return None
        g = self._get(rb, width)
        if g is None or draft.shape[0] > g.draft.shape[0]:
            return None
        # Copy into the static inputs. Padded requests repeat the last end offset (k = 0);
        # columns past the real row are -1, which never matches: the same result as the OOB clamp.
        num_draft = draft.shape[0]
        if num_draft:
            g.draft[:num_draft].copy_(draft)
        g.cu[:num_reqs].copy_(cu)
        if num_reqs < rb:
            g.cu[num_reqs:].copy_(cu[num_reqs - 1:].expand(rb - num_reqs))
        cols = min(sampled.shape[1], width + 1)
        if cols:
            g.sampled[:num_reqs, :cols].copy_(sampled[:, :cols])
        if cols < width + 1:
            g.sampled[:num_reqs, cols:].fill_(PLACEHOLDER_TOKEN_ID)
        g.graph.replay()
        return g.mask[:num_reqs], g.num_acc[:num_reqs], g.valid[:num_reqs]

    def _get(self, rb: int, width: int) -> Optional[_Graph]:
        key = (rb, width)
        if key in self._graphs or key in self._failed:
            return self._graphs.get(key)
        try:
            g = self._capture(rb, width)
        except Exception as exc:  # capture is an optimization: never fail the step for it
            self._failed.add(key)
            self.capture_failures += 1
            log_once(logger, logging.WARNING, "scv-graph-capture-failed",
                     "SCV: CUDA graph capture failed (%r: %s); using 'vectorized' for this shape",
                     type(exc).__name__, exc)
            return None
        self._graphs[key] = g
        self.num_captures += 1
        return g

    def _capture(self, rb: int, width: int) -> _Graph:
        dev = self.device
        draft = torch.zeros(rb * width, dtype=torch.int64, device=dev)
        cu = torch.zeros(rb, dtype=torch.int64, device=dev)
        sampled = torch.full((rb, width + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int64, device=dev)
        # Warm up on a side stream (compiles the Triton kernel outside the capture).
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            self.mask_fn(draft, cu, sampled, width)
        torch.cuda.current_stream(dev).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            mask, num_acc, valid = self.mask_fn(draft, cu, sampled, width)
        return _Graph(graph, draft, cu, sampled, mask, num_acc, valid)
