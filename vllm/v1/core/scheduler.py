"""Continuous batching with chunked prefill, lookahead slots for drafts, preemption by
recompute, and the rewind of rejected drafts after verification."""
from __future__ import annotations

import time
from collections import deque
from typing import Iterable, Optional

from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.constants import UNKNOWN_TOKEN_ID
from vllm.v1.core.sched_output import RunnerOutput, ScheduledReq, SchedulerOutput
from vllm.v1.request import Request, RequestStatus

logger = init_logger(__name__)


class RequestsUnschedulable(RuntimeError):
    """schedule() found requests that can never run; they are already finished (aborted)."""

    def __init__(self, request_ids: list[str], message: str):
        super().__init__(message)
        self.request_ids = list(request_ids)


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
        # One pass over each queue whatever the number of ids (aborting thousands of waiting
        # requests one remove() at a time was quadratic).
        done: set[int] = set()
        for rid in req_ids:
            req = self.requests.get(rid)
            if req is None or req.finished or id(req) in done:
                continue
            done.add(id(req))
            req.status = status
            self._free(req)
        if done:
            self.running[:] = [r for r in self.running if id(r) not in done]
            self.waiting = deque(r for r in self.waiting if id(r) not in done)

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

    def requeue_running(self) -> None:
        """Put every running request back at the head of the queue, blocks freed, to be
        recomputed: after a failed step, whose scheduled tokens were counted as computed but
        never produced."""
        for req in reversed(self.running):
            self.kv.free(req)
            req.status = RequestStatus.PREEMPTED
            req.num_computed_tokens = 0
            req.num_inflight = 0
            req.spec_token_ids = []
            req.num_preemptions += 1     # per-request runner state (drafters) starts over
            self.waiting.appendleft(req)
        self.running.clear()

    def _entry(self, req: Request, num_new: int, num_spec: int) -> ScheduledReq:
        start = req.num_computed_tokens
        n_plain = num_new - num_spec
        known = req.all_token_ids[start:start + n_plain]
        # Tokens still being sampled on the device (asynchronous scheduling): the runner fills
        # them from the previous step's output, on the device.
        toks = known + [UNKNOWN_TOKEN_ID] * (n_plain - len(known)) + req.spec_token_ids[:num_spec]
        p = req.sampling_params
        pen = p.has_penalties
        return ScheduledReq(
            req_id=req.request_id, token_ids=toks, num_spec=num_spec, start_pos=start,
            # Not copied: the runner reads it while preparing this step's inputs, before the
            # scheduler changes it again (TP workers get a pickled copy anyway).
            block_ids=req.block_ids,
            sample=start + n_plain >= req.num_tokens + req.num_inflight,
            params=p, prompt_len=req.num_prompt_tokens,
            output_token_ids=list(req.output_token_ids) if pen else None,
            prompt_token_ids=list(req.prompt_token_ids) if pen else None,
            num_output_tokens=req.num_output_tokens + req.num_inflight,
            eos_token_id=req.eos_token_id)

    def _will_finish(self, req: Request) -> bool:
        """True when a token already in flight ends the request by length: scheduling it again
        would only compute a token that is thrown away."""
        n = req.num_inflight
        if not n:
            return False
        p = req.sampling_params
        return ((p.max_tokens is not None and req.num_output_tokens + n >= p.max_tokens)
                or req.num_tokens + n >= self.max_model_len)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_req_ids=self._finished_ids)
        self._finished_ids = []
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int, int]] = []

        # 1. Running requests (decodes, verify steps, unfinished chunked prefills).
        budget = self._schedule_running(self.running, budget, scheduled, out, preempt=True)

        # 2. Waiting requests (new, or resumed after preemption), if nothing was preempted.
        if out.num_preempted == 0:
            budget = self._admit_waiting(budget, scheduled, out)
        self._emit(out, scheduled)
        return out

    def _schedule_running(self, reqs: list[Request], budget: int, scheduled: list,
                          out: SchedulerOutput, preempt: bool) -> int:
        """Schedules running requests (their pending tokens, then their drafts); where the KV
        cache is full, preempts from the back of the running queue (preempt=True) or stops.
        Returns the budget left."""
        i = 0
        while i < len(reqs) and budget > 0:
            req = reqs[i]
            if req.num_inflight and self._will_finish(req):
                i += 1
                continue
            pending = req.num_tokens + req.num_inflight - req.num_computed_tokens
            n_plain = min(pending, budget)
            n_spec = len(req.spec_token_ids) if n_plain == pending else 0
            n_spec = min(n_spec, budget - n_plain)
            num_new = n_plain + n_spec
            if num_new <= 0:
                i += 1
                continue
            lookahead = self.num_lookahead
            while not self.kv.allocate_slots(req, num_new, lookahead):
                if not preempt:
                    return budget
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
        return budget

    def _admit_waiting(self, budget: int, scheduled: list, out: SchedulerOutput) -> int:
        """Admits waiting requests (new, or resumed after preemption) while the token budget,
        max_num_seqs and the KV cache allow; returns the budget left."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if req.num_inflight:
                break   # preempted while its last step ran: resume once its token is known
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
                if not self.running:
                    self._fail_unadmittable(req, num_new, out)
                break
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            req.spec_token_ids = []
            self.running.append(req)
            scheduled.append((req, num_new, 0))
            budget -= num_new
        return budget

    def _emit(self, out: SchedulerOutput, scheduled: list) -> None:
        for req, num_new, n_spec in scheduled:
            entry = self._entry(req, num_new, n_spec)
            out.reqs.append(entry)
            req.num_computed_tokens += num_new
            req.num_inflight += entry.sample
            out.num_tokens += num_new

    def schedule_chain(self, k: int, eligible, max_rows: int,
                       with_history: bool = False) -> Optional[SchedulerOutput]:
        """A chained speculative step (spec_decode/chain.py) of every running request, or None
        when one cannot run now (the caller then drains the chain and schedules normally):
        a request is not eligible(req), one is too close to max_model_len, the KV cache
        cannot hold every request's next window, no request has a window to verify, or
        the windows exceed the token budget or max_rows (the runner's chained batch limit).
        with_history: entering requests carry their whole token history (n-gram drafting on
        the device).
        Requests without a full window of k drafts (prefilling, new, near their end) are left
        to schedule_side. Positions are counted optimistically (all k drafts accepted); the
        rejected ones are rewound when the step's output is applied, as after any verify
        step."""
        if not self.running:
            return None
        k1 = k + 1
        picked = []
        for req in self.running:
            n = req.num_inflight
            if n > 1 or not eligible(req):
                return None
            if n == 0 and (len(req.spec_token_ids) != k
                           or req.num_computed_tokens != req.num_tokens - 1):
                continue        # not (yet) a full window of drafts: schedule_side's
            # positions this step and the drafter's may reach (optimistic count, + lookahead)
            if req.num_computed_tokens + 2 * k1 + self.num_lookahead > self.max_model_len:
                return None
            if n and self._will_finish(req):
                continue        # its token in flight ends it: nothing more to compute
            picked.append(req)
        if not picked or len(picked) * k1 > min(self.max_num_batched_tokens, max_rows * k1):
            return None     # nothing to verify, or more windows than one step may hold
        for req in picked:
            if not self.kv.allocate_slots(req, k1, self.num_lookahead):
                return None     # (blocks already added stay with their running requests)
        out = SchedulerOutput(finished_req_ids=self._finished_ids, chain=True)
        self._finished_ids = []
        for req in picked:
            hist = None
            if req.num_inflight:
                toks = [UNKNOWN_TOKEN_ID] * k1      # from the device: the previous step's
            else:
                toks = [req.all_token_ids[-1]] + list(req.spec_token_ids)
                hist = list(req.all_token_ids) if with_history else None
            p = req.sampling_params
            out.reqs.append(ScheduledReq(
                req_id=req.request_id, token_ids=toks, num_spec=k,
                start_pos=req.num_computed_tokens, block_ids=req.block_ids, sample=True,
                params=p, prompt_len=req.num_prompt_tokens,
                num_output_tokens=req.num_output_tokens + req.num_inflight,
                eos_token_id=req.eos_token_id, history=hist))
            req.spec_token_ids = []
            req.num_computed_tokens += k1
            req.num_inflight += 1
            out.num_tokens += k1
        return out

    def schedule_side(self, chained: SchedulerOutput) -> SchedulerOutput:
        """Beside a chained step: the running requests outside it (prefill chunks, windows
        shorter than k) and new admissions, within the token budget the chained step left,
        never preempting (a full cache only defers them)."""
        out = SchedulerOutput()
        in_chain = {r.req_id for r in chained.reqs}
        budget = self.max_num_batched_tokens - chained.num_tokens
        scheduled: list[tuple[Request, int, int]] = []
        side = [r for r in self.running if r.request_id not in in_chain and not r.num_inflight]
        budget = self._schedule_running(side, budget, scheduled, out, preempt=False)
        if budget > 0:
            self._admit_waiting(budget, scheduled, out)
        self._emit(out, scheduled)
        return out

    def _fail_unadmittable(self, req: Request, num_new: int, out: SchedulerOutput) -> None:
        """Nothing runs and the head of the queue still does not fit: no block will ever be
        freed for it (the pool is too small, or blocks leaked). Fail it instead of spinning."""
        need = self.kv._cdiv(min(num_new + self.num_lookahead, self.max_model_len))
        msg = (f"request {req.request_id} can never be scheduled: it needs {need} KV cache "
               f"block(s) for its next {num_new} token(s), nothing else is running, and only "
               f"{self.kv.pool.num_free} of {self.kv.pool.num_blocks} block(s) are free")
        logger.error(msg)
        # Give the step's finished ids back (the runner still has to drop their state).
        self._finished_ids = out.finished_req_ids + self._finished_ids
        self.finish_requests([req.request_id], RequestStatus.FINISHED_ABORTED)
        raise RequestsUnschedulable([req.request_id], msg)

    # ------------------------------------------------------------------ results
    def update_from_output(self, so: SchedulerOutput, ro: RunnerOutput) -> list[tuple[Request, int]]:
        """Apply sampled tokens; returns (request, number of new tokens) for each that got some.

        With asynchronous scheduling the next step was scheduled before this one's tokens were
        known: a request that finishes here may already sit in that step (its extra token is
        dropped when that step's output arrives: the request is gone by then), and one that was
        preempted meanwhile still receives the token it sampled here."""
        now = time.monotonic()
        touched: list[tuple[Request, int]] = []
        # The runner answers in the order it was given: then no lookup table is needed.
        by_id = None if ro.req_ids == [r.req_id for r in so.reqs] else \
            {rid: i for i, rid in enumerate(ro.req_ids)}
        for pos, sr in enumerate(so.reqs):
            req = self.requests.get(sr.req_id)
            if req is None or req.finished:
                continue   # finished or aborted while the step ran
            if sr.sample:
                req.num_inflight = max(req.num_inflight - 1, 0)
            running = req.status == RequestStatus.RUNNING
            idx = pos if by_id is None else by_id.get(sr.req_id)
            toks = ro.sampled_token_ids[idx] if idx is not None else []
            if sr.num_spec and running:
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
            if running:
                self.kv.cache_committed_blocks(req)
            touched.append((req, n_added))
            if req.finished:
                if running:
                    self.running.remove(req)
                else:
                    self.waiting.remove(req)
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
