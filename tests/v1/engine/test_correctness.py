"""Greedy tokens of our engine == transformers' generate (fp32, CPU), batching, preemption."""
import random

import pytest

from models_util import hf_greedy, tiny_model
from vllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _prompts(n, lo, hi, seed=0, vocab=256):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def _ids(outs):
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_matches_transformers(arch):
    path = tiny_model(arch)
    prompts = _prompts(4, 1, 40, seed=1)
    ref = hf_greedy(path, prompts, 24)
    llm = LLM(path, enforce_eager=True, block_size=8)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert _ids(outs) == ref


def test_chunked_prefill_and_prefix_cache_keep_tokens():
    path = tiny_model("llama")
    prompts = _prompts(3, 60, 90, seed=2)
    prompts.append(prompts[0][:50] + [7, 8, 9])   # shares full blocks with prompt 0
    ref = hf_greedy(path, prompts, 24)
    llm = LLM(path, enforce_eager=True, block_size=8, max_num_batched_tokens=32,
              max_num_seqs=4)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert _ids(outs) == ref
    # run the shared-prefix prompt again: its first blocks come from the prefix cache
    again = llm.generate([{"prompt_token_ids": prompts[3]}], GREEDY, use_tqdm=False)
    assert again[0].num_cached_tokens >= 48
    assert _ids(again) == [ref[3]]


def test_continuous_batching_with_preemption():
    path = tiny_model("llama")
    prompts = _prompts(50, 2, 60, seed=3)
    params = [SamplingParams(temperature=0.0, max_tokens=random.Random(i).randint(4, 40),
                             ignore_eos=True) for i in range(50)]
    single = LLM(path, enforce_eager=True, block_size=4)
    one_by_one = [single.generate([{"prompt_token_ids": p}], sp, use_tqdm=False)[0]
                  for p, sp in zip(prompts, params)]
    # 40 blocks x 4 tokens: far too small for 50 requests at once -> preemption by recompute
    small = LLM(path, enforce_eager=True, block_size=4, num_gpu_blocks_override=40,
                max_num_batched_tokens=64, max_num_seqs=32)
    batched = small.generate([{"prompt_token_ids": p} for p in prompts], params,
                             use_tqdm=False)
    assert _ids(batched) == _ids(one_by_one)
    m = small.get_metrics_dict()
    assert m["vllm:num_preemptions"] > 0
    pool = small.llm_engine.scheduler.kv.pool
    assert pool.num_free == pool.num_blocks   # every block returned


def test_seeded_sampling_reproducible():
    path = tiny_model("llama")
    llm = LLM(path, enforce_eager=True)
    p = [{"prompt_token_ids": [5, 6, 7, 8]}] * 2
    a = llm.generate(p, SamplingParams(temperature=1.0, seed=11, max_tokens=30, ignore_eos=True),
                     use_tqdm=False)
    b = llm.generate(p, SamplingParams(temperature=1.0, seed=11, max_tokens=30, ignore_eos=True),
                     use_tqdm=False)
    c = llm.generate(p, SamplingParams(temperature=1.0, seed=12, max_tokens=30, ignore_eos=True),
                     use_tqdm=False)
    assert _ids(a) == _ids(b)
    assert _ids(a)[0] == _ids(a)[1]        # same seed, same prompt, batched together
    assert _ids(a) != _ids(c)


def test_stop_conditions_and_text():
    path = tiny_model("llama")
    llm = LLM(path, enforce_eager=True)
    prompt = {"prompt_token_ids": [5, 6, 7, 8]}
    full = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 20
    stop_tok = full.token_ids[5]
    first = full.token_ids.index(stop_tok)
    o = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                            stop_token_ids=[stop_tok]), use_tqdm=False)[0]
    assert o.outputs[0].token_ids == full.token_ids[:first + 1]
    assert o.outputs[0].finish_reason == "stop" and o.outputs[0].stop_reason == stop_tok
    words = full.text.split()
    stop_str = words[6]
    o = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                            stop=[stop_str]), use_tqdm=False)[0].outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop_str
    assert stop_str not in o.text and full.text.startswith(o.text)


def test_logprobs_and_n():
    path = tiny_model("llama")
    llm = LLM(path, enforce_eager=True)
    o = llm.generate({"prompt_token_ids": [9, 10, 11]},
                     SamplingParams(temperature=0, max_tokens=5, logprobs=3, n=2),
                     use_tqdm=False)[0]
    assert len(o.outputs) == 2
    c = o.outputs[0]
    assert len(c.logprobs) == 5
    for tok, lp in zip(c.token_ids, c.logprobs):
        assert tok in lp and len(lp) >= 3
        assert lp[tok] == pytest.approx(max(lp.values()))   # greedy picks the top token
    assert c.cumulative_logprob == pytest.approx(sum(lp[t] for t, lp in
                                                     zip(c.token_ids, c.logprobs)))


def test_tensor_parallel_2_matches_tp1():
    path = tiny_model("llama")
    prompts = [{"prompt_token_ids": p} for p in _prompts(3, 3, 20, seed=4)]
    tp1 = LLM(path, enforce_eager=True).generate(prompts, GREEDY, use_tqdm=False)
    llm2 = LLM(path, enforce_eager=True, tensor_parallel_size=2)
    try:
        tp2 = llm2.generate(prompts, GREEDY, use_tqdm=False)
    finally:
        llm2.shutdown()
    assert _ids(tp1) == _ids(tp2)
