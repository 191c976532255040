"""A separate draft model (same tokenizer as the target) with its own paged KV cache.

Per request we remember how many committed tokens the drafter has in its cache; each call
catches up on the tokens committed since (one batched forward), then drafts k tokens greedily
(k - 1 more single-token forwards). Greedy drafts make q one-hot, so the rejection sampler keeps
the target distribution exactly with draft_probs = None."""
from __future__ import annotations

import torch

from vllm import envs
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader import loader
from vllm.v1.spec_decode.draft_common import (DraftBatch, draft_graphs_wanted,
                                              greedy_with_confidence, trim_at_low_confidence)
from vllm.v1.worker.kv_cache_alloc import allocate_kv_cache, kv_bytes_per_block

logger = init_logger(__name__)


class DraftModelProposer:
    needs_hidden = False

    def __init__(self, config: VllmConfig, runner):
        sc = config.speculative_config
        self.k = sc.num_speculative_tokens
        self.device = runner.device
        self.dtype = runner.dtype
        self.block_size = runner.block_size
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
        self.config = config
        self.computed: dict[str, int] = {}
        self.preemptions: dict[str, int] = {}
        self.threshold = envs.get("VLLM_DRAFT_CONFIDENCE_THRESHOLD")
        self.kv_cache = None

    def kv_bytes_per_block(self) -> int:
        return kv_bytes_per_block(self.num_layers, self.block_size, self.kv_heads, self.head_dim,
                                  self.dtype)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.kv_cache = allocate_kv_cache(self.num_layers, num_blocks, self.block_size,
                                          self.kv_heads, self.head_dim, self.dtype, self.device)
        sc = self.config.scheduler_config
        max_blocks = (sc.max_model_len + self.k + self.block_size - 1) // self.block_size + 1
        # catch-up batches can hold whole prompts (after a prefill or a preemption)
        max_tokens = sc.max_num_seqs * (sc.max_model_len + 1)
        self.batch = DraftBatch(min(max_tokens, 1 << 20), sc.max_num_seqs, max_blocks,
                                self.block_size, self.device)
        if draft_graphs_wanted(self.config, self.device):
            model = self.model
            self.batch.capture(lambda ids, pos, T: model(ids, pos), self.kv_cache,
                               sc.max_num_seqs * (self.k + 1))

    def _forward(self, items, input_ids=None):
        """(hidden [T, H], last rows [R]): from a CUDA graph when one fits, else eagerly.
        input_ids [T] (device) replaces the items' token ids."""
        out = self.batch.run_graph(self.kv_cache, items, input_ids=input_ids)
        if out is not None:
            return out[0], out[1]
        fn = None if input_ids is None else (lambda inp, t=input_ids: self.model.embed(t))
        hidden, last, _ = self.batch.run(self.model, self.kv_cache, items, inputs_embeds_fn=fn)
        return hidden, last

    def drop(self, req_id: str) -> None:
        self.computed.pop(req_id, None)
        self.preemptions.pop(req_id, None)

    def propose(self, reqs) -> dict[str, list[int]]:
        items = []
        for r in reqs:
            n = len(r.token_ids)
            c = self.computed.get(r.req_id, 0)
            if self.preemptions.get(r.req_id, 0) != r.num_preemptions:
                c = 0       # blocks were freed and reallocated: the drafter's K/V are gone
            self.preemptions[r.req_id] = r.num_preemptions
            items.append((r.req_id, r.token_ids[c:n], c, r.block_ids))
            self.computed[r.req_id] = n
        hidden, last = self._forward(items)
        tok, ok = greedy_with_confidence(self.model.compute_logits(hidden[last]), self.threshold)
        toks, oks = [tok], [ok]
        pos = [len(r.token_ids) for r in reqs]
        for step in range(1, self.k):
            # the token ids are filled on the device from the previous step's argmax; from the
            # second drafting step on, positions and slots advance on the device too
            feats = self.batch.run_graph_next(toks[-1]) if step > 1 else None
            if feats is None:
                items = [(r.req_id, [0], p + step - 1, r.block_ids) for r, p in zip(reqs, pos)]
                hidden, last = self._forward(items, input_ids=toks[-1])
                feats = hidden[last]
            tok, ok = greedy_with_confidence(self.model.compute_logits(feats), self.threshold)
            toks.append(tok)
            oks.append(ok)
        drafts = torch.stack(toks, 1).tolist()
        ok_host = torch.stack(oks, 1).tolist() if oks[0] is not None else None
        drafts = trim_at_low_confidence(drafts, ok_host)
        return {r.req_id: d for r, d in zip(reqs, drafts) if d}
