"""Asynchronous scheduling (step n+1 scheduled while step n runs) gives exactly the output of
synchronous steps: greedy tokens, stop strings, EOS, max_tokens, n > 1, seeds, streaming,
preemption, prefix caching, chunked prefill; aborts free their blocks; nothing per step grows
without bound."""
import random

import pytest
import torch

from models_util import tiny_model
from vllm import LLM, SamplingParams

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _prompts(n, lo, hi, seed=0, vocab=256):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def _llm(async_on, device="cpu", **kw):
    kw.setdefault("block_size", 8)
    return LLM(tiny_model("llama"), device=device, async_scheduling=async_on,
               dtype="float32", **kw)


def _gen(llm, prompts, params):
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [[(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in o.outputs]
            for o in outs]


@pytest.mark.parametrize("device", DEVICES)
def test_async_equals_sync_mixed_finishes(device):
    """One batch whose requests finish on different steps, for different reasons."""
    prompts = _prompts(12, 1, 50, seed=4)
    free = _gen(_llm(False, device), prompts,
                SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))
    params = []
    for i in range(12):
        # Stops taken from the unconstrained output, so they really fire, on different steps.
        toks = free[i][0][0]
        k = 1 + i % 9
        params.append(SamplingParams(
            temperature=0.0, max_tokens=random.Random(i).randint(1, 30),
            min_tokens=i % 3, ignore_eos=(i % 2 == 0),
            stop_token_ids=[toks[k]] if i % 3 == 1 else None,
            stop=[f"w{toks[k] - 3}"] if i % 3 == 2 else None))
    sync = _gen(_llm(False, device), prompts, params)
    asy_llm = _llm(True, device)
    assert asy_llm.llm_engine.async_scheduling
    asy = _gen(asy_llm, prompts, params)
    assert asy == sync
    reasons = {c[2] for o in sync for c in o}
    assert reasons == {"stop", "length"}, reasons   # the batch really mixes both kinds
    sched = asy_llm.llm_engine.scheduler
    assert not sched.running and not sched.waiting
    assert sched.kv.pool.num_free == sched.kv.pool.num_blocks


def test_async_preemption_chunked_prefill_prefix_cache():
    prompts = _prompts(40, 2, 60, seed=3)
    prompts.append(prompts[0][:40] + [7, 8])           # shares blocks with prompt 0
    params = [SamplingParams(temperature=0.0, max_tokens=random.Random(i).randint(4, 40),
                             ignore_eos=True) for i in range(len(prompts))]
    kw = dict(block_size=4, num_gpu_blocks_override=48, max_num_batched_tokens=64,
              max_num_seqs=32)
    sync_llm, asy_llm = _llm(False, **kw), _llm(True, **kw)
    sync, asy = _gen(sync_llm, prompts, params), _gen(asy_llm, prompts, params)
    assert asy == sync
    assert asy_llm.llm_engine.scheduler.num_preemptions > 0   # preemption really happened
    again = asy_llm.generate([{"prompt_token_ids": prompts[-1]}], params[-1], use_tqdm=False)
    assert again[0].num_cached_tokens > 0
    assert [c.token_ids for c in again[0].outputs] == [sync[-1][0][0]]


def test_async_n_seeds_penalties_logprobs():
    prompts = _prompts(6, 3, 20, seed=5)
    params = [SamplingParams(temperature=0.8, n=3, seed=11 + i, max_tokens=16)
              for i in range(3)]
    params += [SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.3),
               SamplingParams(temperature=0.0, max_tokens=12, logprobs=2),
               SamplingParams(temperature=0.7, top_k=20, top_p=0.9, seed=3, max_tokens=12)]
    sync_llm, asy_llm = _llm(False), _llm(True)
    s_out = sync_llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                              use_tqdm=False)
    a_out = asy_llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                             use_tqdm=False)
    for s, a in zip(s_out, a_out):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in s.outputs]
        for cs, ca in zip(s.outputs, a.outputs):
            if cs.logprobs is not None:
                assert len(ca.logprobs) == len(cs.logprobs)
                for ds, da in zip(cs.logprobs, ca.logprobs):
                    assert ds.keys() == da.keys()
                    for k in ds:
                        assert da[k] == pytest.approx(ds[k], abs=1e-5)


def test_async_streaming_text_and_abort_frees_blocks():
    tok_prompts = _prompts(4, 4, 12, seed=6)
    llm_s, llm_a = _llm(False), _llm(True)
    params = SamplingParams(temperature=0.0, max_tokens=20, stop=["w9"])

    def stream(llm):
        eng = llm.llm_engine
        for i, p in enumerate(tok_prompts):
            eng.add_request(f"r{i}", {"prompt_token_ids": p}, params)
        eng.add_request("victim", {"prompt_token_ids": tok_prompts[0]},
                        SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True))
        texts: dict[str, list[str]] = {}
        steps = 0
        while eng.has_unfinished_requests():
            for o in eng.step(stream=True):
                texts.setdefault(o.request_id, []).append(o.outputs[0].text)
            steps += 1
            if steps == 6:
                eng.abort_request("victim")
        texts.pop("victim", None)
        # Drive the last launched step to completion, then every block is back.
        eng.step()
        pool = eng.scheduler.kv.pool
        assert pool.num_free == pool.num_blocks
        return texts

    s, a = stream(llm_s), stream(llm_a)
    assert {k: v[-1] for k, v in a.items()} == {k: v[-1] for k, v in s.items()}
    for k in a:   # the streamed text only ever grows, and ends where the sync path ends
        assert all(a[k][j].startswith(a[k][j - 1]) for j in range(1, len(a[k])))


def test_async_requires_no_extra_tokens_beyond_max_tokens():
    """max_tokens is known on the host: no step is launched for a request whose in-flight token
    is its last one."""
    llm = _llm(True)
    eng = llm.llm_engine
    eng.add_request("a", {"prompt_token_ids": [5, 6, 7]},
                    SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    launched = 0
    orig = eng.executor.execute_model_async

    def counting(so):
        nonlocal launched
        launched += sum(1 for r in so.reqs if r.req_id == "a")
        return orig(so)

    eng.executor.execute_model_async = counting
    out = None
    while eng.has_unfinished_requests():
        for o in eng.step():
            out = o
    assert len(out.outputs[0].token_ids) == 5
    assert launched == 5


def test_per_step_state_stays_bounded():
    """Thousands of steps: no list or dict of the engine, scheduler, runner or stats grows with
    the number of steps."""
    llm = _llm(True, max_num_seqs=8, num_gpu_blocks_override=96)
    eng = llm.llm_engine

    def sizes():
        objs = {"engine": eng, "scheduler": eng.scheduler, "runner": eng.executor.driver_runner,
                "stats": eng.stats, "kv": eng.scheduler.kv, "pool": eng.scheduler.kv.pool}
        out = {}
        for name, obj in objs.items():
            for attr, v in vars(obj).items():
                if isinstance(v, (str, bytes, torch.Tensor)):
                    continue
                try:
                    out[f"{name}.{attr}"] = len(v)
                except TypeError:
                    pass
        return out

    params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)

    def run(batches):
        for b in batches:
            llm.generate([{"prompt_token_ids": p} for p in _prompts(8, 2, 6, seed=b)], params,
                         use_tqdm=False)

    run(range(1))          # 100 steps: every bounded buffer is full by now
    first = sizes()
    steps_first = eng.stats.num_steps
    run(range(1, 21))
    second = sizes()
    assert eng.stats.num_steps - steps_first >= 2000
    # Anything larger now than after the warm-up (beyond the pool's 96 blocks) grows per step.
    grown = {k: (first.get(k), v) for k, v in second.items() if v > max(first.get(k, 0), 96)}
    assert not grown, grown


@pytest.mark.cuda
@pytest.mark.parametrize("enforce_eager", [False, True])
def test_async_steady_state_makes_no_synchronizing_cuda_call(enforce_eager):
    """In the steady state of asynchronous decoding the host never blocks on the GPU: any
    synchronizing CUDA call (a .tolist() of a device tensor, a blocking copy) raises."""
    llm = _llm(True, "cuda", enforce_eager=enforce_eager, max_num_seqs=32)
    eng = llm.llm_engine
    prompts = _prompts(24, 4, 30, seed=8)
    for i, p in enumerate(prompts):
        sp = (SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True) if i % 2 else
              SamplingParams(temperature=0.9, top_k=30, top_p=0.9, seed=i, max_tokens=40,
                             ignore_eos=True))
        eng.add_request(str(i), {"prompt_token_ids": p}, sp)
    for _ in range(4):           # prefill, then decode steps with every pinned buffer warm
        eng.step()
    done = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(30):
            done += eng.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    while eng.has_unfinished_requests():
        done += eng.step()
    assert len(done) == 24 and all(len(o.outputs[0].token_ids) == 40 for o in done)


def test_speculative_engines_fall_back_to_synchronous_steps(monkeypatch):
    """With a proposer whose steps cannot be chained (here: chaining switched off), async
    scheduling is refused (the engine logs why, once) and the output is the synchronous one,
    which equals no-spec greedy output. (Chained steps: tests/v1/spec_decode/test_chain.py.)"""
    monkeypatch.setenv("VLLM_SPEC_CHAIN", "0")
    prompts = _prompts(4, 8, 20, seed=9)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    ref = _gen(_llm(False), prompts, params)
    spec = {"method": "ngram", "num_speculative_tokens": 3}
    llm = _llm(True, speculative_config=spec)
    assert not llm.llm_engine.async_scheduling
    assert _gen(llm, prompts, params) == ref
