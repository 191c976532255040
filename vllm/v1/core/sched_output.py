"""What the scheduler hands the model runner each step: plain data, so it can also be sent to
tensor-parallel worker processes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vllm.sampling_params import SamplingParams


@dataclass
class ScheduledReq:
    req_id: str
    token_ids: list[int]        # tokens computed this step: the non-draft part (UNKNOWN_TOKEN_ID
                                # where the previous step is still sampling it), then drafts
    num_spec: int               # drafts at the end of token_ids (0 = plain step)
    start_pos: int              # position of token_ids[0] = tokens already in the KV cache
    block_ids: list[int]        # the request's whole block table
    sample: bool                # this step yields output tokens (prompt done)
    params: SamplingParams
    prompt_len: int
    output_token_ids: Optional[list[int]] = None  # only when penalties need them
    prompt_token_ids: Optional[list[int]] = None  # only when penalties need them
    num_output_tokens: int = 0  # before this step (min_tokens)
    eos_token_id: Optional[int] = None
    history: Optional[list[int]] = None  # chained n-gram steps: an entering row's tokens


@dataclass
class SchedulerOutput:
    reqs: list[ScheduledReq] = field(default_factory=list)
    num_tokens: int = 0
    finished_req_ids: list[str] = field(default_factory=list)
    num_preempted: int = 0
    # A chained speculative step (spec_decode/chain.py): every request verifies k drafts;
    # tokens the host does not know yet and the start positions come from the device.
    chain: bool = False

    @property
    def num_spec_tokens(self) -> int:
        return sum(r.num_spec for r in self.reqs)


@dataclass
class RunnerOutput:
    req_ids: list[str]
    sampled_token_ids: list[list[int]]              # per request: accepted drafts + 1 token
    logprobs: Optional[list[Optional[list[dict[int, float]]]]] = None
    num_spec: list[int] = field(default_factory=list)  # drafts verified per request
