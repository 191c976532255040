"""One generation request as the engine tracks it."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Optional

from vllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


# A frozenset lookup: checked several times per request per step.
_FINISHED = frozenset((RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                       RequestStatus.FINISHED_ABORTED))


# eq=False: requests compare by identity. Field-wise __eq__ made every deque.remove() compare
# token lists, and removing many waiting requests quadratic.
@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: Optional[int]
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    spec_token_ids: list[int] = field(default_factory=list)   # drafts for the next step
    # Sampling steps scheduled whose token the host has not applied yet (asynchronous
    # scheduling keeps up to two: one running on the GPU, one being scheduled).
    num_inflight: int = 0
    stop_reason: Optional[object] = None
    num_preemptions: int = 0
    num_cached_tokens: int = 0
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None
    # logprobs of emitted tokens, when asked: list of {token_id: logprob} dicts
    logprobs: Optional[list[dict[int, float]]] = None
    cumulative_logprob: float = 0.0

    def __post_init__(self):
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)
        if self.sampling_params.logprobs is not None and self.logprobs is None:
            self.logprobs = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_token(self, tok: int) -> None:
        self.output_token_ids.append(tok)
        self.all_token_ids.append(tok)

    @property
    def finished(self) -> bool:
        return self.status.finished
