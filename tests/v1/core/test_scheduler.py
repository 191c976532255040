"""The real Scheduler (with its KV manager and block pool) driven step by step with a small
VllmConfig, the runner's part played by hand: rejection rewind, lookahead slots, preemption,
prefix-cache hits, chunked prefill."""
from __future__ import annotations

from typing import Optional

import torch
from transformers import LlamaConfig

from vllm.config import (CacheConfig, ModelConfig, ParallelConfig, SchedulerConfig,
                         SpecDecodeOptions, SpeculativeConfig, VllmConfig)
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched_output import RunnerOutput, SchedulerOutput
from vllm.v1.core.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

BS = 4      # block size: small, so a few tokens cross block boundaries


def make_scheduler(num_blocks: int = 64, max_num_seqs: int = 8, max_tokens: int = 64,
                   max_model_len: int = 128, chunked: bool = True, prefix: bool = False,
                   spec: Optional[SpeculativeConfig] = None) -> Scheduler:
    hf = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=max_model_len)
    mc = ModelConfig(model="tiny", model_path="tiny", tokenizer=None, hf_config=hf,
                     dtype=torch.float32, max_model_len=max_model_len, load_format="dummy",
                     seed=0, served_model_name="tiny")
    cfg = VllmConfig(model_config=mc,
                     cache_config=CacheConfig(block_size=BS, enable_prefix_caching=prefix),
                     scheduler_config=SchedulerConfig(max_num_seqs, max_tokens, max_model_len,
                                                      chunked),
                     parallel_config=ParallelConfig(1), speculative_config=spec,
                     spec_options=SpecDecodeOptions(), device="cpu")
    return Scheduler(cfg, num_blocks)


def add(sched: Scheduler, rid: str, prompt: list[int], max_tokens: int = 32) -> Request:
    req = Request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                              ignore_eos=True), eos_token_id=None)
    sched.add_request(req)
    return req


def run_step(sched: Scheduler, sampled: Optional[dict[str, list[int]]] = None,
             default_token: int = 7) -> SchedulerOutput:
    """One step: schedule, then report `sampled[rid]` (default: one token) for each request
    that samples this step, nothing for the others (a prefill chunk)."""
    so = sched.schedule()
    sampled = sampled or {}
    toks = [sampled.get(r.req_id, [default_token]) if r.sample else [] for r in so.reqs]
    sched.update_from_output(so, RunnerOutput([r.req_id for r in so.reqs], toks))
    return so


def entry(so: SchedulerOutput, rid: str):
    return next(r for r in so.reqs if r.req_id == rid)


NGRAM = SpeculativeConfig(method="ngram", num_speculative_tokens=3)
DRAFT = SpeculativeConfig(method="draft_model", num_speculative_tokens=3, model="draft")


# ---- rejection rewind ----------------------------------------------------------------------------

def test_rejected_drafts_are_rewound():
    sched = make_scheduler(spec=NGRAM, prefix=True)
    req = add(sched, "r", list(range(10, 20)))          # 10 prompt tokens
    run_step(sched, {"r": [50]})
    assert req.num_computed_tokens == 10 and req.num_tokens == 11

    sched.set_drafts({"r": [51, 52, 53]})
    so = sched.schedule()
    (sr,) = so.reqs
    # the last committed token, then the drafts, from the first position not in the cache
    assert sr.token_ids == [50, 51, 52, 53] and sr.num_spec == 3 and sr.start_pos == 10
    assert so.num_tokens == 4 and so.num_spec_tokens == 3
    assert req.num_computed_tokens == 14            # optimistic until verified
    # the target accepts 51, rejects 52 (emits 60 instead): one draft accepted, two rejected
    sched.update_from_output(so, RunnerOutput(["r"], [[51, 60]], num_spec=[3]))
    assert req.output_token_ids == [50, 51, 60]
    assert req.num_computed_tokens == 12            # 10 + 50 + 51: rejected K/V do not count
    assert req.spec_token_ids == []
    # only blocks of verified tokens enter the prefix cache: 12 tokens = 3 full blocks
    assert len(req.block_hashes) == 12 // BS

    so = sched.schedule()                           # next step recomputes from the rewind
    assert so.reqs[0].token_ids == [60] and so.reqs[0].start_pos == 12


def test_all_drafts_accepted_emit_a_bonus_token():
    sched = make_scheduler(spec=NGRAM)
    req = add(sched, "r", [1, 2, 3, 4, 5])
    run_step(sched, {"r": [6]})
    sched.set_drafts({"r": [7, 8, 9]})
    so = sched.schedule()
    sched.update_from_output(so, RunnerOutput(["r"], [[7, 8, 9, 10]], num_spec=[3]))
    assert req.output_token_ids == [6, 7, 8, 9, 10]
    assert req.num_computed_tokens == 9 and req.num_tokens == 10


def test_drafts_are_trimmed_to_max_tokens():
    sched = make_scheduler(spec=NGRAM)
    req = add(sched, "r", [1, 2, 3], max_tokens=3)
    run_step(sched, {"r": [4]})
    sched.set_drafts({"r": [5, 6, 7]})
    # one output so far, max 3: at most 1 draft (its verify step also emits one token)
    assert req.spec_token_ids == [5]


# ---- lookahead slots -----------------------------------------------------------------------------

def test_draft_model_reserves_lookahead_slots():
    prompt = list(range(8))                          # exactly 2 blocks of 4
    plain = make_scheduler(spec=NGRAM)               # n-gram has no drafter KV
    r_plain = add(plain, "r", prompt)
    plain.schedule()
    assert len(r_plain.block_ids) == 2

    sched = make_scheduler(spec=DRAFT)
    req = add(sched, "r", prompt)
    sched.schedule()
    # 8 tokens + 3 lookahead slots for the drafter's own K/V -> 11 slots = 3 blocks
    assert len(req.block_ids) == 3


def test_lookahead_covers_a_verify_step_and_its_drafts():
    sched = make_scheduler(spec=DRAFT)
    req = add(sched, "r", list(range(6)))
    run_step(sched, {"r": [9]})                      # 6 computed, 7 tokens
    sched.set_drafts({"r": [1, 2, 3]})
    so = sched.schedule()
    assert so.reqs[0].num_spec == 3
    # computed 6 + 4 new (1 + 3 drafts) + 3 lookahead = 13 slots -> 4 blocks
    assert len(req.block_ids) == 4
    assert so.reqs[0].block_ids == req.block_ids


def test_lookahead_stops_at_max_model_len():
    sched = make_scheduler(spec=DRAFT, max_model_len=8)
    req = add(sched, "r", list(range(7)))
    sched.schedule()
    assert len(req.block_ids) == 2                   # min(7 + 3, 8) slots


# ---- preemption ----------------------------------------------------------------------------------

def test_preemption_frees_the_last_request_and_recomputes_it():
    sched = make_scheduler(num_blocks=4)              # 16 slots in all
    r0 = add(sched, "r0", list(range(8)))
    r1 = add(sched, "r1", list(range(100, 108)))
    so = run_step(sched)
    assert [r.req_id for r in so.reqs] == ["r0", "r1"]
    assert sched.kv.pool.num_free == 0               # 2 blocks each

    # r0's next token needs a third block: r1 (the last running) is preempted for it
    so = run_step(sched)
    assert [r.req_id for r in so.reqs] == ["r0"] and so.num_preempted == 1
    assert r1.status == RequestStatus.PREEMPTED and r1.num_preemptions == 1
    assert r1.num_computed_tokens == 0 and r1.block_ids == []
    assert list(sched.waiting) == [r1] and sched.running == [r0]
    assert sched.num_preemptions == 1
    assert len(r0.block_ids) == 3

    # once r0 is gone, r1 comes back and recomputes its prompt and its output token
    sched.finish_requests(["r0"], RequestStatus.FINISHED_ABORTED)
    so = sched.schedule()
    (sr,) = so.reqs
    assert sr.req_id == "r1" and sr.start_pos == 0 and sr.sample
    assert sr.token_ids == list(range(100, 108)) + r1.output_token_ids
    assert so.finished_req_ids == ["r0"]
    assert r1.status == RequestStatus.RUNNING


def test_no_admission_in_a_step_that_preempted():
    sched = make_scheduler(num_blocks=4)
    add(sched, "r0", list(range(8)))
    add(sched, "r1", list(range(100, 108)))
    run_step(sched)
    add(sched, "r2", [1])                            # would fit after the preemption
    so = run_step(sched)
    assert so.num_preempted == 1 and [r.req_id for r in so.reqs] == ["r0"]


# ---- prefix cache --------------------------------------------------------------------------------

def test_prefix_cache_hits_skip_computed_blocks():
    sched = make_scheduler(prefix=True)
    prompt = list(range(30, 42))                     # 12 tokens = 3 full blocks
    r0 = add(sched, "r0", prompt)
    run_step(sched)
    assert len(r0.block_hashes) == 3                 # committed full blocks are cached

    r1 = add(sched, "r1", prompt[:8] + [1, 2, 3])    # shares the first 2 blocks
    sr = entry(sched.schedule(), "r1")
    assert r1.num_cached_tokens == 8
    assert sr.start_pos == 8 and sr.token_ids == [1, 2, 3]
    assert r1.block_ids[:2] == r0.block_ids[:2]
    assert sched.kv.num_cache_hits == 8


def test_full_prompt_hit_still_computes_the_last_token():
    sched = make_scheduler(prefix=True)
    prompt = list(range(30, 42))
    add(sched, "r0", prompt)
    run_step(sched)
    r1 = add(sched, "r1", prompt)
    sr = entry(sched.schedule(), "r1")
    # the logits of the last prompt token are needed: its block is recomputed, not reused
    assert r1.num_cached_tokens == 8 and sr.token_ids == prompt[8:] and sr.sample


def test_no_hits_without_prefix_caching():
    sched = make_scheduler(prefix=False)
    prompt = list(range(30, 42))
    add(sched, "r0", prompt)
    run_step(sched)
    r1 = add(sched, "r1", prompt)
    sr = entry(sched.schedule(), "r1")
    assert r1.num_cached_tokens == 0 and sr.start_pos == 0 and len(sr.token_ids) == 12


# ---- chunked prefill -----------------------------------------------------------------------------

def test_long_prompt_is_prefilled_in_chunks():
    sched = make_scheduler(max_tokens=8, max_num_seqs=4)
    req = add(sched, "r", list(range(20)))
    chunks = []
    for _ in range(3):
        so = run_step(sched, {"r": [99]})
        (sr,) = so.reqs
        chunks.append((sr.start_pos, len(sr.token_ids), sr.sample))
    assert chunks == [(0, 8, False), (8, 8, False), (16, 4, True)]
    assert req.output_token_ids == [99]              # only the last chunk samples
    assert req.num_computed_tokens == 20


def test_decode_goes_first_and_a_prefill_takes_the_rest_of_the_budget():
    sched = make_scheduler(max_tokens=8, max_num_seqs=4)
    add(sched, "a", [1, 2, 3])
    run_step(sched)                                  # a: prefilled, now decoding
    b = add(sched, "b", list(range(40, 60)))
    so = run_step(sched)
    assert [(r.req_id, len(r.token_ids)) for r in so.reqs] == [("a", 1), ("b", 7)]
    assert so.num_tokens == 8 and b.num_computed_tokens == 7


def test_without_chunked_prefill_a_long_prompt_waits():
    sched = make_scheduler(max_tokens=8, chunked=False)
    add(sched, "long", list(range(20)))
    so = sched.schedule()
    assert so.reqs == [] and len(sched.waiting) == 1
    short = add(sched, "short", [1, 2])
    so = sched.schedule()
    # FCFS: the queue's head does not fit, so nothing behind it is admitted either
    assert so.reqs == [] and short.status == RequestStatus.WAITING
