"""Proposer selection and the per-request data proposers get after each step."""
from __future__ import annotations

from dataclasses import dataclass

from vllm.config import VllmConfig


@dataclass
class ProposeReq:
    req_id: str
    token_ids: list[int]        # the whole sequence so far (prompt + output)
    num_computed: int           # target tokens whose K/V are in the cache (verified)
    block_ids: list[int]        # the request's block table (draft KV shares the layout)
    num_preemptions: int = 0    # a change means the request's blocks were reallocated


def build_proposer(config: VllmConfig, runner):
    sc = config.speculative_config
    if sc is None:
        return None
    if sc.method == "ngram":
        from vllm.v1.spec_decode.ngram import NgramProposer
        return NgramProposer(sc.num_speculative_tokens, sc.prompt_lookup_min,
                             sc.prompt_lookup_max, always_draft=sc.acceptance_rate is not None)
    if sc.method == "draft_model":
        from vllm.v1.spec_decode.draft_model import DraftModelProposer
        return DraftModelProposer(config, runner)
    if sc.method == "eagle":
        from vllm.v1.spec_decode.eagle import EagleProposer
        return EagleProposer(config, runner)
    raise ValueError(f"speculative method {sc.method!r} is not supported")
