"""Adaptive draft length: the controller's choice of k against its cost model, and engines that
use it stay lossless (greedy output equals no-spec) in synchronous and asynchronous mode."""
import random
import tempfile

import numpy as np
import pytest

from models_util import tiny_model
from spec_util import repetitive_prompts, save_random_eagle_head, staggered_greedy_params, \
    two_sample_chi2
from vllm import LLM, SamplingParams
from vllm.v1.spec_decode.adaptive import (PROBE_BUDGET, PROBE_MAX, PROBE_MIN, PROBE_REQS,
                                          AdaptiveDraftController, bucket)

# A memory-bound verify: flat until 64 tokens, then linear (seconds).
FLAT = {n: 1e-3 * max(1.0, n / 64) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)}


def _feed(ctl, ids, rate, windows=20, k=4, seed=0):
    """Verify windows where each draft is accepted with probability `rate` until a rejection."""
    rng = random.Random(seed)
    for _ in range(windows):
        for rid in ids:
            acc = 0
            while acc < k and rng.random() < rate:
                acc += 1
            ctl.observe_window(rid, k, k, acc)


def test_bucket_edges():
    assert [bucket(b) for b in (0, 1, 2, 3, 4, 7, 8, 64)] == [1, 1, 2, 2, 3, 3, 4, 7]


def test_verify_cost_interpolates_and_extrapolates():
    ctl = AdaptiveDraftController(4, {1: 1.0, 3: 2.0, 4: 4.0})
    assert ctl.verify_cost(1) == 1.0 and ctl.verify_cost(0.5) == 1.0
    assert ctl.verify_cost(2) == pytest.approx(1.5)
    assert ctl.verify_cost(8) == pytest.approx(8.0)     # linear beyond the largest size
    assert AdaptiveDraftController(4).verify_cost(100) == 0.0


def test_high_acceptance_and_cheap_verify_speculates_at_full_length():
    ctl = AdaptiveDraftController(4, FLAT)
    ids = [f"r{i}" for i in range(4)]
    _feed(ctl, ids, 0.9)
    ctl.observe_step(False, 4, 4, 1.2e-3)           # plain step: 1.2 ms
    ctl.observe_step(True, 4, 20, 1.5e-3)           # spec step: 0.5 ms beyond the verify
    caps = ctl.decide(4, ids)
    assert caps == {rid: 4 for rid in ids}
    assert ctl.stats.k_hist[4] == 1


def test_low_acceptance_or_costly_spec_step_chooses_no_speculation():
    ctl = AdaptiveDraftController(4, FLAT)
    ids = [f"r{i}" for i in range(32)]
    _feed(ctl, ids, 0.1)
    ctl.observe_step(False, 32, 32, 1.1e-3)
    ctl.observe_step(True, 32, 160, 4e-3)           # host-bound verify step
    assert ctl.decide(32, ids) == {}
    k, r_spec, r_plain, _ = ctl.estimate(32, ids)
    assert r_spec < r_plain
    # the same acceptance is worth speculating when the spec step costs no more than plain
    ctl2 = AdaptiveDraftController(4, FLAT)
    _feed(ctl2, ids, 0.6)
    ctl2.observe_step(False, 32, 32, 3e-3)
    ctl2.observe_step(True, 32, 160, 3.2e-3)
    assert ctl2.decide(32, ids)


def test_expected_rate_matches_an_independent_computation():
    ctl = AdaptiveDraftController(3, {1: 1.0, 64: 1.0})
    ids = ["a", "b"]
    ctl.observe_step(True, 2, 8, 1.5, 0.0)          # residual 0.5 s in bucket 2
    a, m = ctl._rates(ids)
    k, r_spec, _, _ = ctl.estimate(2, ids)
    best = max((2 + sum(m[i] * sum(a[i] ** j for j in range(1, kk + 1)) for i in range(2)))
               / 1.5 for kk in (1, 2, 3))
    assert r_spec == pytest.approx(best)


def test_per_request_caps_follow_acceptance():
    # verify cost grows with tokens: weak requests lose their tail drafts
    cost = {n: 1e-4 * n for n in (1, 2, 4, 8, 16, 32, 64, 128)}
    ctl = AdaptiveDraftController(4, cost)
    _feed(ctl, ["good"], 0.95, windows=30)
    _feed(ctl, ["bad"], 0.05, windows=30, seed=1)
    ctl.observe_step(False, 2, 2, 1e-2)              # plain is slow: speculating wins
    caps = ctl.decide(2, ["good", "bad"])
    assert caps.get("good", 0) > caps.get("bad", 0)


def test_probe_interval_backs_off_and_resets():
    ctl = AdaptiveDraftController(4, FLAT)
    ids = ["x"]
    _feed(ctl, ids, 0.0)
    ctl.observe_step(False, 1, 1, 1e-3)
    ctl.observe_step(True, 1, 5, 1.1e-3)    # a probe costs 0.1 ms: cheap enough for PROBE_MIN
    decisions = [ctl.decide(1, ids) for _ in range(PROBE_MIN)]
    assert decisions[:-1] == [{}] * (PROBE_MIN - 1)
    assert decisions[-1] == {"x": 4}                 # the probe: full length
    assert ctl.decide(1, ids) == {} and ctl.probe == 2 * PROBE_MIN
    for _ in range(20):
        ctl.decide(1, ids)
    assert ctl.probe <= PROBE_MAX
    # acceptance turns good and the spec step cheap: the next decision speculates, probe resets
    _feed(ctl, ids, 1.0, windows=30)
    ctl.observe_step(True, 1, 5, 1.05e-3)
    for _ in range(PROBE_MAX + 1):
        if ctl.decide(1, ids):
            break
    assert ctl.decide(1, ids) and ctl.probe == PROBE_MIN


def test_probes_are_rare_where_costly_small_and_absent_where_hopeless():
    ids = [f"r{i}" for i in range(64)]
    flat = {1: 1e-3, 512: 1e-3}                  # verify time independent of the tokens
    ctl = AdaptiveDraftController(4, flat)
    _feed(ctl, ids, 0.0)
    ctl.observe_step(False, 64, 64, 1e-3)
    ctl.observe_step(True, 64, 320, 3e-3)      # a spec step costs 3 plain steps
    runs = [ctl.decide(64, ids) for _ in range(300)]
    probes = [r for r in runs if r]
    assert probes and all(len(p) == PROBE_REQS for p in probes)
    first = next(i for i, r in enumerate(runs) if r)
    assert first + 1 >= 2e-3 / (PROBE_BUDGET * 1e-3)      # probe cost <= the budget
    assert len({rid for p in probes for rid in p}) == PROBE_REQS * len(probes)   # rotating
    # a spec step 10x the plain one cannot win even with every draft accepted (k + 1 = 5
    # tokens per request): no probe at all
    ctl2 = AdaptiveDraftController(4, flat)
    _feed(ctl2, ids, 0.0)
    ctl2.observe_step(False, 64, 64, 1e-3)
    ctl2.observe_step(True, 64, 320, 10e-3)
    assert not any(ctl2.decide(64, ids) for _ in range(2000))


def test_plain_decisions_are_cached_until_something_is_observed():
    from vllm.v1.spec_decode.adaptive import REEVALUATE
    ctl = AdaptiveDraftController(4, FLAT)
    ids = [f"r{i}" for i in range(8)]
    _feed(ctl, ids, 0.0)
    ctl.observe_step(False, 8, 8, 1e-3)
    ctl.observe_step(True, 8, 40, 3e-3)
    assert not ctl.stays_plain(8)              # nothing decided yet
    assert ctl.decide(8, ids) == {}
    held = [ctl.stays_plain(8) for _ in range(REEVALUATE + 2)]
    assert held == [True] * REEVALUATE + [False, False]
    assert ctl.decide(8, ids) == {}
    assert not ctl.stays_plain(16)             # another batch-size bucket
    assert ctl.decide(8, ids) == {} and ctl.stays_plain(8)
    ctl.observe_window("r0", 4, 4, 4)          # something new: decide again
    assert not ctl.stays_plain(8)
    assert ctl.stats.steps_plain == REEVALUATE + 1 + 3


def test_unmeasured_bucket_borrows_the_nearest_per_request_cost():
    ctl = AdaptiveDraftController(4, FLAT)
    ctl.observe_step(True, 8, 40, 1e-3 + 8e-4)             # 0.1 ms residual per request
    assert ctl._per_bucket(ctl.residual, 8) == pytest.approx(8e-4)
    assert ctl._per_bucket(ctl.residual, 64) == pytest.approx(64e-4)


def test_unmeasured_modes_start_optimistic_so_both_get_measured():
    ctl = AdaptiveDraftController(4, FLAT)
    assert ctl.decide(8, [f"r{i}" for i in range(8)])       # spec first (no residual known)
    ctl.observe_step(True, 8, 40, 3e-3)
    _feed(ctl, [f"r{i}" for i in range(8)], 0.3)
    assert ctl.decide(8, [f"r{i}" for i in range(8)]) == {}  # plain's prior: the bare forward


def test_controller_validates_k():
    with pytest.raises(ValueError, match="k_max"):
        AdaptiveDraftController(0)


# ---------------------------------------------------------------- engines


@pytest.mark.parametrize("method", ["ngram", "draft_model", "eagle"])
@pytest.mark.parametrize("async_on", [False, True])
def test_adaptive_greedy_identical(target, baseline, method, async_on, monkeypatch):
    # the per-request controller (with chaining, adaptive length is the chain switch:
    # test_chain_switch.py)
    monkeypatch.setenv("VLLM_SPEC_CHAIN", "0")
    cfg = {"ngram": {"method": "ngram", "num_speculative_tokens": 3},
           "draft_model": {"method": "draft_model", "model": target,
                           "num_speculative_tokens": 4},
           "eagle": {"method": "eagle", "num_speculative_tokens": 2,
                     "model": save_random_eagle_head(target, tempfile.mkdtemp())}}[method]
    cfg["adaptive_draft_length"] = True
    llm = LLM(target, enforce_eager=True, speculative_config=cfg, nwor_mode="stage",
              block_size=8, async_scheduling=async_on)
    eng = llm.llm_engine
    assert eng.adaptive is not None and eng.async_scheduling == async_on
    assert eng.adaptive.verify_cost(1) > 0        # calibrated at start-up
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    st = eng.adaptive.stats
    assert st.steps_spec > 0                      # optimistic start: speculation was tried
    assert not eng.adaptive.reqs                  # finished requests were forgotten


def test_adaptive_mixes_async_plain_steps_and_spec_steps(target, baseline, monkeypatch):
    """A controller that finds speculation unprofitable runs plain steps asynchronously (no
    drafts), probes now and then, and the output stays the no-spec output. (The per-request
    controller: chaining off.)"""
    monkeypatch.setenv("VLLM_SPEC_CHAIN", "0")
    llm = LLM(target, enforce_eager=True, async_scheduling=True, block_size=8,
              speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                  "adaptive_draft_length": True})
    eng = llm.llm_engine
    ctl = eng.adaptive
    ctl.batch.succ, ctl.batch.fail = 0.0, 50.0     # nothing is ever accepted, so far
    for b in range(1, 8):                           # and a spec step costs 10x a plain one
        ctl.observe_step(True, 1 << (b - 1), 4 << (b - 1), 1.0)
        ctl.observe_step(False, 1 << (b - 1), 1 << (b - 1), 0.1)
    ctl.observe_step = lambda *a, **k: None         # keep the costs as set
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    st = ctl.stats
    assert st.steps_plain > 0 and st.steps_plain > st.steps_spec
    m = llm.get_metrics_dict()
    # only probe steps drafted
    assert m["vllm:spec_decode_num_drafts"] <= st.probes * len(repetitive_prompts())


def test_adaptive_flag_from_env(monkeypatch, target):
    monkeypatch.setenv("VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH", "1")
    llm = LLM(target, enforce_eager=True,
              speculative_config={"method": "ngram", "num_speculative_tokens": 2})
    assert llm.llm_engine.adaptive is not None
    with pytest.raises(ValueError, match="adaptive_draft_length"):
        LLM(target, enforce_eager=True,
            speculative_config={"method": "ngram", "num_speculative_tokens": 2,
                                "adaptive_draft_length": "yes"})


def test_caps_are_never_exceeded(target):
    """Drafts beyond a request's cap are never verified (the engine trims any proposer)."""
    llm = LLM(target, enforce_eager=True, block_size=8,
              speculative_config={"method": "draft_model", "model": target,
                                  "num_speculative_tokens": 4, "adaptive_draft_length": True})
    eng = llm.llm_engine
    seen = []
    orig = eng.adaptive.decide

    def decide(n, ids):
        caps = orig(n, ids)
        return {rid: 1 for rid in caps}
    eng.adaptive.decide = decide
    real_set = eng.scheduler.set_drafts

    def set_drafts(d):
        seen.extend(len(v) for v in d.values())
        real_set(d)
    eng.scheduler.set_drafts = set_drafts
    llm.generate(repetitive_prompts(3), staggered_greedy_params(3), use_tqdm=False)
    assert seen and max(seen) == 1
    assert np.mean(seen) == 1.0


def test_acceptance_switch_is_tracked():
    """k falls to 0 under acceptance ~0, rises to k_max under ~1, and follows a switch."""
    cost = {n: 1e-3 * max(1.0, n / 64) for n in (1, 2, 4, 8, 16, 32, 64, 128)}
    ctl = AdaptiveDraftController(4, cost)
    ids = [f"r{i}" for i in range(8)]
    ctl.observe_step(False, 8, 8, 1.0e-3)
    ctl.observe_step(True, 8, 40, 1.3e-3)
    _feed(ctl, ids, 1.0, windows=10)
    assert ctl.decide(8, ids) == {rid: 4 for rid in ids}
    _feed(ctl, ids, 0.0, windows=10)
    assert ctl.decide(8, ids) == {}
    _feed(ctl, ids, 1.0, windows=10)       # what a probe step would observe
    assert ctl.decide(8, ids) == {rid: 4 for rid in ids}


def test_temperature_one_follows_the_target_distribution_with_adaptive_steps(monkeypatch):
    """Sampled output with adaptive speculation (per-request lengths 0..k chosen at random each
    step, plain steps asynchronous) has the no-spec distribution at every position. (Chaining
    off: with it, adaptive draft length picks chained k or plain per batch size instead of
    per-request lengths, test_chain_switch.py.)"""
    monkeypatch.setenv("VLLM_SPEC_CHAIN", "0")
    small = tiny_model("llama", vocab_size=16, seed=3)
    prompt = {"prompt_token_ids": [5, 6, 7, 5, 6, 7, 5]}
    n_req, k = 2500, 3
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=4, ignore_eos=True)
              for i in range(n_req)]
    ref = LLM(small, enforce_eager=True, max_num_seqs=256)
    base = [o.outputs[0].token_ids for o in ref.generate([prompt] * n_req, params,
                                                         use_tqdm=False)]
    llm = LLM(small, enforce_eager=True, max_num_seqs=256, async_scheduling=True,
              speculative_config={"method": "draft_model", "model": small,
                                  "num_speculative_tokens": k, "adaptive_draft_length": True})
    rng = random.Random(0)
    llm.llm_engine.adaptive.decide = lambda n, ids: {r: rng.randint(0, k) for r in ids}
    outs = [o.outputs[0].token_ids for o in llm.generate([prompt] * n_req, params,
                                                         use_tqdm=False)]
    m = llm.get_metrics_dict()
    assert m["vllm:spec_decode_num_drafts"] > n_req // 2
    assert 0 < m["vllm:spec_decode_num_accepted_tokens"] < m["vllm:spec_decode_num_draft_tokens"]
    for pos in range(4):
        # 15 degrees of freedom: P(chi2 > 52) ~ 5e-6 when both samples share a distribution
        assert two_sample_chi2([o[pos] for o in outs], [o[pos] for o in base], 16) < 52.0
    # the check has power: a distribution one token off fails it
    shifted = [(o[1] + 1) % 16 for o in base]
    assert two_sample_chi2([o[1] for o in outs], shifted, 16) > 52.0
