"""EAGLE-1 proposer: the draft head reads the target's hidden states.

Entry i of a request pairs the target's hidden state at position i with the token at i + 1 and
predicts the feature at i + 1, whose LM-head argmax is the token at i + 2. Hidden states of the
positions the target computed each step are stashed per request (the verify step's rows are
trimmed to committed positions later), so chunked prefills and rewinds need no special path."""
from __future__ import annotations

import torch

from vllm import envs
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import default_init_
from vllm.model_executor.model_loader import loader
from vllm.model_executor.models.eagle import EagleHead
from vllm.v1.spec_decode.draft_common import (DraftBatch, draft_graphs_wanted,
                                              greedy_with_confidence, trim_at_low_confidence)
from vllm.v1.worker.kv_cache_alloc import allocate_kv_cache, kv_bytes_per_block


class EagleProposer:
    needs_hidden = True

    def __init__(self, config: VllmConfig, runner):
        sc = config.speculative_config
        self.k = sc.num_speculative_tokens
        self.runner = runner
        self.device, self.dtype = runner.device, runner.dtype
        self.block_size = runner.block_size
        self.config = config
        path = loader.resolve(sc.model)
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
        self.kv_heads, self.head_dim = attn.num_kv_heads, attn.head_dim
        self.stash: dict[str, tuple[int, torch.Tensor]] = {}   # req -> (first pos, [m, H])
        self.computed: dict[str, int] = {}
        self.preemptions: dict[str, int] = {}
        self.threshold = envs.get("VLLM_DRAFT_CONFIDENCE_THRESHOLD")

    def kv_bytes_per_block(self) -> int:
        return kv_bytes_per_block(1, self.block_size, self.kv_heads, self.head_dim, self.dtype)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.kv_cache = allocate_kv_cache(1, num_blocks, self.block_size, self.kv_heads,
                                          self.head_dim, self.dtype, self.device)
        sc = self.config.scheduler_config
        max_blocks = (sc.max_model_len + self.k + self.block_size - 1) // self.block_size + 1
        hidden_size = self.config.model_config.hidden_size
        self.batch = DraftBatch(min(sc.max_num_seqs * (sc.max_model_len + 1), 1 << 20),
                                sc.max_num_seqs, max_blocks, self.block_size, self.device,
                                hidden_size=hidden_size, dtype=self.dtype)
        if draft_graphs_wanted(self.config, self.device):
            head, target, hid = self.head, self.runner.model, self.batch.hidden
            self.batch.capture(lambda ids, pos, T: head(target.embed(ids), hid[:T], pos),
                               self.kv_cache, sc.max_num_seqs * (self.k + 1))

    def drop(self, req_id: str) -> None:
        for d in (self.stash, self.computed, self.preemptions):
            d.pop(req_id, None)

    def observe(self, so, hidden: torch.Tensor, rows: list[tuple[int, int]]) -> None:
        """After each target forward: keep the hidden states of every scheduled token."""
        for r, (s, e) in zip(so.reqs, rows):
            new = hidden[s:e].clone()       # the graph's output buffer is reused next step
            old = self.stash.get(r.req_id)
            if old is not None and old[0] <= r.start_pos <= old[0] + old[1].shape[0]:
                keep = old[1][:r.start_pos - old[0]]
                self.stash[r.req_id] = (old[0], torch.cat([keep, new], 0))
            else:
                self.stash[r.req_id] = (r.start_pos, new)

    def propose(self, reqs) -> dict[str, list[int]]:
        items, hid = [], []
        for r in reqs:
            n = len(r.token_ids)
            c = self.computed.get(r.req_id, 0)
            if self.preemptions.get(r.req_id, 0) != r.num_preemptions:
                c = 0
            self.preemptions[r.req_id] = r.num_preemptions
            base, rows = self.stash[r.req_id]
            c = max(c, base)
            hid.append(rows[c - base:n - 1 - base])         # positions c .. n - 2
            items.append((r.req_id, r.token_ids[c + 1:n], c, r.block_ids))
            self.computed[r.req_id] = n - 1
            self.stash[r.req_id] = (n - 1, rows[n - 1 - base:])
        feats, toks, oks = self._run(items, torch.cat(hid, 0))
        pos = [len(r.token_ids) - 1 for r in reqs]
        for step in range(1, self.k):
            nxt = self.batch.run_graph_next(toks[-1], feats) if step > 1 else None
            if nxt is not None:     # positions and slots advanced on the device
                feats = nxt.clone()     # the graph's output buffer is reused next replay
                tok, ok = greedy_with_confidence(self.runner.model.compute_logits(feats),
                                                 self.threshold)
                toks.append(tok)
                oks.append(ok)
                continue
            items = [(r.req_id, [0], p + step - 1, r.block_ids) for r, p in zip(reqs, pos)]
            feats, tok, ok = self._run(items, feats, tokens=toks[-1])
            toks.append(tok[0])
            oks.append(ok[0])
        drafts = torch.stack(toks, 1).tolist()
        ok_host = torch.stack(oks, 1).tolist() if oks[0] is not None else None
        drafts = trim_at_low_confidence(drafts, ok_host)
        return {r.req_id: d for r, d in zip(reqs, drafts) if d}

    def _run(self, items, hidden_rows, tokens=None):
        target = self.runner.model
        head = self.head
        graphed = self.batch.run_graph(self.kv_cache, items, input_ids=tokens,
                                       hidden=hidden_rows)
        if graphed is not None:
            out, last, _ = graphed
            feats = out[last]
            tok, ok = greedy_with_confidence(target.compute_logits(feats), self.threshold)
            return feats, [tok], [ok]

        class _Wrapped(torch.nn.Module):
            def forward(self, input_ids, positions, inputs_embeds=None):
                ids = input_ids if tokens is None else tokens
                return head(target.embed(ids), hidden_rows, positions)

        out, last, _ = self.batch.run(_Wrapped(), self.kv_cache, items)
        feats = out[last]
        tok, ok = greedy_with_confidence(target.compute_logits(feats), self.threshold)
        return feats, [tok], [ok]
