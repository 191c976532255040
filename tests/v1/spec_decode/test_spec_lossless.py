"""Speculative decoding is lossless: greedy tokens with any proposer and any NWOR / SCV mode
equal greedy tokens without speculation; metrics agree with the outputs."""
import tempfile

import pytest

from spec_util import repetitive_prompts, save_random_eagle_head, staggered_greedy_params
from vllm import LLM, SamplingParams


def _spec_cfgs(target):
    eagle_dir = save_random_eagle_head(target, tempfile.mkdtemp(prefix="eagle-"))
    return {
        "ngram": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3},
        "draft_model": {"method": "draft_model", "model": target, "num_speculative_tokens": 4},
        "eagle": {"method": "eagle", "model": eagle_dir, "num_speculative_tokens": 2},
    }


@pytest.mark.parametrize("method", ["ngram", "draft_model", "eagle"])
@pytest.mark.parametrize("nwor", ["off", "stage"])
def test_greedy_identical(target, baseline, method, nwor):
    cfg = _spec_cfgs(target)[method]
    llm = LLM(target, enforce_eager=True, speculative_config=cfg, nwor_mode=nwor,
              block_size=8)
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    m = llm.get_metrics_dict()
    assert m["vllm:spec_decode_num_drafts"] > 0
    accepted = m["vllm:spec_decode_num_accepted_tokens"]
    if method == "draft_model":    # the target as its own draft accepts everything
        assert accepted == m["vllm:spec_decode_num_draft_tokens"]
    per_pos = [v for k, v in m.items() if "per_pos" in k]
    assert sum(per_pos) == accepted
    if nwor == "stage":
        assert m["vllm:nwor_tokens_staged"] == m["vllm:spec_decode_num_draft_tokens"]
        assert m["vllm:nwor_tokens_committed"] == accepted
    else:
        assert m["vllm:nwor_tokens_staged"] == 0


@pytest.mark.parametrize("scv", ["off", "vectorized", "graph", "adaptive"])
def test_scv_modes_identical(target, baseline, scv):
    llm = LLM(target, enforce_eager=True, nwor_mode="stage", scv_mode=scv,
              speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    counts = {k: v for k, v in llm.get_metrics_dict().items() if "scv_mask_steps" in k}
    assert sum(counts.values()) > 0


def test_stop_and_eos_inside_window(target):
    """Stop tokens / strings hit in the middle of accepted drafts end the request there."""
    llm0 = LLM(target, enforce_eager=True)
    p = repetitive_prompts(1, seed=5)[0]
    full = llm0.generate(p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                         use_tqdm=False)[0].outputs[0]
    stop_tok = full.token_ids[17]
    cut = full.token_ids.index(stop_tok)
    word = full.text.split()[12]
    spec = LLM(target, enforce_eager=True, nwor_mode="stage",
               speculative_config={"method": "draft_model", "model": target,
                                   "num_speculative_tokens": 5})
    a = spec.generate(p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                        stop_token_ids=[stop_tok]), use_tqdm=False)[0].outputs[0]
    assert a.token_ids == full.token_ids[:cut + 1] and a.finish_reason == "stop"
    b = spec.generate(p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                        stop=[word]), use_tqdm=False)[0].outputs[0]
    assert b.finish_reason == "stop" and full.text.startswith(b.text) and word not in b.text
    c = spec.generate(p, SamplingParams(temperature=0, max_tokens=23, ignore_eos=True),
                      use_tqdm=False)[0].outputs[0]
    assert c.token_ids == full.token_ids[:23] and c.finish_reason == "length"


def test_seeded_sampling_identical_nwor_off_vs_stage(target):
    ps = repetitive_prompts(4, seed=9)
    sp = SamplingParams(temperature=0.8, top_p=0.9, seed=123, max_tokens=30, ignore_eos=True)
    res = []
    for nwor in ("off", "stage"):
        llm = LLM(target, enforce_eager=True, nwor_mode=nwor,
                  speculative_config={"method": "ngram", "num_speculative_tokens": 3})
        res.append([o.outputs[0].token_ids for o in llm.generate(ps, sp, use_tqdm=False)])
    assert res[0] == res[1]


def test_spec_with_preemption_and_chunked_prefill(target, baseline):
    llm = LLM(target, enforce_eager=True, block_size=4, num_gpu_blocks_override=24,
              max_num_batched_tokens=16, max_num_seqs=6, nwor_mode="stage",
              speculative_config={"method": "draft_model", "model": target,
                                  "num_speculative_tokens": 3})
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    assert llm.get_metrics_dict()["vllm:num_preemptions"] > 0
    pool = llm.llm_engine.scheduler.kv.pool
    assert pool.num_free == pool.num_blocks
