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

Robustness (seed 002): shapes are validated on the host from host-known sizes before anything
launches (no sync). Positions beyond sampled_token_ids.shape[1] are masked, never read (no OOB,
no device assert); 0 columns -> nothing accepted. Invalid shapes fall back to the host
reference with one log line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from vllm import envs
from vllm.logger import init_logger, log_once
from vllm.platform import has_triton, nvtx_range, use_triton

logger = init_logger(__name__)

PLACEHOLDER_TOKEN_ID = -1
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

    @triton.jit
    def _commit_slots_kernel(
        mask_ptr,          # [R, width] bool accepted mask (any strides)
        stride_m0, stride_m1,
        width,
        slot_ptr,          # [T] int64 KV slot of each draft token
        num_draft,         # T
        cu_ptr,            # [R] int cumulative end offsets
        out_ptr,           # [T] int64 out: slot if accepted else -1
        BLOCK: tl.constexpr,   # power of two >= width; positions past it are pre-filled by caller
    ):
        r = tl.program_id(0)
        end = tl.load(cu_ptr + r).to(tl.int64)
        start = tl.load(cu_ptr + r - 1, mask=r > 0, other=0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        in_req = (offs < end - start) & (start >= 0) & (start + offs < num_draft)
        acc = tl.load(mask_ptr + r * stride_m0 + offs * stride_m1, mask=in_req & (offs < width),
                      other=0) != 0
        slot = tl.load(slot_ptr + start + offs, mask=in_req, other=-1)
        tl.store(out_ptr + start + offs, tl.where(acc, slot, -1), mask=in_req)
else:  # pragma: no cover - exercised only without triton
    _scv_compute_mask_kernel = None
    _commit_slots_kernel = None


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

def _kernel_enabled(device: torch.device, force_triton: bool) -> bool:
    if force_triton:
        if not has_triton():
            raise RuntimeError("force_triton=True but triton is not importable")
        return True
    return use_triton(device)


def _nonempty(t: torch.Tensor) -> torch.Tensor:
    # Triton wants a real pointer; an empty CUDA tensor may have data_ptr 0. Never read (masked).
    return t if t.numel() > 0 else torch.zeros(1, dtype=t.dtype, device=t.device)


def scv_compute_mask(draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                     sampled_token_ids: torch.Tensor, width: int, force_triton: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (accepted_mask [R, width] bool, num_accepted [R] int32, valid_lengths [R] int32).

    draft_token_ids [T]; cu_num_draft_tokens [R] (int32/int64); sampled_token_ids [R, C].
    Shapes must already be validated (ScvVerifier does it). One launch, grid = R.
    """
    device = sampled_token_ids.device
    if not _kernel_enabled(device, force_triton):
        return scv_compute_mask_ref(draft_token_ids, cu_num_draft_tokens, sampled_token_ids,
                                    width)
    num_reqs = cu_num_draft_tokens.shape[0]
    mask = torch.empty(num_reqs, width, dtype=torch.bool, device=device)
    num_acc = torch.empty(num_reqs, dtype=torch.int32, device=device)
    valid = torch.empty(num_reqs, dtype=torch.int32, device=device)
    if num_reqs == 0:
        return mask, num_acc, valid
    _scv_compute_mask_kernel[(num_reqs,)](
        _nonempty(draft_token_ids), draft_token_ids.shape[0], cu_num_draft_tokens,
        _nonempty(sampled_token_ids), sampled_token_ids.stride(0), sampled_token_ids.stride(1),
        sampled_token_ids.shape[1], _nonempty(mask), num_acc, valid, width,
        BLOCK=triton.next_power_of_2(width + 1))
    return mask, num_acc, valid


def _starts_ends(cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ends = cu.long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]]) if ends.numel() else ends
    return starts, ends


def scv_compute_mask_ref(draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                         sampled_token_ids: torch.Tensor, width: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch version of the kernel, vectorized over the batch (no loop, no host read)."""
    device = sampled_token_ids.device
    num_reqs, num_cols = sampled_token_ids.shape
    num_draft = draft_token_ids.shape[0]
    starts, ends = _starts_ends(cu_num_draft_tokens.to(device))
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


# ---- commit slots (NWOR) -------------------------------------------------------------------------

def acceptance_to_commit_slots(accepted_mask: torch.Tensor, draft_slot_mapping: torch.Tensor,
                               cu_num_draft_tokens: torch.Tensor,
                               max_num_draft_tokens: Optional[int] = None,
                               force_triton: bool = False) -> torch.Tensor:
    """commit_slots [T] int64: the draft's KV slot if accepted, else -1 ("do not write").

    accepted_mask [R, W]; draft_slot_mapping [T]; cu_num_draft_tokens [R]. Pass
    max_num_draft_tokens (host-known max k_r) to skip the -1 pre-fill when it is <= W.
    """
    device = draft_slot_mapping.device
    if not _kernel_enabled(device, force_triton):
        return acceptance_to_commit_slots_ref(accepted_mask, draft_slot_mapping,
                                              cu_num_draft_tokens)
    num_reqs, width = accepted_mask.shape
    num_draft = draft_slot_mapping.shape[0]
    block = triton.next_power_of_2(max(width, 1))
    if max_num_draft_tokens is None or max_num_draft_tokens > block:
        # Positions past the kernel's block are never accepted (>= W): pre-fill them with -1.
        out = torch.full((num_draft,), -1, dtype=torch.int64, device=device)
    else:
        out = torch.empty(num_draft, dtype=torch.int64, device=device)
    if num_reqs == 0 or num_draft == 0:
        return out.fill_(-1)
    _commit_slots_kernel[(num_reqs,)](
        _nonempty(accepted_mask), accepted_mask.stride(0), accepted_mask.stride(1), width,
        draft_slot_mapping, num_draft, cu_num_draft_tokens,
        out, BLOCK=block)
    return out


def acceptance_to_commit_slots_ref(accepted_mask: torch.Tensor,
                                   draft_slot_mapping: torch.Tensor,
                                   cu_num_draft_tokens: torch.Tensor) -> torch.Tensor:
    device = draft_slot_mapping.device
    num_reqs, width = accepted_mask.shape
    num_draft = draft_slot_mapping.shape[0]
    if num_reqs == 0 or width == 0 or num_draft == 0:
        return torch.full((num_draft,), -1, dtype=torch.int64, device=device)
    starts, ends = _starts_ends(cu_num_draft_tokens.to(device))
    t = torch.arange(num_draft, device=device)
    req = torch.searchsorted(ends, t, right=True)                              # [T] request of t
    in_req = req < num_reqs
    req_c = req.clamp(max=num_reqs - 1)
    i = t - starts[req_c]                                                      # position in req
    acc = in_req & (i < width) & (i >= 0) & accepted_mask[req_c, i.clamp(0, width - 1)]
    return torch.where(acc, draft_slot_mapping.long(), torch.full_like(t, -1))


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


def _batch_buckets(max_num_reqs: int) -> list[int]:
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


class ScvVerifier:
    """Computes the acceptance mask in one mode and keeps the CUDA graphs and counters.

    Graph outputs are views of static buffers, valid until this verifier's next call (the
    runner consumes them within the step); pass clone_outputs=True to get private copies.
    """

    def __init__(self, mode: Optional[str], device: torch.device | str,
                 max_num_reqs: int = 256, max_spec_len: int = 16,
                 adaptive_capture_after: int = 4, clone_outputs: bool = False):
        if max_num_reqs < 1:
            raise ValueError(f"max_num_reqs must be >= 1, got {max_num_reqs}")
        if max_spec_len < 1:
            raise ValueError(f"max_spec_len must be >= 1, got {max_spec_len}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # tensors report cuda:N; a bare "cuda" would never compare equal to them
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.requested_mode = mode
        self.mode = resolve_scv_mode(mode, self.device)
        self.max_num_reqs = max_num_reqs
        self.max_spec_len = max_spec_len
        self.adaptive_capture_after = adaptive_capture_after
        self.clone_outputs = clone_outputs
        self.buckets = _batch_buckets(max_num_reqs)
        self.mode_counts: dict[str, int] = {"off": 0, "vectorized": 0, "graph": 0}
        self.fallbacks = 0           # invalid shapes -> host ref, or graph capture failures
        self.last_capture_error: Optional[str] = None
        self.num_captures = 0
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._failed: set[tuple[int, int]] = set()
        self._seen: dict[tuple[int, int], int] = {}
        self._pool = None

    # -- public ---------------------------------------------------------------------------------

    def compute(self, draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                sampled_token_ids: torch.Tensor,
                num_draft_tokens: Optional[Sequence[int]] = None,
                max_spec_len: Optional[int] = None, mode: Optional[str] = None,
                force_triton: bool = False) -> ScvResult:
        """See compute_acceptance. mode overrides this verifier's mode for one call."""
        run_mode = self.mode if mode is None else resolve_scv_mode(mode, self.device)
        with nvtx_range("scv_compute_mask"):
            width = _mask_width(sampled_token_ids, num_draft_tokens, max_spec_len)
            problem = _validate(draft_token_ids, cu_num_draft_tokens, sampled_token_ids,
                                num_draft_tokens)
            if problem is not None:
                log_once(logger, logging.WARNING, f"scv-invalid-{problem.split(':')[0]}",
                         "SCV: %s; falling back to the host reference", problem)
                self.fallbacks += 1
                run_mode = "off"
            if run_mode in ("graph", "adaptive"):
                out = self._try_graph(run_mode, draft_token_ids, cu_num_draft_tokens,
                                      sampled_token_ids, width)
                if out is not None:
                    return self._result(out, "graph")
                run_mode = "vectorized"
            if run_mode == "off":
                out = scv_compute_mask_host(draft_token_ids, cu_num_draft_tokens,
                                            sampled_token_ids, width)
            else:
                out = scv_compute_mask(draft_token_ids, cu_num_draft_tokens, sampled_token_ids,
                                       width, force_triton=force_triton)
            return self._result(out, run_mode)

    def warmup(self, batch_sizes: Optional[Sequence[int]] = None,
               widths: Optional[Sequence[int]] = None) -> int:
        """Capture graphs ahead of time (graph/adaptive on CUDA). Returns graphs captured."""
        if self.mode not in ("graph", "adaptive"):
            return 0
        before = self.num_captures
        for rb in sorted({self._bucket(b) for b in (batch_sizes or self.buckets)} - {None}):
            for w in (widths or range(1, self.max_spec_len + 1)):
                self._get_graph(rb, w, capture=True)
        return self.num_captures - before

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    # -- graph path -----------------------------------------------------------------------------

    def _bucket(self, num_reqs: int) -> Optional[int]:
        for b in self.buckets:
            if b >= num_reqs:
                return b
        return None

    def _try_graph(self, mode: str, draft: torch.Tensor, cu: torch.Tensor,
                   sampled: torch.Tensor, width: int):
        num_reqs = cu.shape[0]
        rb = self._bucket(num_reqs)
        if (rb is None or num_reqs == 0 or not 1 <= width <= self.max_spec_len
                or any(t.device != self.device for t in (draft, cu, sampled))):
            return None
        key = (rb, width)
        if mode == "adaptive" and key not in self._graphs:
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] < self.adaptive_capture_after:
                return None
        g = self._get_graph(rb, width, capture=True)
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
        out = (g.mask[:num_reqs], g.num_acc[:num_reqs], g.valid[:num_reqs])
        if self.clone_outputs:
            out = tuple(t.clone() for t in out)
        return out

    def _get_graph(self, rb: int, width: int, capture: bool) -> Optional[_Graph]:
        key = (rb, width)
        if key in self._graphs or key in self._failed or not capture:
            return self._graphs.get(key)
        try:
            g = self._capture(rb, width)
        except Exception as exc:  # capture is an optimization: never fail the step for it
            self._failed.add(key)
            self.fallbacks += 1
            self.last_capture_error = f"{type(exc).__name__}: {exc}"
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
            scv_compute_mask(draft, cu, sampled, width)
        torch.cuda.current_stream(dev).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            mask, num_acc, valid = scv_compute_mask(draft, cu, sampled, width)
        return _Graph(graph, draft, cu, sampled, mask, num_acc, valid)

    def _result(self, out, mode: str) -> ScvResult:
        self.mode_counts[mode] += 1
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


_default_verifiers: dict[str, ScvVerifier] = {}


def compute_acceptance(draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor,
                       sampled_token_ids: torch.Tensor, mode: Optional[str] = None, *,
                       num_draft_tokens: Optional[Sequence[int]] = None,
                       max_spec_len: Optional[int] = None,
                       verifier: Optional[ScvVerifier] = None,
                       force_triton: bool = False) -> ScvResult:
    """The acceptance mask of one verify step.

    draft_token_ids [T]; cu_num_draft_tokens [R] cumulative end offsets on the device;
    sampled_token_ids [R, max_spec_len + 1] (rejection-sampler output, -1 padded).
    num_draft_tokens: optional host list of k_r; enables the (sync-free) consistency check
    against T and sets the mask width to max(k_r). max_spec_len overrides the width.
    mode None = the verifier's mode (or resolve_scv_mode(None) = 'vectorized').
    verifier: holds graphs/counters; default one per device (shared by callers).
    """
    if verifier is None:
        key = str(sampled_token_ids.device)
        verifier = _default_verifiers.get(key)
        if verifier is None:
            verifier = _default_verifiers[key] = ScvVerifier(None, sampled_token_ids.device)
    return verifier.compute(draft_token_ids, cu_num_draft_tokens, sampled_token_ids,
                            num_draft_tokens=num_draft_tokens, max_spec_len=max_spec_len,
                            mode=mode, force_triton=force_triton)
