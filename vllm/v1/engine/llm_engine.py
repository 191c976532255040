"""LLMEngine: requests in, RequestOutputs out. One step = schedule, run the model, apply the
results, draft the next tokens, detokenize, report."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Union

from vllm import envs
from vllm.config import VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.logger import init_logger, log_once
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.v1.core.scheduler import RequestsUnschedulable, Scheduler
from vllm.v1.engine.detokenizer import IncrementalDetokenizer
from vllm.v1.engine.executor import make_executor
from vllm.v1.engine.fault_isolation import check_params_for_model, request_fault
from vllm.v1.metrics.stats import EngineStats
from vllm.v1.request import Request, RequestStatus
from vllm.v1.spec_decode.adaptive import AdaptiveDraftController
from vllm.v1.spec_decode.chain import chain_sampling_ok
from vllm.v1.spec_decode.chain_switch import ChainModeSwitch
from vllm.v1.spec_decode.proposer import ProposeReq

logger = init_logger(__name__)


@dataclass
class _Seq:
    req: Request
    detok: IncrementalDetokenizer
    last_time: float = 0.0


@dataclass
class _Parent:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[str]
    arrival: float
    outputs: dict[int, CompletionOutput] = field(default_factory=dict)


class LLMEngine:
    def __init__(self, config: VllmConfig, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.executor = make_executor(config)
        num_blocks = self.executor.determine_num_blocks()
        self.executor.initialize_kv_cache(num_blocks)
        self.scheduler = Scheduler(config, num_blocks)
        self.eos_token_id = resolve_eos_token_id(config, tokenizer)
        self.max_model_len = config.scheduler_config.max_model_len
        self.stats = EngineStats(model_name=config.model_config.served_model_name,
                                 num_kv_blocks=num_blocks)
        self._spec_counters = self.executor.spec_decode_counters()
        if self._spec_counters is not None:
            c = self._spec_counters
            self.stats.spec, self.stats.nwor = c.spec, c.nwor
            self.stats.nwor_mode, self.stats.scv_mode = c.nwor_mode, c.scv_mode
            self.stats.scv_mode_counts = c.scv.mode_counts
        self.seqs: dict[str, _Seq] = {}
        self.parents: dict[str, _Parent] = {}
        self._child_to_parent: dict[str, str] = {}
        self._last_log = time.monotonic()
        self._log_interval = envs.get("VLLM_LOG_STATS_INTERVAL")
        # Chained speculative steps (spec_decode/chain.py): the runner can verify and draft
        # on the device, so speculative steps are launched asynchronously too. With adaptive
        # draft length the choice is then per batch size, chained k or plain (chain_switch.py).
        chain_ok = bool(getattr(self.executor, "supports_chain", False))
        self.chain_switch: Optional[ChainModeSwitch] = None
        sc = config.speculative_config
        if chain_ok and sc is not None and sc.adaptive_draft_length:
            self.chain_switch = ChainModeSwitch(sc.num_speculative_tokens)
            logger.info("Adaptive draft length with chained steps: per batch size, chained "
                        "steps of k=%d drafts or plain steps, by measured tokens/s",
                        sc.num_speculative_tokens)
        self.adaptive = None if self.chain_switch is not None else self._make_adaptive()
        self._offered: dict[str, int] = {}     # per request: drafts offered for the next step
        self._caps: Optional[dict[str, int]] = None   # decided ahead of _draft (async mode)
        self._probe_step = False                # the next step is the controller's probe
        # The step being timed for the controller; its period ends when the next step starts.
        self._timing: Optional[_StepTiming] = None
        self._chain = chain_ok and self.adaptive is None
        self.async_scheduling = self._resolve_async()
        self._chain = self._chain and self.async_scheduling
        # (scheduler output, pending runner output) of the step launched but not yet applied.
        self._inflight: Optional[tuple] = None

    def _resolve_async(self) -> bool:
        cfg = self.config
        if not cfg.scheduler_config.async_scheduling:
            return False
        why = None
        if cfg.speculative_config is not None and self.adaptive is None and not self._chain:
            why = ("speculative decoding drafts every step from the previous step's tokens on "
                   "the host (chained steps need a model drafter: the runner said why at "
                   "start-up); with adaptive_draft_length, steps without drafts run "
                   "asynchronously")
        elif not getattr(self.executor, "supports_async", False):
            why = "tensor parallelism: the workers receive host token ids every step"
        if why is not None:
            log_once(logger, logging.INFO, "async-sched-off",
                     "Asynchronous scheduling falls back to synchronous steps (%s)", why)
            return False
        logger.info("Asynchronous scheduling on: step n+1 is scheduled while step n runs%s",
                    " (steps without drafts)" if self.adaptive is not None else
                    " (chained speculative steps)" if self._chain else "")
        return True

    def _make_adaptive(self) -> Optional[AdaptiveDraftController]:
        sc = self.config.speculative_config
        if sc is None or not sc.adaptive_draft_length:
            return None
        k = sc.num_speculative_tokens
        max_tokens = self.config.scheduler_config.max_num_seqs * (k + 1)
        calibrate = getattr(self.executor, "calibrate_verify_cost", None)
        cost = calibrate(max_tokens) if calibrate is not None else None
        if cost:
            ms = ", ".join(f"{n}: {t * 1e3:.3f}" for n, t in sorted(cost.items())
                           if n in (1, 8, 32, 64, 128, 256, 512))
            logger.info("Adaptive draft length on (k_max=%d); verify cost measured at start-up "
                        "(tokens: ms): %s", k, ms)
        else:
            logger.info("Adaptive draft length on (k_max=%d); verify cost not calibrated "
                        "(this executor cannot): step costs are learnt from real steps only", k)
        return AdaptiveDraftController(k, cost, draft_scales_with_k=sc.method != "ngram")

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        config, tok = args.create_config()
        return cls(config, tok)

    # ------------------------------------------------------------------ requests
    def tokenize(self, prompt: str) -> list[int]:
        return tokenize_with(self.tokenizer, prompt)

    def add_request(self, request_id: str, prompt: Union[str, list[int], dict],
                    params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise ValueError("sampling_params must be a SamplingParams")
        vocab = self.config.model_config.vocab_size
        text, ids = normalize_prompt(prompt, self.tokenize, vocab, self.max_model_len)
        check_params_for_model(params, vocab)
        if request_id in self.parents:
            raise ValueError(f"request_id {request_id!r} is already in use")
        children = []
        for i in range(params.n):
            cp = params
            if params.n > 1:
                cp = params.clone()
                cp.n = 1
                if params.seed is not None:
                    # int64 seed + i stays inside what torch.Generator accepts (< 2**64).
                    cp.seed = params.seed + i
            cid = request_id if params.n == 1 else f"{request_id}#{i}"
            req = Request(cid, ids, cp, self.eos_token_id)
            detok = IncrementalDetokenizer(
                self.tokenizer if cp.detokenize else None, list(cp.stop or []),
                cp.include_stop_str_in_output, cp.skip_special_tokens)
            self.seqs[cid] = _Seq(req, detok)
            self._child_to_parent[cid] = request_id
            self.scheduler.add_request(req)
            children.append(cid)
        self.parents[request_id] = _Parent(request_id, text, ids, params, children,
                                           time.monotonic())
        self.stats.prompt_tokens += len(ids) * params.n

    def abort_request(self, request_ids) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        children: list[str] = []
        for pid in request_ids:
            parent = self.parents.pop(pid, None)
            if parent is None:
                continue
            children.extend(parent.children)
            for cid in parent.children:
                self.seqs.pop(cid, None)
                if self.adaptive is not None:
                    self.adaptive.drop(cid)
                self._child_to_parent.pop(cid, None)
            self.stats.request_success["abort"] = self.stats.request_success.get("abort", 0) + 1
        if children:    # one scheduler call: one pass over its queues
            self.scheduler.finish_requests(children, RequestStatus.FINISHED_ABORTED)

    def fail_step_requests(self, exc: BaseException) -> Optional[dict[str, str]]:
        """After ``step()`` raised ``exc``: find the requests the failure belongs to, abort
        them and return {request_id: reason}. Every other running request is rewound (its KV
        is recomputed, as after a preemption) and carries on at the next step. Returns None
        when no request can be blamed; the caller then fails everything in flight."""
        sched = self.scheduler
        if isinstance(exc, RequestsUnschedulable):
            blamed = {cid: str(exc) for cid in exc.request_ids}
        else:
            vocab = self.config.model_config.vocab_size
            blamed = {}
            for req in list(sched.running) + list(sched.waiting):
                why = request_fault(req, vocab)
                if why is not None:
                    blamed[req.request_id] = why
            if not blamed:
                return None
            sched.requeue_running()
        failed: dict[str, str] = {}
        for cid, why in blamed.items():
            pid = self._child_to_parent.get(cid)
            if pid is not None:
                failed.setdefault(pid, why)
        self.abort_request(list(failed))
        return failed

    def has_unfinished_requests(self) -> bool:
        return bool(self.parents)

    def get_num_unfinished_requests(self) -> int:
        return len(self.parents)

    # ------------------------------------------------------------------ the step
    def step(self, stream: bool = False) -> list[RequestOutput]:
        """One engine step. Returns outputs of finished requests, or (stream=True) of every
        request that got new tokens (deltas are computed by the caller from text lengths).

        Asynchronous scheduling: this step is scheduled and launched before the previous
        step's tokens are applied, so the host's scheduling, input preparation, detokenization
        and output processing overlap the GPU's work; outputs come one step later."""
        if self.adaptive is not None:
            self._time_step()
        try:
            outs = (self._step_async if self.async_scheduling else self._step_sync)(stream)
        except BaseException:
            self._drop_inflight()
            raise
        self.stats.num_steps += 1
        self._refresh_gauges()
        self._maybe_log()
        return outs

    def _step_async(self, stream: bool) -> list[RequestOutput]:
        if self._chain:
            sw = self.chain_switch
            if sw is None or sw.step(len(self.scheduler.running),
                                     self.stats.generation_tokens) == "chain":
                outs = self._step_chain(stream)
            else:   # plain steps: a chained step still in flight is drained first
                outs = self._drain_chain(stream)
            if outs is not None:
                return outs
        so = self._schedule()
        prev, self._inflight = self._inflight, None
        if so.reqs or so.finished_req_ids:
            self._inflight = (so, self.executor.execute_model_async(so))
        outs = self._apply(prev, stream) if prev is not None else []
        if self._inflight is None:
            return outs
        launched_so = self._inflight[0]
        if _needs_host_history(launched_so):
            # Penalties read every earlier token, logprobs are computed from the host's
            # tokens: apply this step now, so the next one is scheduled with all tokens known.
            log_once(logger, logging.INFO, "async-sched-sync-step",
                     "Asynchronous scheduling runs steps with penalties or logprobs "
                     "synchronously")
        elif not launched_so.num_spec_tokens and not self._wants_drafts():
            return outs     # the common case: the next step is scheduled while this one runs
        # Drafts are verified (their rewind and the next drafts need this step's tokens), or
        # the next step speculates: apply this step now.
        if not launched_so.num_spec_tokens and self._timing is not None:
            self._timing.usable = False     # a plain step that waited for its tokens: atypical
        launched, self._inflight = self._inflight, None
        outs += self._apply(launched, stream)
        if self.config.speculative_config is not None:
            self._draft()
        return outs

    def _step_chain(self, stream: bool) -> Optional[list[RequestOutput]]:
        """A chained speculative step, launched before the previous one is applied; or the
        drain of the chain when the next step cannot be chained (None: nothing chained is in
        flight, schedule normally).

        Requests outside the chain (new arrivals, prefill chunks, windows shorter than k) run
        in a side step launched right after the chained one: it is applied at once (a sync,
        the only one of the step), then the proposer drafts for them, so they join the chain
        at the next step without draining it."""
        if self._inflight is not None and not self._inflight[0].chain:
            return None     # a plain step in flight: the normal path applies it and drafts
        k = self.config.speculative_config.num_speculative_tokens
        so = self.scheduler.schedule_chain(
            k, _chain_eligible, self.executor.chain_max_rows,
            with_history=self.config.speculative_config.method == "ngram")
        if so is None:
            return self._drain_chain(stream)
        prev = self._inflight
        self._inflight = (so, self.executor.execute_model_async(so))
        side = self.scheduler.schedule_side(so)
        side_pending = self.executor.execute_model_async(side) if side.reqs else None
        self.stats.num_preemptions = self.scheduler.num_preemptions
        outs = self._apply(prev, stream) if prev is not None else []
        if side_pending is not None:
            outs += self._apply_output(side, side_pending.result(), stream)
            self._draft(only={r.req_id for r in side.reqs})
        return outs

    def _drain_chain(self, stream: bool) -> Optional[list[RequestOutput]]:
        """Applies the chained step in flight (None: there is none); its requests continue on
        the normal path (a plain step, then drafts from the host), the drafter told where its
        cache stands."""
        prev = self._inflight
        if prev is None or not prev[0].chain:
            return None
        self._inflight = None
        outs = self._apply(prev, stream)
        live = (self.scheduler.requests.get(r.req_id) for r in prev[0].reqs)
        self.executor.chain_exit([(q.request_id, q.num_tokens) for q in live
                                  if q is not None and not q.finished])
        return outs

    def _schedule(self):
        so = self.scheduler.schedule()
        self.stats.num_preemptions = self.scheduler.num_preemptions
        if self.adaptive is not None and so.reqs:
            # Only decode steps (one token per request plus its drafts) teach the cost model.
            # A probe drafts for a few requests only: its cost says nothing of a full step.
            decode = so.num_tokens == len(so.reqs) + so.num_spec_tokens and not self._probe_step
            self._probe_step = False
            self._timing = _StepTiming(so.num_spec_tokens > 0, len(so.reqs), so.num_tokens,
                                       time.perf_counter(), usable=decode)
        return so

    def _time_step(self) -> None:
        """At the start of a step: the previous step's period goes to the controller."""
        t, self._timing = self._timing, None
        if t is not None and t.usable:
            self.adaptive.observe_step(t.speculative, t.batch, t.num_tokens,
                                       time.perf_counter() - t.start, t.draft_seconds)

    def _wants_drafts(self) -> bool:
        """Asynchronous mode: will the next step speculate? (Decided before this step's tokens
        are known; _draft then uses the decision.)"""
        if self.adaptive is None:
            # without the controller every step drafts (chained steps draft on the device);
            # with the chain switch, while it chains
            if self.chain_switch is not None:
                return self.chain_switch.mode == "chain"
            return self.config.speculative_config is not None
        sched = self.scheduler
        if self.adaptive.stays_plain(len(sched.running)):
            return False
        ids = [r.request_id for r in sched.running
               if r.num_computed_tokens >= r.num_prompt_tokens and _may_draft(r)]
        caps = self.adaptive.decide(len(sched.running), ids)
        self._probe_step = self.adaptive.probing
        self._caps = caps or None
        return bool(caps)

    def _drop_inflight(self) -> None:
        """A failed step (either mode): forget the launched steps whose tokens the host never
        applied. Every
        request is left as if those steps had not been scheduled at all except for its KV
        progress, which the caller's recovery (``fail_step_requests``) rewinds."""
        self._inflight = None
        for req in self.scheduler.requests.values():
            req.num_inflight = 0

    def _apply(self, launched: tuple, stream: bool) -> list[RequestOutput]:
        so, pending = launched
        return self._apply_output(so, pending.result(), stream)

    def _apply_output(self, so, ro, stream: bool) -> list[RequestOutput]:
        """A step's runner output on the host: the controller's observations, the scheduler's
        update, then stop checks, detokenization and outputs."""
        if self._offered:
            self._observe_windows(so, ro)
        touched = self.scheduler.update_from_output(so, ro)
        if self.adaptive is not None:
            for req, _ in touched:
                if req.finished:
                    self.adaptive.drop(req.request_id)
        return self._process(touched, stream)

    def _observe_windows(self, so, ro) -> None:
        """The verify windows of the step the offered drafts were for."""
        offered, self._offered = self._offered, {}
        idx = {rid: i for i, rid in enumerate(ro.req_ids)}
        for sr in so.reqs:
            cap = offered.get(sr.req_id)
            i = idx.get(sr.req_id)
            if cap and i is not None:
                n = len(ro.sampled_token_ids[i])
                acc = max(n - 1, 0) if sr.num_spec else 0
                self.adaptive.observe_window(sr.req_id, cap, sr.num_spec, acc)

    def _step_sync(self, stream: bool) -> list[RequestOutput]:
        so = self._schedule()
        outs = self._apply_output(so, self.executor.execute_model(so), stream)
        if self.config.speculative_config is not None:
            self._draft()
        return outs

    def _draft(self, only: Optional[set] = None) -> None:
        """Drafts for the next step (only: for these requests; None: every running one)."""
        if self.chain_switch is not None and self.chain_switch.mode == "plain":
            return      # plain steps chosen for this batch size
        running = self.scheduler.running
        if self.adaptive is not None and self._caps is None \
                and self.adaptive.stays_plain(len(running)):
            return
        reqs = [r for r in running
                if r.num_computed_tokens == r.num_tokens - 1     # not prefilling
                and not r.num_inflight and _may_draft(r)
                and (only is None or r.request_id in only)]
        caps = None
        if self.adaptive is not None:
            decided, self._caps = self._caps, None
            if decided is None:
                decided = self.adaptive.decide(len(running), [r.request_id for r in reqs])
                self._probe_step = self.adaptive.probing
            if not decided:
                return      # k = 0: the next step does not speculate
            # a request that finished its prefill since the decision gets the batch's length
            default = max(decided.values())
            caps = {r.request_id: decided.get(r.request_id, default) for r in reqs}
            reqs = [r for r in reqs if caps[r.request_id] > 0]
            self._offered = {r.request_id: caps[r.request_id] for r in reqs}
        preqs = [ProposeReq(r.request_id, r.all_token_ids, r.num_computed_tokens, r.block_ids,
                            r.num_preemptions,
                            max_drafts=None if caps is None else caps[r.request_id])
                 for r in reqs]
        if not preqs:
            return
        t0 = time.perf_counter()
        drafts = self.executor.propose(preqs)     # proposers honour max_drafts
        if caps is not None:
            dt = time.perf_counter() - t0
            self.adaptive.observe_draft_time(len(preqs), max(caps.values()), dt)
            if self._timing is not None:
                self._timing.draft_seconds += dt
        self.scheduler.set_drafts(drafts)

    def _process(self, touched, stream: bool) -> list[RequestOutput]:
        now = time.monotonic()
        done_parents: set[str] = set()
        changed: set[str] = set()
        for req, n_new in touched:
            seq = self.seqs.get(req.request_id)
            if seq is None:
                continue
            self.stats.generation_tokens += n_new
            if req.num_output_tokens == n_new:
                self.stats.ttft.observe(now - req.arrival_time)
            elif n_new:
                self.stats.itl.observe((now - seq.last_time) / n_new)
            seq.last_time = now
            hit = seq.detok.update(req.output_token_ids[-n_new:])
            if hit is not None and not req.finished:
                req.stop_reason = hit
                self.scheduler.finish_requests([req.request_id], RequestStatus.FINISHED_STOPPED)
            elif hit is not None:
                req.stop_reason = hit
                req.status = RequestStatus.FINISHED_STOPPED
            pid = self._child_to_parent[req.request_id]
            changed.add(pid)
            if req.finished:
                seq.detok.flush() if hit is None else None
                parent = self.parents[pid]
                if all(self.seqs[c].req.finished for c in parent.children):
                    done_parents.add(pid)
        outs = []
        for pid in changed:
            if pid in done_parents or stream:
                outs.append(self._make_output(pid, pid in done_parents))
        for pid in done_parents:
            parent = self.parents.pop(pid)
            self.stats.e2e.observe(now - parent.arrival)
            for c in parent.children:
                reason = self.seqs[c].req.status.value
                self.stats.request_success[reason] = self.stats.request_success.get(reason, 0) + 1
                self.seqs.pop(c, None)
                self._child_to_parent.pop(c, None)
        return outs

    def _make_output(self, pid: str, finished: bool) -> RequestOutput:
        parent = self.parents[pid]
        comps = []
        cached = 0
        for i, cid in enumerate(parent.children):
            seq = self.seqs[cid]
            r = seq.req
            cached = max(cached, r.num_cached_tokens)
            comps.append(CompletionOutput(
                index=i, text=seq.detok.text, token_ids=list(r.output_token_ids),
                cumulative_logprob=r.cumulative_logprob if r.logprobs is not None else None,
                logprobs=list(r.logprobs) if r.logprobs is not None else None,
                finish_reason=r.status.value if r.finished else None,
                stop_reason=r.stop_reason))
        return RequestOutput(pid, parent.prompt, parent.prompt_token_ids, comps, finished,
                             num_cached_tokens=cached)

    # ------------------------------------------------------------------ stats
    def _refresh_gauges(self) -> None:
        s, sch = self.stats, self.scheduler
        s.num_running = len(sch.running)
        s.num_waiting = len(sch.waiting)
        s.kv_usage = sch.kv_usage()
        s.num_kv_blocks_free = sch.kv.pool.num_free
        s.prefix_cache_queries = sch.kv.num_cache_queries
        s.prefix_cache_hits = sch.kv.num_cache_hits
        if self._spec_counters is not None:
            s.scv_fallbacks = self._spec_counters.scv.fallbacks

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self._log_interval:
            return
        self._last_log = now
        sp = self.stats.spec
        if sp is not None and sp.num_drafts and logger.isEnabledFor(logging.INFO):
            rates = ", ".join(f"{r:.3f}" for r in sp.per_position_rates())
            logger.info("SpecDecoding metrics: Mean acceptance length: %.2f, Accepted: %d tokens,"
                        " Drafted: %d tokens, Per-position acceptance rate: %s",
                        sp.mean_acceptance_length, sp.num_accepted_tokens, sp.num_draft_tokens,
                        rates)
        if sp is not None and self.config.speculative_config.confidence_threshold > 0:
            logger.info("Confidence early exit stats: %d tokens stopped",
                        sp.num_draft_tokens_stopped)

    def shutdown(self) -> None:
        self.executor.shutdown()


@dataclass
class _StepTiming:
    """One step as the adaptive draft length controller learns from it."""
    speculative: bool       # it verified drafts
    batch: int              # requests in it
    num_tokens: int
    start: float            # perf_counter at its scheduling
    draft_seconds: float = 0.0   # drafting for the next step, inside this step's period
    usable: bool = True     # a typical decode step (not a probe, prefill or drain)


def _may_draft(r: Request) -> bool:
    """Penalties and an active min_tokens mask change the target distribution per step."""
    p = r.sampling_params
    return not p.has_penalties and r.num_output_tokens >= p.min_tokens


def _chain_eligible(r: Request) -> bool:
    return _may_draft(r) and chain_sampling_ok(r.sampling_params)


def _needs_host_history(so) -> bool:
    return any(r.params.has_penalties or r.params.logprobs is not None for r in so.reqs)


def resolve_eos_token_id(config: VllmConfig, tokenizer) -> Optional[int]:
    """The model config's EOS id (the first, when it lists several), else the tokenizer's."""
    eos = getattr(config.model_config.hf_config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    return eos


def tokenize_with(tokenizer, prompt: str) -> list[int]:
    if tokenizer is None:
        raise ValueError("this model has no tokenizer: pass token ids as the prompt")
    return tokenizer.encode(prompt)


def normalize_prompt(prompt: Union[str, list[int], dict], tokenize, vocab_size: int,
                     max_model_len: int) -> tuple[Optional[str], list[int]]:
    """A prompt (text, token ids, or {"prompt": ..., "prompt_token_ids": ...}) -> (text or None,
    token ids), checked: not empty, ids inside the vocabulary, not longer than max_model_len."""
    text = None
    if isinstance(prompt, dict):
        ids = prompt.get("prompt_token_ids")
        text = prompt.get("prompt")
        prompt = ids if ids is not None else text
    if isinstance(prompt, str):
        text = prompt
        ids = tokenize(prompt)
    else:
        ids = list(prompt)
    if not ids:
        raise ValueError("prompt is empty")
    if any((not isinstance(t, int)) or t < 0 or t >= vocab_size for t in ids):
        raise ValueError(f"prompt token ids must be ints in [0, {vocab_size})")
    if len(ids) > max_model_len:
        raise ValueError(f"prompt is {len(ids)} tokens, longer than max_model_len="
                         f"{max_model_len}")
    return text, ids
