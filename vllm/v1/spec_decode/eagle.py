"""EAGLE-1 proposer: the draft head reads the target's hidden states.

Entry i of a request pairs the target's hidden state at position i with the token at i + 1 and
predicts the feature at i + 1, whose LM-head argmax is the token at i + 2. Hidden states of the
positions the target computed each step are stashed per request (the verify step's rows are
trimmed to committed positions later), so chunked prefills and rewinds need no special path."""
from __future__ import annotations

import os

import torch

from vllm.model_executor.layers.linear import default_init_
from vllm.model_executor.model_loader import loader
from vllm.model_executor.models.eagle import EagleHead
from vllm.v1.spec_decode.draft_common import DraftItem, PagedDrafter, draft_graphs_wanted
from vllm.v1.spec_decode import shipped
from vllm.v1.spec_decode.proposer import ProposeReq, ProposerContext
from vllm.v1.spec_decode.shipped import verify_checksums


class _HeadOnTarget(torch.nn.Module):
    """The EAGLE head as a model the draft batch can run: the target's embedding of the tokens
    (or of `tokens`, the previous drafts, when given) plus the feature rows it continues."""

    def __init__(self, head, target, hidden_rows: torch.Tensor, tokens=None):
        super().__init__()
        self.head, self.target = head, target
        self.hidden_rows, self.tokens = hidden_rows, tokens

    def forward(self, input_ids, positions, inputs_embeds=None):
        ids = input_ids if self.tokens is None else self.tokens
        return self.head(self.target.embed(ids), self.hidden_rows, positions)


class EagleProposer(PagedDrafter):
    def __init__(self, ctx: ProposerContext):
        super().__init__(ctx)
        config = ctx.config
        path = loader.resolve(config.speculative_config.model)
        # a shipped head must carry its checksums; any head folder with SHA256SUMS is checked
        shipped_root = os.path.realpath(os.path.join(shipped.DATA_ROOT, "eagle"))
        verify_checksums(path, required=os.path.realpath(path).startswith(shipped_root + os.sep))
        from transformers import AutoConfig
        hf = AutoConfig.from_pretrained(path)
        target_hidden = config.model_config.hidden_size
        if hf.hidden_size != target_hidden:
            raise ValueError(f"EAGLE head hidden size {hf.hidden_size} != target's {target_hidden}")
        prev = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.head = EagleHead(hf)
        finally:
            torch.set_default_dtype(prev)
        if config.model_config.load_format == "dummy":
            default_init_(self.head, config.model_config.seed + 2)
        else:
            self.head.load_weights(loader._safetensors_weights(path))
        self.head.eval()
        attn = self.head.self_attn
        self.num_layers, self.kv_heads, self.head_dim = 1, attn.num_kv_heads, attn.head_dim
        self.stash: dict[str, tuple[int, torch.Tensor]] = {}   # req -> (first pos, [m, H])
        self.hidden_input_size = target_hidden

    def drop(self, req_id: str) -> None:
        super().drop(req_id)
        self.stash.pop(req_id, None)

    def observe_target(self, so, hidden: torch.Tensor, rows: list[tuple[int, int]]) -> None:
        """After each target forward: keep the hidden states of every scheduled token."""
        for r, (s, e) in zip(so.reqs, rows):
            new = hidden[s:e].clone()       # the graph's output buffer is reused next step
            old = self.stash.get(r.req_id)
            if old is not None and old[0] <= r.start_pos <= old[0] + old[1].shape[0]:
                keep = old[1][:r.start_pos - old[0]]
                self.stash[r.req_id] = (old[0], torch.cat([keep, new], 0))
            else:
                self.stash[r.req_id] = (r.start_pos, new)

    def _catch_up(self, reqs: list[ProposeReq]):
        items, hid = [], []
        for r in reqs:
            n = len(r.token_ids)
            c = self._resume(r, cached_after=n - 1)
            base, rows = self.stash[r.req_id]
            c = max(c, base)
            hid.append(rows[c - base:n - 1 - base])         # positions c .. n - 2
            items.append((r.req_id, r.token_ids[c + 1:n], c, r.block_ids))
            self.stash[r.req_id] = (n - 1, rows[n - 1 - base:])
        return items, torch.cat(hid, 0), [len(r.token_ids) - 1 for r in reqs]

    def _graph_forward(self):
        if not draft_graphs_wanted(self.config, self.device):
            return None
        head, target, hid = self.head, self.ctx.target, self.batch.hidden
        return lambda ids, pos, T: head(target.embed(ids), hid[:T], pos)

    def _run_eager(self, items: list[DraftItem], tokens, hidden: torch.Tensor, alive=None):
        model = _HeadOnTarget(self.head, self.ctx.target, hidden, tokens)
        return self.batch.run(model, self.kv_cache, items, alive=alive)

    def _compute_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.ctx.target.compute_logits(feats)
