"""SCV: the speculative-verification acceptance mask, computed on the device.

After the rejection sampler, row r of ``sampled_token_ids`` [R, max_spec_len + 1] holds the
accepted drafts, then one recovered-or-bonus token, then -1s. Draft i of request r is accepted
iff i < k_r and every output token at positions <= i equals the corresponding draft token.
(A recovered token never equals the draft it replaces, so this prefix rule reproduces the
sampler's decisions exactly.) The runner needs, per request: the accepted mask (which staged
K/V to commit: NWOR), the accepted count (how far to rewind) and how many tokens to emit.

Modes (VLLM_SCV_MODE):
  off         the baseline: copy to host, per-request Python loop (syncs; the reference).
  vectorized  one kernel for the whole batch (Triton on CUDA, a loop-free torch ref on CPU).
  graph       that computation replayed from a CUDA graph per padded (batch bucket, width);
              a missing graph is captured on first use (once per bucket; capture syncs).
  adaptive    replay a graph if one exists for the padded shape, else vectorized; a shape gets
              captured only once it has been seen ``adaptive_capture_after`` times (hot shapes
              pay the capture once, one-off shapes never do). ``ScvVerifier.warmup`` pre-captures.
The graphs live in scv_graph.py; the NWOR commit slots built from the mask in nwor_commit.py.

Robustness (seed 002): shapes are validated on the host from host-known sizes before anything
launches (no sync). Positions beyond sampled_token_ids.shape[1] are masked, never read (no OOB,
no device assert); 0 columns -> nothing accepted. Invalid shapes fall back to the host
reference with one log line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from vllm import envs
from vllm.logger import init_logger, log_once
from vllm.platform import has_triton, kernel_enabled, nonempty, nvtx_range
from vllm.v1.constants import PLACEHOLDER_TOKEN_ID
from vllm.v1.spec_decode.metadata import draft_spans
from vllm.v1.spec_decode.scv_graph import ScvGraphCache

logger = init_logger(__name__)

SCV_MODES = envs.SCV_MODES

if has_triton():
    import triton
    import triton.language as tl
    # Triton kernels may only read globals that are constexpr (the interpreter is laxer).
    _PH = tl.constexpr(PLACEHOLDER_TOKEN_ID)

    @triton.jit
    def _scv_compute_mask_kernel(
        draft_ptr,         # [T] int draft tokens, requests back to back
        num_draft,         # T (loads past it are masked: cu may disagree with T)
        cu_ptr,            # [R] int cumulative end offsets
        sampled_ptr,       # [R, num_cols] int rejection-sampler output
        stride_s0, stride_s1,
        num_cols,          # sampled_token_ids.shape[1]: positions >= it are out of bounds
        mask_ptr,          # [R, width] bool out
        num_acc_ptr,       # [R] int32 out
        valid_ptr,         # [R] int32 out
        width,             # mask width (max_spec_len)
        BLOCK: tl.constexpr,   # power of two > width
    ):
        r = tl.program_id(0)
        end = tl.load(cu_ptr + r).to(tl.int64)
        start = tl.load(cu_ptr + r - 1, mask=r > 0, other=0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        # A position is comparable only if it is one of this request's drafts, inside the mask,
        # inside the sampled row (the OOB clamp) and inside the draft tensor.
        ok = (offs < end - start) & (offs < width) & (offs < num_cols) & (start >= 0) \
            & (start + offs < num_draft)
        d = tl.load(draft_ptr + start + offs, mask=ok, other=_PH)
        s = tl.load(sampled_ptr + r * stride_s0 + offs * stride_s1, mask=ok,
                    other=_PH)
        match = ok & (s == d) & (s != _PH)
        # Accepted prefix length = first non-matching position (BLOCK > width, so it exists).
        n_acc = tl.min(tl.where(match, BLOCK, offs), axis=0)
        tl.store(mask_ptr + r * width + offs, offs < n_acc, mask=offs < width)
        tl.store(num_acc_ptr + r, n_acc.to(tl.int32))
        has_tail = n_acc < num_cols
        tail = tl.load(sampled_ptr + r * stride_s0 + n_acc * stride_s1, mask=has_tail,
                       other=_PH)
        valid = n_acc + (has_tail & (tail != _PH)).to(tl.int32)
        tl.store(valid_ptr + r, valid.to(tl.int32))
else:  # pragma: no cover - exercised only without triton
    _scv_compute_mask_kernel = None


@dataclass
class ScvResult:
    accepted_mask: torch.Tensor   # [R, W] bool: draft i of request r accepted
    num_accepted: torch.Tensor    # [R] int32
    bonus_index: torch.Tensor     # [R] int32: column of the recovered/bonus token (aliases
                                  # num_accepted: same tensor, no extra launch)
    valid_lengths: torch.Tensor   # [R] int32: tokens to emit = num_accepted + (1 if a non -1
                                  # token sits at bonus_index inside the row)
    mode: str                     # the mode that actually ran ('off', 'vectorized', 'graph')


# ---- mask: kernel, torch reference, host baseline ------------------------------------------------

def scv_compute_mask(draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                     sampled_token_ids: torch.Tensor, width: int, force_triton: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (accepted_mask [R, width] bool, num_accepted [R] int32, valid_lengths [R] int32).

    draft_token_ids [T]; cu_num_draft_tokens [R] (int32/int64); sampled_token_ids [R, C].
    Shapes must already be validated (ScvVerifier does it). One launch, grid = R.
    """
    device = sampled_token_ids.device
    if not kernel_enabled(device, force_triton):
        return scv_compute_mask_ref(draft_token_ids, cu_num_draft_tokens, sampled_token_ids,
                                    width)
    num_reqs = cu_num_draft_tokens.shape[0]
    mask = torch.empty(num_reqs, width, dtype=torch.bool, device=device)
    num_acc = torch.empty(num_reqs, dtype=torch.int32, device=device)
    valid = torch.empty(num_reqs, dtype=torch.int32, device=device)
    if num_reqs == 0:
        return mask, num_acc, valid
    _scv_compute_mask_kernel[(num_reqs,)](
        nonempty(draft_token_ids), draft_token_ids.shape[0], cu_num_draft_tokens,
        nonempty(sampled_token_ids), sampled_token_ids.stride(0), sampled_token_ids.stride(1),
        sampled_token_ids.shape[1], nonempty(mask), num_acc, valid, width,
        BLOCK=triton.next_power_of_2(width + 1))
    return mask, num_acc, valid


def scv_compute_mask_ref(draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                         sampled_token_ids: torch.Tensor, width: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch version of the kernel, vectorized over the batch (no loop, no host read)."""
    device = sampled_token_ids.device
    num_reqs, num_cols = sampled_token_ids.shape
    num_draft = draft_token_ids.shape[0]
    starts, ends = draft_spans(cu_num_draft_tokens.to(device))
    pos = torch.arange(width, device=device).unsqueeze(0)                      # [1, W]
    idx = starts.unsqueeze(1) + pos                                            # [R, W]
    ok = (pos < (ends - starts).unsqueeze(1)) & (pos < num_cols) & (starts >= 0).unsqueeze(1) \
        & (idx < num_draft)
    if num_draft > 0:
        d = draft_token_ids.to(device).long()[idx.clamp(0, num_draft - 1)]
    else:
        d = torch.full((num_reqs, width), PLACEHOLDER_TOKEN_ID, dtype=torch.int64, device=device)
    # The sampled row padded (or cut) to W columns; padding is never compared (ok is False).
    s = torch.full((num_reqs, width), PLACEHOLDER_TOKEN_ID, dtype=torch.int64, device=device)
    m = min(width, num_cols)
    s[:, :m] = sampled_token_ids[:, :m]
    match = ok & (s == d) & (s != PLACEHOLDER_TOKEN_ID)
    mask = match.long().cumprod(dim=1).bool()                                  # [R, W]
    num_acc = mask.sum(dim=1)                                                  # [R] int64
    if num_cols > 0:
        tail = sampled_token_ids.long().gather(1, num_acc.clamp(max=num_cols - 1).unsqueeze(1))
        has_tok = (num_acc < num_cols) & (tail.squeeze(1) != PLACEHOLDER_TOKEN_ID)
    else:
        has_tok = torch.zeros_like(num_acc, dtype=torch.bool)
    return mask, num_acc.int(), (num_acc + has_tok.long()).int()


def scv_compute_mask_host(draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                          sampled_token_ids: torch.Tensor, width: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 'off' baseline and the fallback for invalid shapes: copy to host, loop per request.

    Tolerates any shapes (1-D sampled = one row, missing rows = nothing accepted, cu past the
    draft tensor = truncated), so it is safe to call on inputs the fast paths reject.
    """
    device = sampled_token_ids.device
    drafts = draft_token_ids.reshape(-1).tolist()
    cu = cu_num_draft_tokens.reshape(-1).tolist()
    s = sampled_token_ids
    if s.dim() == 1:
        s = s.unsqueeze(0)
    elif s.dim() > 2:
        s = s.reshape(s.shape[0], -1)
    rows = s.tolist() if s.dim() == 2 else []
    num_reqs = len(cu)
    mask = [[False] * width for _ in range(num_reqs)]
    num_acc, valid = [0] * num_reqs, [0] * num_reqs
    for r in range(num_reqs):
        start = int(cu[r - 1]) if r > 0 else 0
        end = int(cu[r])
        mine = drafts[start:end] if 0 <= start <= end else []
        row = rows[r] if r < len(rows) else []
        n = 0
        while (n < len(mine) and n < width and n < len(row) and row[n] == mine[n]
               and row[n] != PLACEHOLDER_TOKEN_ID):
            mask[r][n] = True
            n += 1
        num_acc[r] = n
        valid[r] = n + (1 if n < len(row) and row[n] != PLACEHOLDER_TOKEN_ID else 0)
    return (torch.tensor(mask, dtype=torch.bool).reshape(num_reqs, width).to(device),
            torch.tensor(num_acc, dtype=torch.int32).to(device),
            torch.tensor(valid, dtype=torch.int32).to(device))


# ---- mode resolution and the verifier ------------------------------------------------------------

def resolve_scv_mode(requested: Optional[str], device: torch.device | str) -> str:
    """None -> 'vectorized' (fastest safe default). graph/adaptive need CUDA: elsewhere they
    degrade to 'vectorized' with one log line."""
    if requested is None:
        return "vectorized"
    mode = str(requested).strip().lower()
    if mode not in SCV_MODES:
        raise ValueError(f"scv_mode={requested!r} is invalid; expected one of {SCV_MODES}")
    if mode in ("graph", "adaptive") and torch.device(device).type != "cuda":
        log_once(logger, logging.INFO, f"scv-{mode}-no-cuda",
                 "SCV mode %r needs CUDA graphs; using 'vectorized' on %s", mode,
                 torch.device(device).type)
        return "vectorized"
    return mode


@dataclass
class ScvStats:
    """Counters of one verifier (the engine exports them as vllm:scv_* metrics)."""
    mode_counts: dict[str, int] = field(
        default_factory=lambda: {"off": 0, "vectorized": 0, "graph": 0})
    invalid_inputs: int = 0     # shapes the fast paths reject: computed on the host instead
    graphs: Optional[ScvGraphCache] = None

    @property
    def fallbacks(self) -> int:
        """Invalid inputs plus shapes whose graph capture failed (both took a slower path)."""
        return self.invalid_inputs + (self.graphs.capture_failures if self.graphs else 0)


class ScvVerifier:
    """Computes the acceptance mask in one mode and keeps the CUDA graphs and counters.

    Graph outputs are views of static buffers, valid until this verifier's next call (the
    runner consumes them within the step)."""

    def __init__(self, mode: Optional[str], device: torch.device | str,
                 max_num_reqs: int = 256, max_spec_len: int = 16,
                 adaptive_capture_after: int = 4):
        if max_num_reqs < 1:
            raise ValueError(f"max_num_reqs must be >= 1, got {max_num_reqs}")
        if max_spec_len < 1:
            raise ValueError(f"max_spec_len must be >= 1, got {max_spec_len}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # tensors report cuda:N; a bare "cuda" would never compare equal to them
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.mode = resolve_scv_mode(mode, self.device)
        self.max_spec_len = max_spec_len
        self.graphs = ScvGraphCache(scv_compute_mask, self.device, max_num_reqs, max_spec_len,
                                    adaptive_capture_after)
        self.stats = ScvStats(graphs=self.graphs)

    @property
    def mode_counts(self) -> dict[str, int]:
        return self.stats.mode_counts

    @property
    def fallbacks(self) -> int:
        return self.stats.fallbacks

    @property
    def num_graphs(self) -> int:
        return self.graphs.num_graphs

    @property
    def num_captures(self) -> int:
        return self.graphs.num_captures

    def compute(self, draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                sampled_token_ids: torch.Tensor,
                num_draft_tokens: Optional[Sequence[int]] = None,
                max_spec_len: Optional[int] = None) -> ScvResult:
        """The acceptance mask of one verify step.

        draft_token_ids [T]; cu_num_draft_tokens [R] cumulative end offsets on the device;
        sampled_token_ids [R, max_spec_len + 1] (rejection-sampler output, -1 padded).
        num_draft_tokens: optional host list of k_r; enables the (sync-free) consistency check
        against T and sets the mask width to max(k_r). max_spec_len overrides the width."""
        run_mode = self.mode
        with nvtx_range("scv_compute_mask"):
            width = _mask_width(sampled_token_ids, num_draft_tokens, max_spec_len)
            problem = _validate(draft_token_ids, cu_num_draft_tokens, sampled_token_ids,
                                num_draft_tokens)
            if problem is not None:
                log_once(logger, logging.WARNING, f"scv-invalid-{problem.split(':')[0]}",
                         "SCV: %s; falling back to the host reference", problem)
                self.stats.invalid_inputs += 1
                run_mode = "off"
            if run_mode in ("graph", "adaptive"):
                out = self.graphs.run(run_mode == "adaptive", draft_token_ids,
                                      cu_num_draft_tokens, sampled_token_ids, width)
                if out is not None:
                    return self._result(out, "graph")
                run_mode = "vectorized"
            if run_mode == "off":
                out = scv_compute_mask_host(draft_token_ids, cu_num_draft_tokens,
                                            sampled_token_ids, width)
            else:
                out = scv_compute_mask(draft_token_ids, cu_num_draft_tokens, sampled_token_ids,
                                       width)
            return self._result(out, run_mode)

    def warmup(self, batch_sizes: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None) -> int:
        """Capture graphs ahead of time (graph/adaptive on CUDA). Returns graphs captured."""
        if self.mode not in ("graph", "adaptive"):
            return 0
        return self.graphs.warmup(batch_sizes, widths)

    def _result(self, out, mode: str) -> ScvResult:
        self.stats.mode_counts[mode] += 1
        mask, num_acc, valid = out
        return ScvResult(mask, num_acc, num_acc, valid, mode)


def _mask_width(sampled: torch.Tensor, num_draft_tokens: Optional[Sequence[int]],
                max_spec_len: Optional[int]) -> int:
    """Host-known mask width: explicit > max(num_draft_tokens) > sampled columns - 1."""
    if max_spec_len is not None:
        return max(int(max_spec_len), 0)
    if num_draft_tokens is not None:
        return max((int(k) for k in num_draft_tokens), default=0)
    return max(sampled.shape[1] - 1, 0) if sampled.dim() == 2 else 0


def _validate(draft: torch.Tensor, cu: torch.Tensor, sampled: torch.Tensor,
              num_draft_tokens: Optional[Sequence[int]]) -> Optional[str]:
    """A description of the first problem, or None. Reads only shapes and host values."""
    if draft.dim() != 1:
        return f"draft_token_ids: expected 1-D, got shape {tuple(draft.shape)}"
    if cu.dim() != 1:
        return f"cu_num_draft_tokens: expected 1-D, got shape {tuple(cu.shape)}"
    if sampled.dim() != 2:
        return f"sampled_token_ids: expected 2-D, got shape {tuple(sampled.shape)}"
    if sampled.shape[0] != cu.shape[0]:
        return (f"sampled_token_ids: {sampled.shape[0]} rows but cu_num_draft_tokens has "
                f"{cu.shape[0]} requests")
    for name, t in (("draft_token_ids", draft), ("cu_num_draft_tokens", cu),
                    ("sampled_token_ids", sampled)):
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            return f"{name}: expected an integer dtype, got {t.dtype}"
    if draft.device != sampled.device or cu.device != sampled.device:
        return (f"devices: draft {draft.device}, cu {cu.device}, sampled {sampled.device} "
                f"differ")
    if num_draft_tokens is not None:
        if len(num_draft_tokens) != cu.shape[0]:
            return (f"num_draft_tokens: {len(num_draft_tokens)} entries but "
                    f"{cu.shape[0]} requests")
        if any(int(k) < 0 for k in num_draft_tokens):
            return "num_draft_tokens: negative entry"
        if sum(int(k) for k in num_draft_tokens) != draft.shape[0]:
            return (f"num_draft_tokens: sums to {sum(num_draft_tokens)} but draft_token_ids has "
                    f"{draft.shape[0]} tokens")
    return None
