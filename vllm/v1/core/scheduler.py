"""Continuous batching with chunked prefill, lookahead slots for drafts, preemption by
recompute, and the rewind of rejected drafts after verification."""
from __future__ import annotations

import time
from collections import deque
from typing import Iterable

from vllm.config import VllmConfig
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.sched_output import RunnerOutput, ScheduledReq, SchedulerOutput
from vllm.v1.request import Request, RequestStatus


class Scheduler:
    def __init__(self, config: VllmConfig, num_blocks: int):
        sc = config.scheduler_config
        self.max_num_seqs = sc.max_num_seqs
        self.max_num_batched_tokens = sc.max_num_batched_tokens
        self.max_model_len = sc.max_model_len
        self.chunked_prefill = sc.enable_chunked_prefill
        self.spec = config.speculative_config
        # Draft KV written by a draft model / EAGLE head needs slots beyond the verified tokens.
        self.num_lookahead = (self.spec.num_speculative_tokens
                              if self.spec and self.spec.method != "ngram" else 0)
        self.kv = KVCacheManager(num_blocks, config.cache_config.block_size, sc.max_model_len,
                                 config.cache_config.enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self.num_preemptions = 0

    # ------------------------------------------------------------------ requests
    def add_request(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def finish_requests(self, req_ids: Iterable[str], status: RequestStatus) -> None:
        for rid in req_ids:
            req = self.requests.get(rid)
            if req is None or req.finished:
                continue
            if req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            else:
                try:
                    self.waiting.remove(req)
                except ValueError:
                    pass
            req.status = status
            self._free(req)

    def _free(self, req: Request) -> None:
        self.kv.free(req)
        self._finished_ids.append(req.request_id)
        self.requests.pop(req.request_id, None)

    # ------------------------------------------------------------------ scheduling
    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.spec_token_ids = []
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _entry(self, req: Request, num_new: int, num_spec: int) -> ScheduledReq:
        start = req.num_computed_tokens
        n_plain = num_new - num_spec
        toks = req.all_token_ids[start:start + n_plain] + req.spec_token_ids[:num_spec]
        p = req.sampling_params
        pen = (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
               or p.repetition_penalty != 1.0)
        return ScheduledReq(
            req_id=req.request_id, token_ids=toks, num_spec=num_spec, start_pos=start,
            block_ids=list(req.block_ids), sample=start + n_plain >= req.num_tokens,
            params=p, prompt_len=req.num_prompt_tokens,
            output_token_ids=list(req.output_token_ids) if pen else None,
            prompt_token_ids=list(req.prompt_token_ids) if pen else None,
            num_output_tokens=req.num_output_tokens, eos_token_id=req.eos_token_id)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_req_ids=self._finished_ids)
        self._finished_ids = []
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int, int]] = []

        # 1. Running requests (decodes, verify steps, unfinished chunked prefills).
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n_plain = req.num_tokens - req.num_computed_tokens
            n_plain = min(n_plain, budget)
            n_spec = len(req.spec_token_ids) if n_plain == req.num_tokens - \
                req.num_computed_tokens else 0
            n_spec = min(n_spec, budget - n_plain)
            num_new = n_plain + n_spec
            if num_new <= 0:
                i += 1
                continue
            lookahead = self.num_lookahead
            while not self.kv.allocate_slots(req, num_new, lookahead):
                victim = self.running[-1]
                self._preempt(victim)
                out.num_preempted += 1
                if victim is req:
                    break
            if req.status != RequestStatus.RUNNING:
                break   # preempted itself: nothing after it can fit either
            req.spec_token_ids = req.spec_token_ids[:n_spec]
            scheduled.append((req, num_new, n_spec))
            budget -= num_new
            i += 1

        # 2. Waiting requests (new, or resumed after preemption), if nothing was preempted.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs \
                and out.num_preempted == 0:
            req = self.waiting[0]
            if req.num_computed_tokens == 0 and not req.block_ids:
                cached = self.kv.get_computed_blocks(req)
                req.num_computed_tokens = cached
                req.num_cached_tokens = cached
            num_new = req.num_tokens - req.num_computed_tokens
            if not self.chunked_prefill and num_new > budget:
                break
            num_new = min(num_new, budget)
            if not self.kv.allocate_slots(req, num_new, self.num_lookahead):
                # Give back any prefix-cache hits: a waiting request must hold no blocks, or
                # requests pushed in front of it (preemption) could starve the pool. The blocks
                # stay cached and are found again on the next try.
                self.kv.free(req)
                req.num_computed_tokens = 0
                break
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            req.spec_token_ids = []
            self.running.append(req)
            scheduled.append((req, num_new, 0))
            budget -= num_new

        for req, num_new, n_spec in scheduled:
            out.reqs.append(self._entry(req, num_new, n_spec))
            req.num_computed_tokens += num_new
            out.num_tokens += num_new
        return out

    # ------------------------------------------------------------------ results
    def update_from_output(self, so: SchedulerOutput, ro: RunnerOutput) -> list[tuple[Request, int]]:
        """Apply sampled tokens; returns (request, number of new tokens) for each that got some."""
        now = time.monotonic()
        touched: list[tuple[Request, int]] = []
        by_id = {rid: i for i, rid in enumerate(ro.req_ids)}
        for sr in so.reqs:
            req = self.requests.get(sr.req_id)
            if req is None or req.status != RequestStatus.RUNNING:
                continue   # aborted while the step ran
            idx = by_id.get(sr.req_id)
            toks = ro.sampled_token_ids[idx] if idx is not None else []
            if sr.num_spec:
                # Rewind: only the accepted drafts' K/V count as computed.
                rejected = sr.num_spec - (len(toks) - 1)
                req.num_computed_tokens -= rejected
            req.spec_token_ids = []
            if not toks:
                continue
            lps = ro.logprobs[idx] if ro.logprobs is not None else None
            n_added = 0
            for j, tok in enumerate(toks):
                req.append_token(tok)
                n_added += 1
                if lps is not None and lps[j] is not None:
                    req.logprobs.append(lps[j])
                    req.cumulative_logprob += lps[j].get(tok, 0.0)
                if self._check_stop(req, tok):
                    break
            if req.first_token_time is None:
                req.first_token_time = now
            req.last_token_time = now
            self.kv.cache_committed_blocks(req)
            touched.append((req, n_added))
            if req.finished:
                self.running.remove(req)
                self._free(req)
        return touched

    def _check_stop(self, req: Request, tok: int) -> bool:
        p = req.sampling_params
        if req.num_output_tokens >= p.min_tokens:
            if (tok == req.eos_token_id and not p.ignore_eos) or tok in (p.stop_token_ids or ()):
                req.status = RequestStatus.FINISHED_STOPPED
                req.stop_reason = tok if tok != req.eos_token_id else None
                return True
        if (p.max_tokens is not None and req.num_output_tokens >= p.max_tokens) \
                or req.num_tokens >= self.max_model_len:
            req.status = RequestStatus.FINISHED_LENGTH
            return True
        return False

    def set_drafts(self, drafts: dict[str, list[int]]) -> None:
        """Drafts for the next step, trimmed so a window never runs past max_tokens or
        max_model_len (one token is always emitted besides accepted drafts)."""
        for rid, d in drafts.items():
            req = self.requests.get(rid)
            if req is None or req.status != RequestStatus.RUNNING:
                continue
            p = req.sampling_params
            room = self.max_model_len - req.num_tokens - 1
            if p.max_tokens is not None:
                room = min(room, p.max_tokens - req.num_output_tokens - 1)
            req.spec_token_ids = list(d[:max(room, 0)])

    def kv_usage(self) -> float:
        return self.kv.usage()
