"""One host-to-device transfer per step for all of a step's small input arrays.

The arrays (token ids, positions, slot mapping, block-table rows, ...) are written into one
pinned staging buffer, copied to a device staging buffer in ONE transfer, then scattered into
their persistent device buffers with one fused copy (``torch._foreach_copy_``): 2-3 launches a
step instead of one copy (and one pinned mirror) per array. Two pinned buffers alternate; a
buffer is reused only once the transfer that read it has finished (an event, already complete
in the steady state). On the CPU the arrays are copied directly."""
from __future__ import annotations

import numpy as np
import torch

_ALIGN = 16
_NP = {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32}


class PackedH2D:
    def __init__(self, nbytes: int, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self._dst: list[torch.Tensor] = []
        self._src: list[np.ndarray] = []
        if not self.cuda:
            return
        self.nbytes = nbytes
        self._dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self._host = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self._host_np = [h.numpy() for h in self._host]
        self._done = [None, None]
        self._cur = 0

    def add(self, dst: torch.Tensor, src: np.ndarray) -> None:
        """dst: a contiguous 1-D device view receiving src (same length; cast to its dtype)."""
        want = _NP[dst.dtype]
        if src.dtype != want or not src.flags.c_contiguous:
            src = np.ascontiguousarray(src, dtype=want)
        if len(src) != dst.numel():
            raise ValueError(f"staged array has {len(src)} elements, its buffer {dst.numel()}")
        self._dst.append(dst)
        self._src.append(src)

    def flush(self) -> None:
        dsts, srcs = self._dst, self._src
        self._dst, self._src = [], []
        if not dsts:
            return
        if not self.cuda:
            for d, s in zip(dsts, srcs):
                d.copy_(torch.from_numpy(s))
            return
        i = self._cur
        self._cur ^= 1
        if self._done[i] is not None:
            self._done[i].synchronize()     # the transfer that last read this buffer
        host_np = self._host_np[i]
        offs, off = [], 0
        for s in srcs:
            offs.append(off)
            n = s.nbytes
            host_np[off:off + n] = s.view(np.uint8).reshape(-1)
            off += (n + _ALIGN - 1) // _ALIGN * _ALIGN
        if off > self.nbytes:
            raise RuntimeError(f"step inputs need {off} staging bytes > {self.nbytes}")
        self._dev[:off].copy_(self._host[i][:off], non_blocking=True)
        evt = self._done[i] or torch.cuda.Event()
        evt.record()
        self._done[i] = evt
        views = [self._dev[o:o + s.nbytes].view(d.dtype) for o, s, d in zip(offs, srcs, dsts)]
        torch._foreach_copy_(dsts, views)
