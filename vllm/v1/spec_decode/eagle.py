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
        # req -> segments [first position, step tensor, first row, end row]: the target's
        # hidden states of the positions the drafter has not consumed yet, as row ranges of
        # one clone per target step (no per-request device work while nothing is drafted).
        self.stash: dict[str, list[list]] = {}
        self.hidden_input_size = target_hidden

    def drop(self, req_id: str) -> None:
        super().drop(req_id)
        self.stash.pop(req_id, None)

    def observe_target(self, so, hidden: torch.Tensor, rows: list[tuple[int, int]]) -> None:
        """After each target forward: keep the hidden states of every scheduled token (one
        clone per step: the graph's output buffer is reused next step)."""
        step = hidden[:rows[-1][1]].clone() if rows else None
        for r, (s, e) in zip(so.reqs, rows):
            segs = self.stash.get(r.req_id)
            end = segs[-1][0] + segs[-1][3] - segs[-1][2] if segs else None
            if segs and segs[0][0] <= r.start_pos <= end:
                # positions from start_pos on are recomputed (rejected drafts): cut them
                while segs and segs[-1][0] >= r.start_pos:
                    segs.pop()
                if segs:
                    last = segs[-1]
                    last[3] = min(last[3], last[2] + r.start_pos - last[0])
            else:
                segs = self.stash[r.req_id] = []
            if e > s:
                segs.append([r.start_pos, step, s, e])

    def _take(self, req_id: str, lo: int, hi: int) -> list[torch.Tensor]:
        """Rows of positions lo .. hi - 1 from the request's stash; the stash keeps hi on."""
        out, keep = [], []
        for seg in self.stash.get(req_id, []):
            pos, t, s, e = seg
            a, b = max(lo, pos), min(hi, pos + e - s)
            if a < b:
                out.append(t[s + a - pos:s + b - pos])
            if pos + e - s > hi:
                start = max(pos, hi)
                keep.append([start, t, s + start - pos, e])
        self.stash[req_id] = keep
        return out

    def _base(self, req_id: str) -> int:
        segs = self.stash.get(req_id)
        return segs[0][0] if segs else 0

    def _catch_up(self, reqs: list[ProposeReq]):
        items, hid = [], []
        for r in reqs:
            n = len(r.token_ids)
            c = self._resume(r, cached_after=n - 1)
            c = max(c, self._base(r.req_id))
            hid.extend(self._take(r.req_id, c, n - 1))      # positions c .. n - 2
            items.append((r.req_id, r.token_ids[c + 1:n], c, r.block_ids))
        feats = torch.cat(hid, 0) if hid else torch.empty(
            0, self.hidden_input_size, dtype=self.dtype, device=self.device)
        return items, feats, [len(r.token_ids) - 1 for r in reqs]

    def _graph_forward(self):
        if not draft_graphs_wanted(self.config, self.device):
            return None
        head, target, hid = self.head, self.ctx.target, self.batch.hidden
        return lambda ids, pos, T: head(target.embed(ids), hid[:T], pos)

    def chain_forward(self, ids, positions, feats):
        return self.head(self.ctx.target.embed(ids), feats, positions)

    def chain_exit(self, req_id: str, num_tokens: int) -> None:
        super().chain_exit(req_id, num_tokens)
        self.stash.pop(req_id, None)    # the chain consumed every stashed position

    def _run_eager(self, items: list[DraftItem], tokens, hidden: torch.Tensor, alive=None):
        model = _HeadOnTarget(self.head, self.ctx.target, hidden, tokens)
        return self.batch.run(model, self.kv_cache, items, alive=alive)

    def _compute_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.ctx.target.compute_logits(feats)
