"""Rejection sampler for speculative decoding (Leviathan et al. 2023, "Fast Inference from
Transformers via Speculative Decoding").

Per request r with k_r drafts d_0..d_{k-1} (drafted from q) and target distributions p_0..p_k:
  - accept d_i with probability min(1, p_i(d_i) / q_i(d_i)), scanning left to right;
  - at the first rejection emit a token from normalize(max(0, p_i - q_i)) (the "recovered"
    token) and stop;
  - if all k_r are accepted, emit a bonus token sampled from p_k.
Every emitted token is then distributed exactly as p. Greedy requests use the argmax instead:
accept while d_i == argmax p_i, emit the argmax at the first mismatch, or the bonus argmax.

Output row r: [accepted drafts..., recovered-or-bonus, -1, -1, ...], width max_k + 1.

Everything stays on the device (no .item()/.tolist()); the caller syncs once when it reads the
output. The left-to-right accept scan is a Triton kernel (one program per request) with a
vectorized torch reference (rejection_scan_ref) that the CPU runs.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch
from torch import nn

from vllm.platform import has_triton, kernel_enabled, nvtx_range, to_device_async
from vllm.v1.constants import PLACEHOLDER_TOKEN_ID
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.sampler import compute_probs, exponential_noise, race

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _rejection_scan_kernel(
        out_ptr,          # [R, out_cols] int64
        out_cols,         # max_k + 1
        cu_ptr,           # [R] int64 cumulative end offsets of each request's drafts
        draft_ptr,        # [T] int64 draft tokens
        p_ptr,            # [T] fp32 p_i(d_i) (unused if ALL_GREEDY)
        q_ptr,            # [T] fp32 q_i(d_i) (unused if not HAS_Q: n-gram q is one-hot -> 1)
        u_ptr,            # [T] fp32 uniforms in [0, 1) (unused if ALL_GREEDY)
        rec_ptr,          # [T] int64 recovered token per position (argmax for greedy requests)
        bonus_ptr,        # [R] int64 bonus token per request
        greedy_ptr,       # [R] bool (unused if ALL_GREEDY)
        HAS_Q: tl.constexpr,
        ALL_GREEDY: tl.constexpr,
        BLOCK: tl.constexpr,   # power of two >= out_cols
    ):
        r = tl.program_id(0)
        end = tl.load(cu_ptr + r)
        start = tl.load(cu_ptr + r - 1, mask=r > 0, other=0)
        k = end - start
        offs = tl.arange(0, BLOCK)
        in_draft = offs < k
        d = tl.load(draft_ptr + start + offs, mask=in_draft, other=-1)
        rec = tl.load(rec_ptr + start + offs, mask=in_draft, other=-1)
        if ALL_GREEDY:
            accept = d == rec
        else:
            p = tl.load(p_ptr + start + offs, mask=in_draft, other=0.0)
            u = tl.load(u_ptr + start + offs, mask=in_draft, other=1.0)
            if HAS_Q:
                q = tl.load(q_ptr + start + offs, mask=in_draft, other=1.0)
                # u < min(1, p/q)  <=>  u * q < p  (no division; q = 0 accepts iff p > 0)
                accept_random = u * q < p
            else:
                accept_random = u < p
            greedy = tl.load(greedy_ptr + r) != 0
            accept = tl.where(greedy, d == rec, accept_random)
        accept = accept & in_draft
        # Accepted prefix length = first position that is not accepted (k if all are).
        n_acc = tl.min(tl.where(accept, BLOCK, offs), axis=0)
        bonus = tl.load(bonus_ptr + r)
        tail = tl.where(offs < k, rec, bonus)
        tok = tl.where(offs < n_acc, d, tl.where(offs == n_acc, tail, -1))
        tl.store(out_ptr + r * out_cols + offs, tok, mask=offs < out_cols)
else:  # pragma: no cover - exercised only without triton
    _rejection_scan_kernel = None


def rejection_scan(cu_num_draft_tokens: torch.Tensor, draft_token_ids: torch.Tensor,
                   draft_target_probs: Optional[torch.Tensor],
                   draft_draft_probs: Optional[torch.Tensor],
                   uniforms: Optional[torch.Tensor], recovered: torch.Tensor,
                   bonus: torch.Tensor, is_greedy: Optional[torch.Tensor], max_k: int,
                   force_triton: bool = False) -> torch.Tensor:
    """The accept/recover scan -> output [R, max_k + 1] int64, -1 padded.

    cu_num_draft_tokens [R] int64 end offsets; draft_token_ids / draft_target_probs (p(d)) /
    draft_draft_probs (q(d), None = n-gram) / uniforms / recovered: [T]; bonus [R];
    is_greedy [R] bool. draft_target_probs/uniforms/is_greedy None = every request is greedy.
    force_triton runs the kernel even on CPU tensors (needs TRITON_INTERPRET=1; tests only).
    """
    num_reqs = cu_num_draft_tokens.shape[0]
    if not kernel_enabled(bonus.device, force_triton):
        return rejection_scan_ref(cu_num_draft_tokens, draft_token_ids, draft_target_probs,
                                  draft_draft_probs, uniforms, recovered, bonus, is_greedy, max_k)
    out = torch.empty(num_reqs, max_k + 1, dtype=torch.int64, device=bonus.device)
    if num_reqs == 0:
        return out
    all_greedy = draft_target_probs is None
    # The kernel indexes flat 1-D tensors: a strided view (a column of a matrix) would be
    # read as if contiguous. No-ops for contiguous inputs.
    cu_num_draft_tokens, draft_token_ids = cu_num_draft_tokens.contiguous(), \
        draft_token_ids.contiguous()
    recovered, bonus = recovered.contiguous(), bonus.contiguous()
    dummy = recovered  # never read when the matching constexpr flag disables the load
    _rejection_scan_kernel[(num_reqs,)](
        out, max_k + 1, cu_num_draft_tokens, draft_token_ids,
        dummy if all_greedy else draft_target_probs,
        dummy if draft_draft_probs is None else draft_draft_probs,
        dummy if all_greedy else uniforms, recovered, bonus,
        bonus if all_greedy else is_greedy,
        HAS_Q=draft_draft_probs is not None, ALL_GREEDY=all_greedy,
        BLOCK=triton.next_power_of_2(max_k + 1))
    return out


def rejection_scan_ref(cu_num_draft_tokens: torch.Tensor, draft_token_ids: torch.Tensor,
                       draft_target_probs: Optional[torch.Tensor],
                       draft_draft_probs: Optional[torch.Tensor],
                       uniforms: Optional[torch.Tensor], recovered: torch.Tensor,
                       bonus: torch.Tensor, is_greedy: Optional[torch.Tensor],
                       max_k: int) -> torch.Tensor:
    """Torch version of the scan, vectorized over requests (no per-request loop)."""
    device = bonus.device
    num_reqs = cu_num_draft_tokens.shape[0]
    num_draft = draft_token_ids.shape[0]
    ends = cu_num_draft_tokens.long()
    starts = ends - _lengths(ends)
    k = (ends - starts).unsqueeze(1)                                           # [R, 1]
    pos = torch.arange(max_k + 1, device=device).unsqueeze(0)                  # [1, K+1]
    in_draft = pos < k                                                         # [R, K+1]
    if num_draft == 0:
        # Nobody drafted: every row is just its bonus token.
        out = torch.full((num_reqs, max_k + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int64,
                         device=device)
        out[:, 0] = bonus
        return out
    idx = (starts.unsqueeze(1) + pos).clamp(0, num_draft - 1)                  # [R, K+1]

    def gather(t: torch.Tensor, fill) -> torch.Tensor:
        return torch.where(in_draft, t[idx], torch.full_like(t[idx], fill))

    d = gather(draft_token_ids, PLACEHOLDER_TOKEN_ID)
    rec = gather(recovered, PLACEHOLDER_TOKEN_ID)
    accept = d == rec
    if draft_target_probs is not None:
        p = gather(draft_target_probs, 0.0)
        u = gather(uniforms, 1.0)
        if draft_draft_probs is not None:
            accept_random = u * gather(draft_draft_probs, 1.0) < p
        else:
            accept_random = u < p
        accept = torch.where(is_greedy.unsqueeze(1), accept, accept_random)
    accept = accept & in_draft
    n_acc = accept.long().cumprod(dim=1).sum(dim=1, keepdim=True)              # [R, 1]
    tail = torch.where(in_draft, rec, bonus.unsqueeze(1))
    placeholder = torch.full_like(d, PLACEHOLDER_TOKEN_ID)
    return torch.where(pos < n_acc, d, torch.where(pos == n_acc, tail, placeholder))


def _lengths(ends: torch.Tensor) -> torch.Tensor:
    """Cumulative end offsets [R] -> lengths [R] (device op, no sync)."""
    return torch.diff(ends, prepend=ends.new_zeros(1)) if ends.numel() else ends


class RejectionSampler(nn.Module):
    """Verifies drafts against the target model. Penalties are NOT applied to the target logits
    here: spec decode verifies against the temperature / top-k / top-p / min-p distribution only
    (a penalty would need the per-position output history including earlier drafts)."""

    def forward(self, draft_token_ids: torch.Tensor, num_draft_tokens: Sequence[int],
                draft_probs: Optional[torch.Tensor], target_logits: torch.Tensor,
                metadata: SamplingMetadata, force_triton: bool = False) -> torch.Tensor:
        with nvtx_range("rejection_sampler"):
            return self._forward(draft_token_ids, list(num_draft_tokens), draft_probs,
                                 target_logits, metadata, force_triton)

    def _forward(self, draft_token_ids, num_draft_tokens: list[int], draft_probs,
                 target_logits: torch.Tensor, metadata: SamplingMetadata,
                 force_triton: bool) -> torch.Tensor:
        num_reqs = len(num_draft_tokens)
        num_draft = sum(num_draft_tokens)
        _validate(draft_token_ids, num_draft_tokens, draft_probs, target_logits, metadata)
        device = target_logits.device
        max_k = max(num_draft_tokens, default=0)
        if num_reqs == 0:
            return torch.empty(0, 1, dtype=torch.int64, device=device)

        # Host-built index maps (from the host list: no device read), one H2D copy.
        k_host = torch.tensor(num_draft_tokens, dtype=torch.int64)
        cu_host = k_host.cumsum(0)
        req_ids = torch.arange(num_reqs, dtype=torch.int64)
        draft_req = torch.repeat_interleave(req_ids, k_host)                   # [T] request
        draft_rows = torch.arange(num_draft, dtype=torch.int64) + draft_req    # [T] logits row
        bonus_rows = cu_host + req_ids                                         # [R] logits row
        packed = torch.cat([cu_host, draft_req, draft_rows, bonus_rows])
        packed = to_device_async(packed, device)
        cu, draft_req_d, draft_rows_d, bonus_rows_d = packed.split(
            [num_reqs, num_draft, num_draft, num_reqs])

        logits = target_logits.float()
        draft_ids = draft_token_ids.long()
        draft_logits = logits.index_select(0, draft_rows_d)                    # [T, V]
        bonus_logits = logits.index_select(0, bonus_rows_d)                    # [R, V]

        greedy_rec = greedy_bonus = None
        if not metadata.all_random:
            greedy_rec = draft_logits.argmax(dim=-1)
            greedy_bonus = bonus_logits.argmax(dim=-1)
        if metadata.all_greedy:
            return rejection_scan(cu, draft_ids, None, None, None, greedy_rec, greedy_bonus,
                                  None, max_k, force_triton=force_triton)

        # Target distribution p with each request's temperature and filters.
        p_draft = compute_probs(draft_logits, metadata, rows=draft_req_d)       # [T, V]
        p_bonus = compute_probs(bonus_logits, metadata)                        # [R, V]
        gens = metadata.generators
        starts = [0, *itertools.accumulate(num_draft_tokens)]  # host list: no device read
        draft_slices = {r: (starts[r], starts[r + 1]) for r in gens}

        uniforms = torch.rand(num_draft, dtype=torch.float32, device=device)
        for r, gen in gens.items():
            s, e = draft_slices[r]
            if e > s:
                uniforms[s:e].uniform_(generator=gen)
        uniforms = _draw_uniforms_hook(uniforms)

        d_col = draft_ids.unsqueeze(1)                                         # [T, 1]
        p_d = p_draft.gather(1, d_col).squeeze(1)                              # [T]
        if draft_probs is None:
            # n-gram: q is one-hot at d, so max(0, p - q) is p with d zeroed.
            q_d = None
            residual = p_draft.scatter(1, d_col, 0.0)
        else:
            q = draft_probs.float()
            q_d = q.gather(1, d_col).squeeze(1)
            residual = (p_draft - q).clamp_min_(0.0)
        # normalize() is unnecessary: the exponential race's argmax is scale-invariant.
        noise = exponential_noise(tuple(residual.shape), device, gens, draft_slices)
        score = residual.div_(noise)
        # Never "recover" the rejected draft itself (its residual is 0 anyway; this also covers
        # an all-zero residual row). SCV's prefix rule relies on recovered != draft.
        score.scatter_(1, d_col, -1.0)
        recovered = score.argmax(dim=-1)                                       # [T]
        bonus = race(p_bonus, exponential_noise(tuple(p_bonus.shape), device, gens))

        is_greedy = metadata.is_greedy                                         # [R]
        if greedy_rec is not None:
            recovered = torch.where(is_greedy.index_select(0, draft_req_d), greedy_rec, recovered)
            bonus = torch.where(is_greedy, greedy_bonus, bonus)
        return rejection_scan(cu, draft_ids, p_d, q_d, uniforms, recovered, bonus, is_greedy,
                              max_k, force_triton=force_triton)


def _draw_uniforms_hook(uniforms: torch.Tensor) -> torch.Tensor:
    """Identity. Tests replace it (monkeypatch) to build a deliberately broken sampler."""
    return uniforms


def _validate(draft_token_ids: torch.Tensor, num_draft_tokens: list[int],
              draft_probs: Optional[torch.Tensor], target_logits: torch.Tensor,
              metadata: SamplingMetadata) -> None:
    num_reqs, num_draft = len(num_draft_tokens), sum(num_draft_tokens)
    if any(k < 0 for k in num_draft_tokens):
        raise ValueError(f"num_draft_tokens must be non-negative, got {num_draft_tokens}")
    if draft_token_ids.dim() != 1 or draft_token_ids.shape[0] != num_draft:
        raise ValueError(f"draft_token_ids must be [{num_draft}], got "
                         f"{tuple(draft_token_ids.shape)}")
    if target_logits.dim() != 2 or target_logits.shape[0] != num_draft + num_reqs:
        raise ValueError(f"target_logits must be [{num_draft + num_reqs}, V], got "
                         f"{tuple(target_logits.shape)}")
    if draft_probs is not None and tuple(draft_probs.shape) != (num_draft, target_logits.shape[1]):
        raise ValueError(f"draft_probs must be [{num_draft}, {target_logits.shape[1]}], got "
                         f"{tuple(draft_probs.shape)}")
    if metadata.num_rows != num_reqs:
        raise ValueError(f"metadata has {metadata.num_rows} rows, expected one per request "
                         f"({num_reqs})")
