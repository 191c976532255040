"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the vocab."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm.distributed.parallel_state import (get_tp_rank, get_tp_size, tp_all_gather_last_dim,
                                             tp_all_reduce)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        tp = get_tp_size()
        self.vocab_size = vocab_size
        self.shard = (vocab_size + tp - 1) // tp
        self.start = get_tp_rank() * self.shard
        self.weight = nn.Parameter(torch.zeros(self.shard, dim), requires_grad=False)

    def load(self, param: torch.Tensor, full: torch.Tensor) -> None:
        part = full[self.start:self.start + self.shard]
        param.data.zero_()
        param.data[:part.shape[0]].copy_(part)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if get_tp_size() == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mask = (local < 0) | (local >= self.shard)
        out = F.embedding(local.masked_fill(mask, 0), self.weight)
        out = out.masked_fill(mask.unsqueeze(-1), 0)
        return tp_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """logits = h W^T; with TP each rank computes its vocab slice and they are gathered."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.linear(hidden, self.weight)
        if get_tp_size() > 1:
            out = tp_all_gather_last_dim(out)
        return out[..., :self.vocab_size]
