"""Speculative-decoding counters of one engine (upstream metric names in vllm/v1/metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecDecodingStats:
    num_spec_tokens: int = 0
    num_drafts: int = 0             # verify windows (requests x steps with >= 1 draft)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    # Drafts a model drafter did not make because a request's draft fell below the confidence
    # threshold (per request and call: its cap minus the drafts it got). Mirrored from the
    # proposer's running count (Proposer.stopped_tokens) after every drafting call.
    num_draft_tokens_stopped: int = 0

    def observe(self, num_draft: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft
        self.num_accepted_tokens += num_accepted
        if len(self.accepted_per_pos) < max(self.num_spec_tokens, num_draft):
            self.accepted_per_pos.extend(
                [0] * (max(self.num_spec_tokens, num_draft) - len(self.accepted_per_pos)))
        for i in range(num_accepted):
            self.accepted_per_pos[i] += 1

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens emitted per verify window (accepted drafts + the one bonus/recovered)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    def per_position_rates(self) -> list[float]:
        return [a / self.num_drafts if self.num_drafts else 0.0 for a in self.accepted_per_pos]
