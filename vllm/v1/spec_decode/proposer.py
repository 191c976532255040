"""The proposer interface: what the model runner calls on a drafter, what a drafter is given
(a small context, never the runner), and the choice of drafter from the config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import torch

from vllm.config import VllmConfig


@dataclass
class ProposeReq:
    req_id: str
    token_ids: list[int]        # the whole sequence so far (prompt + output)
    num_computed: int           # target tokens whose K/V are in the cache (verified)
    block_ids: list[int]        # the request's block table (draft KV shares the layout)
    num_preemptions: int = 0    # a change means the request's blocks were reallocated
    max_drafts: Optional[int] = None  # at most this many drafts (adaptive length); None = k


class TargetModel(Protocol):
    """What a drafter may use of the target model (EAGLE shares its embedding and LM head)."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ProposerContext:
    config: VllmConfig
    device: torch.device
    dtype: torch.dtype
    block_size: int             # the target's: a drafter's cache shares its block ids
    target: TargetModel
    # (max_tokens, max_reqs, max_blocks) -> the runner's input buffers (InputBuffers) sized for
    # a drafter's batches: drafters prepare inputs exactly as the target does.
    new_input_buffers: Callable[[int, int, int], Any]
    # (capture sizes, name) -> the runner's CUDA graph runner (CudaGraphRunner), not captured
    # yet; and max tokens -> the runner's capture sizes up to it. Drafters replay their own
    # per-token forwards from such graphs.
    new_graph_runner: Callable[..., Any]
    graph_sizes: Callable[[int], list[int]]


class Proposer(Protocol):
    """A drafter. Subclass it explicitly to get the defaults below (a drafter without a KV
    cache, that does not read the target's hidden states and keeps no per-request state)."""

    # Draft tokens not made because of the confidence early exit, since the drafter was built
    # (a running count; per request and call: its cap minus the drafts it returned). The
    # runner mirrors it into SpecDecodingStats.num_draft_tokens_stopped after each call.
    stopped_tokens: int = 0

    def propose(self, reqs: list[ProposeReq]) -> dict[str, list[int]]:
        """Draft tokens per request id (requests absent from the result get no drafts); at
        most k per request, and at most r.max_drafts when it is set (0: none)."""
        ...

    def kv_bytes_per_block(self) -> int:
        """Bytes of the drafter's own KV cache per block (it gets as many blocks as the target)."""
        return 0

    def initialize_kv_cache(self, num_blocks: int) -> None:
        pass

    def observe_target(self, so, hidden: torch.Tensor, rows: list[tuple[int, int]]) -> None:
        """Called after every target forward: hidden [T, H], rows[i] = the token rows of
        so.reqs[i]. EAGLE keeps them; other drafters ignore them."""

    def drop(self, req_id: str) -> None:
        """The request finished: forget its state."""

    def chain_exit(self, req_id: str, num_tokens: int) -> None:
        """The request left chained steps (chain.py) with num_tokens tokens."""


def build_proposer(ctx: ProposerContext) -> Proposer | None:
    sc = ctx.config.speculative_config
    if sc is None:
        return None
    if sc.method == "ngram":
        from vllm.v1.spec_decode.ngram import NgramProposer
        from vllm.v1.spec_decode.chain import chain_unsupported_reason
        # Chained steps verify exactly k drafts per request: pad the host's lookups too (the
        # drafts a request enters the chain with).
        pad = sc.acceptance_rate is not None or \
            chain_unsupported_reason(ctx.config) is None
        return NgramProposer(sc.num_speculative_tokens, sc.prompt_lookup_min,
                             sc.prompt_lookup_max, always_draft=pad)
    if sc.method == "draft_model":
        from vllm.v1.spec_decode.draft_model import DraftModelProposer
        return DraftModelProposer(ctx)
    if sc.method == "eagle":
        from vllm.v1.spec_decode.eagle import EagleProposer
        return EagleProposer(ctx)
    raise ValueError(f"speculative method {sc.method!r} is not supported")
