"""Sampler: logits [N, V] -> one token per row, plus logprobs when asked.

Order: penalties -> greedy argmax -> temperature -> min_p / top_k / top_p -> exponential race.
Everything stays on the device; nothing here reads a device value on the host, so the caller's
single ``.tolist()`` at the end of the step is the only sync.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from vllm.platform import nvtx_range
from vllm.sampling_params import _SAMPLING_EPS
from vllm.v1.sample.metadata import SamplingMetadata


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor             # [N] int64
    # Column 0 is the sampled token, columns 1..K the top-K of the raw model distribution.
    logprobs_token_ids: Optional[torch.Tensor]  # [N, K + 1] int64, None if no row asked
    logprobs: Optional[torch.Tensor]            # [N, K + 1] fp32
    selected_logprobs: torch.Tensor             # [N] fp32, raw logprob of the sampled token
    sampled_token_ranks: Optional[torch.Tensor] = None  # [N] int64, 1 = the argmax


# ---- building blocks (the rejection sampler reuses these) ---------------------------------------

def apply_penalties(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Repetition (prompt + output tokens), frequency and presence (output tokens) penalties.

    logits: [N, V] fp32, not modified; returns a new tensor.
    """
    n, vocab = logits.shape
    # Pad with V and scatter into V + 1 columns: the padding column is dropped afterwards.
    out_ids = metadata.padded_token_ids("output", vocab)                       # [N, Lo]
    counts = torch.zeros(n, vocab + 1, dtype=logits.dtype, device=logits.device)
    counts.scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=logits.dtype))
    counts = counts[:, :vocab]                                                 # [N, V]
    out_mask = counts > 0

    rep = metadata.repetition_penalties.unsqueeze(1)                           # [N, 1]
    seen = out_mask
    if metadata.prompt_token_ids is not None:
        prompt_ids = metadata.padded_token_ids("prompt", vocab)               # [N, Lp]
        prompt_seen = torch.zeros(n, vocab + 1, dtype=torch.bool, device=logits.device)
        prompt_seen.scatter_(1, prompt_ids, True)
        seen = seen | prompt_seen[:, :vocab]
    rep = torch.where(seen, rep, torch.ones_like(rep))                         # [N, V]
    # Upstream rule: shrink positive logits, push negative ones further down.
    logits = torch.where(logits > 0, logits / rep, logits * rep)
    logits = logits - metadata.frequency_penalties.unsqueeze(1) * counts
    logits = logits - metadata.presence_penalties.unsqueeze(1) * out_mask.to(logits.dtype)
    return logits


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits [N, V] / temperature [N]. Greedy rows (temperature ~0) are divided by 1 instead:
    their sample is replaced by the argmax anyway, and this keeps them finite."""
    temp = torch.where(temperature < _SAMPLING_EPS, torch.ones_like(temperature), temperature)
    return logits / temp.unsqueeze(1)


def apply_top_k_top_p_min_p(logits: torch.Tensor, k: Optional[torch.Tensor],
                            p: Optional[torch.Tensor],
                            min_p: Optional[torch.Tensor]) -> torch.Tensor:
    """Mask filtered-out tokens to -inf. Pass None for a filter no row uses (skips its work).

    logits: [N, V] fp32 (after temperature); k: [N] int (0 = off); p: [N] in (0, 1] (1 = off);
    min_p: [N] in [0, 1] (0 = off). min_p is relative to the top token's probability; top_p is
    applied to the distribution left after top_k. Returns a new tensor.
    """
    if min_p is not None:
        # prob < min_p * max_prob  <=>  logit < max_logit + log(min_p); log(0) = -inf masks nothing.
        max_logit = logits.amax(dim=-1, keepdim=True)
        threshold = max_logit + torch.log(min_p.to(logits.dtype)).unsqueeze(1)
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if k is None and p is None:
        return logits

    vocab = logits.shape[-1]
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)           # [N, V]
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)              # [1, V]
    if k is not None:
        # Keep exactly the first k of the sorted order (ties broken by sort order).
        k_eff = torch.where(k <= 0, torch.full_like(k, vocab), k.clamp(max=vocab))
        sorted_logits = sorted_logits.masked_fill(rank >= k_eff.unsqueeze(1), float("-inf"))
    if p is not None:
        probs = sorted_logits.softmax(dim=-1)
        # Keep a token while the mass strictly before it is < p: the top token always survives.
        mass_before = probs.cumsum(dim=-1) - probs
        drop = (mass_before >= p.unsqueeze(1)) & (p < 1.0).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)


def _filters(metadata: SamplingMetadata, rows: Optional[torch.Tensor]):
    def pick(t: torch.Tensor, skip: bool) -> Optional[torch.Tensor]:
        if skip:
            return None
        return t if rows is None else t.index_select(0, rows)
    return (pick(metadata.top_k, metadata.no_top_k), pick(metadata.top_p, metadata.no_top_p),
            pick(metadata.min_p, metadata.no_min_p))


def compute_probs(logits: torch.Tensor, metadata: SamplingMetadata,
                  rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax of the temperature-scaled, filtered logits: the distribution a random row samples.

    logits: [M, V] fp32. rows: optional [M] int64 index into the metadata's rows (the rejection
    sampler maps each draft/bonus position to its request); None means M == N, row i = row i.
    """
    temp = metadata.temperature if rows is None else metadata.temperature.index_select(0, rows)
    scaled = apply_temperature(logits, temp)
    k, p, min_p = _filters(metadata, rows)
    return apply_top_k_top_p_min_p(scaled, k, p, min_p).softmax(dim=-1)


def exponential_noise(shape: tuple[int, int], device: torch.device,
                      generators: dict[int, torch.Generator],
                      row_slices: Optional[dict[int, tuple[int, int]]] = None) -> torch.Tensor:
    """Exp(1) noise [M, V] for the exponential race; seeded rows draw from their own generator.

    row_slices maps a generator's key to the [start, end) rows it fills (default: row key only).
    One launch per seeded request, none reading device values.
    """
    noise = torch.empty(shape, dtype=torch.float32, device=device).exponential_()
    for key, gen in generators.items():
        start, end = row_slices[key] if row_slices is not None else (key, key + 1)
        if end > start:
            noise[start:end].exponential_(generator=gen)
    # exponential_ may return exactly 0 on some backends; 0 would make p / 0 = inf (or nan).
    return noise.clamp_min_(torch.finfo(torch.float32).tiny)


def race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(probs / Exp(1)) is an exact sample from probs (the exponential race). [M] int64."""
    return (probs / noise).argmax(dim=-1)


# ---- the sampler -------------------------------------------------------------------------------

class Sampler(nn.Module):

    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata,
                compute_selected: bool = True) -> SamplerOutput:
        """compute_selected=False skips the sampled token's logprob when nobody asked for
        logprobs (saves a reduction over the vocabulary per step)."""
        with nvtx_range("sampler"):
            return self._forward(logits, metadata, compute_selected)

    def _forward(self, logits: torch.Tensor, metadata: SamplingMetadata,
                 compute_selected: bool = True) -> SamplerOutput:
        if logits.dim() != 2:
            raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
        if logits.shape[0] != metadata.num_rows:
            raise ValueError(f"logits has {logits.shape[0]} rows, metadata {metadata.num_rows}")
        raw = logits.float()
        x = raw if metadata.no_penalties else apply_penalties(raw, metadata)

        greedy_ids = None if metadata.all_random else x.argmax(dim=-1)
        if metadata.all_greedy:
            sampled = greedy_ids
        else:
            probs = compute_probs(x, metadata)
            noise = exponential_noise(tuple(probs.shape), probs.device, metadata.generators)
            sampled = race(probs, noise)
            if greedy_ids is not None:
                sampled = torch.where(metadata.is_greedy, greedy_ids, sampled)

        if not compute_selected and metadata.max_num_logprobs is None:
            return SamplerOutput(sampled, None, None, None)
        return self._logprobs(raw, sampled, metadata.max_num_logprobs)

    @staticmethod
    def _logprobs(raw: torch.Tensor, sampled: torch.Tensor,
                  max_num_logprobs: Optional[int]) -> SamplerOutput:
        """Logprobs of the raw model distribution (before penalties / temperature / filters)."""
        idx = sampled.unsqueeze(1)                                             # [N, 1]
        if max_num_logprobs is None:
            # logit - logsumexp: one reduction, no [N, V] log_softmax materialized.
            selected = raw.gather(1, idx).squeeze(1) - torch.logsumexp(raw, dim=-1)
            return SamplerOutput(sampled, None, None, selected)
        logprobs = raw.log_softmax(dim=-1)
        selected = logprobs.gather(1, idx)                                     # [N, 1]
        ranks = (logprobs > selected).sum(dim=-1) + 1
        if max_num_logprobs > 0:
            top_vals, top_ids = logprobs.topk(min(max_num_logprobs, raw.shape[1]), dim=-1)
            ids = torch.cat([idx, top_ids], dim=1)
            vals = torch.cat([selected, top_vals], dim=1)
        else:
            ids, vals = idx.clone(), selected.clone()
        return SamplerOutput(sampled, ids, vals, selected.squeeze(1), ranks)
