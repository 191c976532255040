"""A separate draft model (same tokenizer as the target) with its own paged KV cache.

Per request we remember how many committed tokens the drafter has in its cache; each call
catches up on the tokens committed since (one batched forward), then drafts k tokens greedily
(k - 1 more single-token forwards). Greedy drafts make q one-hot, so the rejection sampler keeps
the target distribution exactly with draft_probs = None."""
from __future__ import annotations

import torch

from vllm.model_executor.model_loader import loader
from vllm.v1.spec_decode.draft_common import DraftItem, PagedDrafter, draft_graphs_wanted
from vllm.v1.spec_decode.proposer import ProposeReq, ProposerContext


class DraftModelProposer(PagedDrafter):
    def __init__(self, ctx: ProposerContext):
        super().__init__(ctx)
        config = ctx.config
        sc = config.speculative_config
        path = loader.resolve(sc.model)
        hf = loader.load_hf_config(path, config.model_config.load_format)
        if hf.vocab_size != config.model_config.vocab_size:
            raise ValueError(f"speculative_config.model vocab ({hf.vocab_size}) differs from the "
                             f"target's ({config.model_config.vocab_size}): a draft model must "
                             "share the target's tokenizer")
        self.model = loader.load_model(hf, path, config.model_config.load_format, self.dtype,
                                       self.device, seed=config.model_config.seed + 1)
        self.hf = hf
        self.num_layers = hf.num_hidden_layers if hasattr(hf, "num_hidden_layers") else hf.n_layer
        heads = getattr(hf, "num_attention_heads", None) or hf.n_head
        self.kv_heads = (getattr(hf, "num_key_value_heads", None) or heads) // \
            config.parallel_config.tensor_parallel_size
        hidden = getattr(hf, "hidden_size", None) or hf.n_embd
        self.head_dim = getattr(hf, "head_dim", None) or hidden // heads

    def _graph_forward(self):
        if not draft_graphs_wanted(self.config, self.device):
            return None
        model = self.model
        return lambda ids, pos, T: model(ids, pos)

    chain_position_offset = 1

    def chain_forward(self, ids, positions, feats):
        return self.model(ids, positions)

    def _catch_up(self, reqs: list[ProposeReq]):
        items = []
        for r in reqs:
            n = len(r.token_ids)
            c = self._resume(r, cached_after=n)
            items.append((r.req_id, r.token_ids[c:n], c, r.block_ids))
        return items, None, [len(r.token_ids) for r in reqs]

    def _run_eager(self, items: list[DraftItem], tokens, hidden, alive=None):
        fn = None if tokens is None else (lambda inp: self.model.embed(tokens))
        return self.batch.run(self.model, self.kv_cache, items, inputs_embeds_fn=fn,
                              alive=alive)

    def _compute_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(feats)
