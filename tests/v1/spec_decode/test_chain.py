"""Chained speculative steps (vllm/v1/spec_decode/chain.py): verification and drafting on the
device, the next step launched before the host has this one's tokens. Greedy output must equal
no-spec output whatever the acceptance (all drafts accepted: a draft model identical to the
target; some: a different tiny model; ~none: a random EAGLE head), with requests finishing
inside windows, stop tokens, arrivals and aborts that break and re-enter the chain, padded
graph rows; and the chain must leave no block allocated."""
import tempfile

import pytest
import torch

from models_util import tiny_model
from spec_util import EagerReplay, repetitive_prompts, save_random_eagle_head, two_sample_chi2, \
    staggered_greedy_params
from vllm import LLM, SamplingParams
from vllm.v1.spec_decode.chain import SpecChain


def _cfg(method, target):
    if method == "ngram":                   # drafts looked up on the device
        return {"method": "ngram", "num_speculative_tokens": 3}
    if method == "draft_model-same":        # accepts every draft
        return {"method": "draft_model", "model": target, "num_speculative_tokens": 4}
    if method == "draft_model-other":       # accepts some
        return {"method": "draft_model", "model": tiny_model("llama", seed=1),
                "num_speculative_tokens": 3}
    return {"method": "eagle", "num_speculative_tokens": 3,   # random head: accepts ~none
            "model": save_random_eagle_head(target, tempfile.mkdtemp())}


def _chained(target, method, **kw):
    llm = LLM(target, enforce_eager=True, speculative_config=_cfg(method, target), block_size=8,
              async_scheduling=True, **kw)
    eng = llm.llm_engine
    assert eng._chain and eng.async_scheduling
    return llm, eng, eng.executor.driver_runner.chain


def _ids(outs):
    return [o.outputs[0].token_ids for o in outs]


def _record_launches(chain, what) -> list:
    """Wraps chain.launch: returns the list that receives what(reqs) of every chained step."""
    seen = []
    orig = chain.launch

    def launch(reqs, rows, sampling):
        seen.append(what(reqs))
        return orig(reqs, rows, sampling)
    chain.launch = launch
    return seen


def _all_blocks_free(eng):
    pool = eng.scheduler.kv.pool
    return pool.num_free == pool.num_blocks


@pytest.mark.parametrize("method", ["draft_model-same", "draft_model-other", "eagle", "ngram"])
def test_chained_greedy_identical(target, baseline, method):
    llm, eng, chain = _chained(target, method)
    launches = _record_launches(chain, len)
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert _ids(outs) == baseline
    assert len(launches) > 3 and max(launches) == 6 and min(launches) < 6  # batches shrink
    sp = eng.stats.spec
    assert sp.num_drafts > 0
    if method == "draft_model-same":
        assert sp.mean_acceptance_length == pytest.approx(1 + 4)
    if method == "ngram":       # the device lookup finds the prompts' repetitions
        assert sp.mean_acceptance_length > 1.3
    assert _all_blocks_free(eng)


@pytest.mark.parametrize("method", ["draft_model-other", "ngram"])
def test_nwor_staging_inside_chained_steps(target, baseline, method):
    """NWOR stage: drafts' K/V staged in the verify forward, the accepted ones committed inside
    the chained step; lossless, and exactly the accepted drafts are committed."""
    llm, eng, chain = _chained(target, method, nwor_mode="stage")
    assert chain.staging is not None
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert _ids(outs) == baseline
    nw, sp = eng.stats.nwor, eng.stats.spec
    assert nw.windows > 0 and nw.tokens_staged > 0
    assert nw.tokens_committed == sp.num_accepted_tokens
    assert nw.tokens_committed < nw.tokens_staged
    assert _all_blocks_free(eng)


@pytest.mark.parametrize("method", ["draft_model-other", "ngram"])
def test_padded_graph_rows_replay_like_eager(target, baseline, method):
    """The graph path on the CPU (EagerReplay): batches padded to capture sizes, padding rows
    write nothing and change nothing."""
    llm, eng, chain = _chained(target, method)
    runner = eng.executor.driver_runner
    runner.chain = SpecChain(chain.k, runner.buffers, runner._graph_forward,
                             runner.model.compute_logits, runner.proposer, runner.kv_cache,
                             lambda sizes, name: EagerReplay(sizes, name=name),
                             lambda n: [s for s in (1, 4, 8) if s <= n], True,
                             ngram=chain.ngram, max_model_len=eng.max_model_len)
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert _ids(outs) == baseline
    assert 8 in runner.chain.graphs.replayed and 4 in runner.chain.graphs.replayed
    assert runner.chain.max_rows in runner.chain.graphs.sizes     # every batch has a graph
    assert _all_blocks_free(eng)


def test_stop_tokens_and_eos_inside_windows(target):
    """Stops land inside verify windows; the tokens after them (and the chained step already
    in flight) never reach the output."""
    prompts = repetitive_prompts(8, seed=5)
    ref_llm = LLM(target, enforce_eager=True)
    free = _ids(ref_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=30,
                                                          ignore_eos=True), use_tqdm=False))
    # each request stops at a token it really produces, at different depths
    sp = [SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[f[3 + i % 5]])
          for i, f in enumerate(free)]
    ref = _ids(ref_llm.generate(prompts, sp, use_tqdm=False))
    llm, eng, _ = _chained(target, "draft_model-same")
    outs = llm.generate(prompts, sp, use_tqdm=False)
    assert _ids(outs) == ref
    assert any(o.outputs[0].finish_reason == "stop" for o in outs)
    assert _all_blocks_free(eng)


@pytest.mark.parametrize("method", ["draft_model-other", "ngram"])
def test_arrivals_join_the_chain_and_aborts_leave_it(target, method):
    """Requests arriving while chained steps run are prefilled in side steps (a long prompt in
    several chunks) and join the chain without draining it; an aborted request leaves it;
    outputs equal no-spec outputs and no block stays allocated."""
    prompts = repetitive_prompts(6, seed=7)
    prompts[4] = {"prompt_token_ids": [(7 * j) % 250 + 3 for j in range(70)]}  # > 1 chunk
    sp = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    ref = _ids(LLM(target, enforce_eager=True).generate(prompts, [sp] * 6, use_tqdm=False))
    llm, eng, chain = _chained(target, method, max_num_batched_tokens=40,
                                  max_num_seqs=8)
    exits = []
    orig_exit = eng.executor.chain_exit
    eng.executor.chain_exit = lambda ex: exits.append(list(ex)) or orig_exit(ex)
    launches = _record_launches(chain, lambda reqs: [r.req_id for r in reqs])
    done = {}
    for i in range(3):
        eng.add_request(f"r{i}", prompts[i], sp)
    for step in range(80):
        if step == 3:           # (24 tokens take >= 6 steps of at most 4)
            eng.abort_request("r1")
        if step == 4:           # arrivals while chained steps run
            for i in (3, 4):
                eng.add_request(f"r{i}", prompts[i], sp)
        if step == 9:
            eng.add_request("r5", prompts[5], sp)
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o.outputs[0].token_ids
        if not eng.has_unfinished_requests():
            break
    assert not eng.has_unfinished_requests()
    assert "r1" not in done
    for i in (0, 2, 3, 4, 5):
        assert done[f"r{i}"] == ref[i], i
    joined = {rid for ids in launches for rid in ids}
    assert {"r3", "r4", "r5"} <= joined            # the arrivals rode chained steps
    first_r4 = next(i for i, ids in enumerate(launches) if "r4" in ids)
    assert "r0" in launches[first_r4] or "r2" in launches[first_r4]   # beside older ones
    assert len(exits) <= 2, exits     # no drain per arrival (the end may drain once)
    assert _all_blocks_free(eng)


@pytest.mark.parametrize("why,kw,env", [
    ("controlled acceptance", {"speculative_config": {"method": "ngram", "acceptance_rate": 0.5,
                                                      "num_speculative_tokens": 3}}, None),
    ("switched off", {}, "0"),
    ("SCV host loop", {"scv_mode": "off"}, None),
    ("synchronous scheduling", {"async_scheduling": False}, None),
])
def test_chain_off_where_it_cannot_run(target, monkeypatch, why, kw, env):
    if env is not None:
        monkeypatch.setenv("VLLM_SPEC_CHAIN", env)
    args = dict(enforce_eager=True, async_scheduling=True,
                speculative_config={"method": "draft_model", "model": target,
                                    "num_speculative_tokens": 2})
    args.update(kw)
    eng = LLM(target, **args).llm_engine
    assert not eng._chain, why
    assert eng.executor.driver_runner.chain is None


def test_seeded_sampling_requests_leave_the_chain(target):
    """A seeded random request is not chain-eligible (its generator cannot be replayed from a
    graph): the batch runs synchronous verify steps, greedy requests beside it stay
    lossless."""
    prompts = repetitive_prompts(3, seed=9)
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    ref = _ids(LLM(target, enforce_eager=True).generate(prompts[:2], [greedy] * 2,
                                                         use_tqdm=False))
    llm, eng, chain = _chained(target, "draft_model-same")
    launches = _record_launches(chain, len)
    sampled = SamplingParams(temperature=1.0, seed=3, max_tokens=16, ignore_eos=True)
    outs = llm.generate(prompts, [greedy, greedy, sampled], use_tqdm=False)
    assert _ids(outs)[:2] == ref
    assert not launches
    assert _all_blocks_free(eng)


pytestmark_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@pytestmark_cuda
@pytest.mark.parametrize("method,nwor", [("draft_model-same", "off"),
                                         ("draft_model-other", "off"), ("eagle", "off"),
                                         ("ngram", "off"), ("draft_model-other", "stage"),
                                         ("ngram", "stage")])
def test_chain_graphs_lossless_cuda(method, nwor):
    """CUDA graphs of the chained step (float32): identical to no-spec, graphs replayed; with
    NWOR staging (committed inside the graph) exactly the accepted drafts committed."""
    target = tiny_model("llama")
    prompts = repetitive_prompts(9, seed=11)
    sp = [SamplingParams(temperature=0, max_tokens=8 + 3 * i, ignore_eos=True)
          for i in range(9)]
    ref = _ids(LLM(target, dtype="float32", gpu_memory_utilization=0.3).generate(
        prompts, sp, use_tqdm=False))
    llm = LLM(target, dtype="float32", gpu_memory_utilization=0.3, nwor_mode=nwor,
              speculative_config=_cfg(method, target))
    eng = llm.llm_engine
    chain = eng.executor.driver_runner.chain
    assert eng._chain and chain.graphs.graphs
    assert (chain.staging is not None) == (nwor == "stage")
    assert _ids(llm.generate(prompts, sp, use_tqdm=False)) == ref
    assert chain.graphs.num_replays > 0
    if nwor == "stage":
        assert eng.stats.nwor.tokens_committed == eng.stats.spec.num_accepted_tokens
    assert _all_blocks_free(eng)


def test_windows_beyond_the_token_budget_fall_back(target, baseline):
    """Six requests' windows (6 x 5 tokens) exceed max_num_batched_tokens=16: those steps run
    the normal (synchronous) way; once at most 3 requests remain, chained steps resume."""
    llm, eng, chain = _chained(target, "draft_model-same", max_num_batched_tokens=16,
                               max_num_seqs=16)
    assert chain.max_rows == 3
    launches = _record_launches(chain, len)
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert _ids(outs) == baseline
    assert launches and max(launches) <= 3
    assert _all_blocks_free(eng)


@pytest.mark.parametrize("method", ["draft_model", "ngram"])
def test_sampled_rows_follow_the_target_distribution(method):
    """Random (unseeded, temperature 1) requests ride chained steps beside greedy ones: the
    sampled tokens have the no-spec distribution at every position (two-sample chi-square),
    the greedy ones equal no-spec greedy output."""
    small = tiny_model("llama", vocab_size=16, seed=3)
    prompt = {"prompt_token_ids": [5, 6, 7, 5, 6, 7, 5]}
    n_req, k = 2400, 3
    # long enough to enter the chain (a window of k drafts must fit before max_tokens)
    rand = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    params = [rand if i % 8 else greedy for i in range(n_req)]
    ref = LLM(small, enforce_eager=True, max_num_seqs=256)
    base = [o.outputs[0].token_ids for o in ref.generate([prompt] * n_req, params,
                                                         use_tqdm=False)]
    spec = {"method": method, "num_speculative_tokens": k}
    if method == "draft_model":
        spec["model"] = small
    llm = LLM(small, enforce_eager=True, max_num_seqs=256, async_scheduling=True,
              speculative_config=spec)
    chain = llm.llm_engine.executor.driver_runner.chain
    variants = []
    orig = chain._body
    chain._body = lambda R, sampling=False: variants.append(sampling) or orig(R, sampling)
    outs = [o.outputs[0].token_ids for o in llm.generate([prompt] * n_req, params,
                                                         use_tqdm=False)]
    assert any(variants)                                   # the sampling variant ran
    m = llm.get_metrics_dict()
    assert 0 < m["vllm:spec_decode_num_accepted_tokens"] < m["vllm:spec_decode_num_draft_tokens"]
    g = [i for i in range(n_req) if i % 8 == 0]
    assert [outs[i] for i in g] == [base[i] for i in g]
    r = [i for i in range(n_req) if i % 8]
    for pos in range(10):
        # 15 degrees of freedom: P(chi2 > 52) ~ 5e-6 when both samples share a distribution
        assert two_sample_chi2([outs[i][pos] for i in r], [base[i][pos] for i in r], 16) < 52.0
    shifted = [(base[i][1] + 1) % 16 for i in r]           # the check has power
    assert two_sample_chi2([outs[i][1] for i in r], shifted, 16) > 52.0


@pytest.mark.cuda
@pytestmark_cuda
@pytest.mark.parametrize("method", ["draft_model-other", "ngram"])
def test_chain_sampling_graphs_cuda(method):
    """The sampling variant's CUDA graphs (float32): replayed for mixed batches, greedy rows
    identical to no-spec, random rows inside the vocabulary, no block left allocated."""
    target = tiny_model("llama")
    prompts = repetitive_prompts(12, seed=13)
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    rand = SamplingParams(temperature=0.8, min_p=0.05, max_tokens=20, ignore_eos=True)
    sp = [greedy if i % 3 == 0 else rand for i in range(12)]
    ref = _ids(LLM(target, dtype="float32", gpu_memory_utilization=0.3).generate(
        prompts, sp, use_tqdm=False))
    llm = LLM(target, dtype="float32", gpu_memory_utilization=0.3,
              speculative_config=_cfg(method, target))
    eng = llm.llm_engine
    chain = eng.executor.driver_runner.chain
    got = _ids(llm.generate(prompts, sp, use_tqdm=False))
    assert [got[i] for i in range(0, 12, 3)] == [ref[i] for i in range(0, 12, 3)]
    assert all(0 <= t < 256 for ids in got for t in ids)
    assert chain.sample_graphs.num_replays > 0
    assert _all_blocks_free(eng)


@pytest.mark.parametrize("method", ["draft_model-other", "eagle"])
def test_drafter_eager_warm_up_writes_nothing(target, method):
    """The start-up warm-up of the drafter's eager path (catch-ups above every graph) leaves
    its KV cache untouched."""
    llm, eng, _ = _chained(target, method)
    drafter = eng.executor.driver_runner.proposer
    drafter.kv_cache.fill_(3.0)
    drafter.batch.graphs.sizes = [4]          # as if graphs up to 4 tokens were captured
    drafter._warm_up_eager(64)
    assert bool((drafter.kv_cache == 3.0).all())


@pytest.mark.parametrize("method", ["draft_model-other", "ngram"])
def test_kv_pressure_drains_the_chain_and_preempts_losslessly(target, baseline, method):
    """A KV cache too small for every window: the chained step cannot allocate, the chain
    drains, the normal path preempts (recompute) and chained steps resume later; output
    still equals no-spec output and no block stays allocated."""
    llm, eng, chain = _chained(target, method, num_gpu_blocks_override=14)
    launches = _record_launches(chain, len)
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert _ids(outs) == baseline
    assert eng.scheduler.num_preemptions > 0 and launches
    assert _all_blocks_free(eng)
