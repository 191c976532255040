"""Fault isolation and liveness in the engine: a failure that belongs to one request fails
that request alone; requests that can never be scheduled fail with a clear error instead of
spinning; aborting thousands of waiting requests is not quadratic. Real engine, tiny model."""
from __future__ import annotations

import asyncio
import time

import pytest

from models_util import tiny_model
from vllm import LLM, SamplingParams
from vllm.entrypoints.openai.async_engine import AsyncEngine, RequestFailedError

PROMPTS = {"a": [5, 6, 7, 8], "b": [9, 10, 11], "c": [12, 13, 14, 15, 16]}


def _params(max_tokens=16):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def _inject_fault(params: SamplingParams, kind: str = "stop_ids") -> None:
    """Corrupt a request's parameters after validation accepted them."""
    if kind == "stop_ids":
        # A stop token outside the vocabulary, which min_tokens masking indexes with (the
        # request {"min_tokens": 2, "stop_token_ids": [99999]} of the issue).
        params.min_tokens = 10 ** 6
        params.stop_token_ids = [99999]
    else:
        # Something no static check knows about: the sampling metadata cannot be built.
        params.temperature = 1.0
        params.top_p = "half"


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def llm(request):
    # async: the failing step may be launched while the previous one's tokens are unapplied.
    return LLM(tiny_model("llama"), enforce_eager=True, block_size=8,
               async_scheduling=request.param)


def _reference(llm):
    outs = llm.generate([{"prompt_token_ids": PROMPTS[k]} for k in "ac"], _params(),
                        use_tqdm=False)
    return {k: o.outputs[0].token_ids for k, o in zip("ac", outs)}


@pytest.mark.parametrize("kind,why", [("stop_ids", "stop_token_ids"), ("type", "Error")])
def test_faulty_request_fails_alone_in_the_engine(llm, kind, why):
    ref = _reference(llm)
    eng = llm.llm_engine
    params = {k: _params(64 if k == "b" else 16) for k in PROMPTS}
    for k, p in PROMPTS.items():
        eng.add_request(k, p, params[k])
    for _ in range(3):
        eng.step()
    _inject_fault(params["b"], kind)
    with pytest.raises(Exception) as ei:
        eng.step()          # the whole step fails...
    failed = eng.fail_step_requests(ei.value)
    assert list(failed) == ["b"] and why in failed["b"], failed
    done = {}
    while eng.has_unfinished_requests():  # ...but a and c go on, and end as without b
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    assert done == ref
    pool = eng.scheduler.kv.pool
    assert pool.num_free == pool.num_blocks


def test_faulty_request_fails_alone_through_the_async_engine(llm):
    ref = _reference(llm)
    eng = llm.llm_engine

    async def main():
        aeng = AsyncEngine(eng)
        aeng.start(asyncio.get_running_loop())
        try:
            params = {k: _params(200 if k == "b" else 16) for k in PROMPTS}
            streams = {k: aeng.add_requests([(f"x{k}", {"prompt_token_ids": p}, params[k])])
                       for k, p in PROMPTS.items()}
            for s in streams.values():
                await s.wait_added()
            _inject_fault(params["b"])

            async def drain(s):
                last = None
                while not s.finished:
                    last = await s.next_output()
                return last.outputs[0].token_ids
            res = await asyncio.gather(*(drain(streams[k]) for k in "abc"),
                                       return_exceptions=True)
            return dict(zip("abc", res))
        finally:
            await asyncio.get_running_loop().run_in_executor(None, aeng.shutdown)

    res = asyncio.run(asyncio.wait_for(main(), 120))
    assert isinstance(res["b"], RequestFailedError), res["b"]
    assert "request xb failed in the engine" in str(res["b"]), res["b"]
    assert {"a": res["a"], "c": res["c"]} == ref


def test_offline_generate_names_the_failed_request(llm):
    eng = llm.llm_engine
    bad = _params(64)
    eng.add_request("bad", [3, 4, 5], bad)
    eng.step()
    _inject_fault(bad)
    with pytest.raises(RuntimeError, match="request bad failed: ValueError: stop_token_ids"):
        llm.generate([{"prompt_token_ids": [6, 7]}], _params(), use_tqdm=False)
    assert not eng.has_unfinished_requests()
    assert llm.generate([{"prompt_token_ids": [6, 7]}], _params(4),
                        use_tqdm=False)[0].outputs[0].finish_reason == "length"


def test_request_too_large_for_the_pool_fails_instead_of_spinning():
    # 4 blocks x 4 tokens: a 40-token prompt can never be admitted.
    small = LLM(tiny_model("llama"), enforce_eager=True, block_size=4,
                num_gpu_blocks_override=4)
    with pytest.raises(RuntimeError, match="can never be scheduled"):
        small.generate([{"prompt_token_ids": list(range(3, 43))}], _params(4), use_tqdm=False)
    # The engine is clean and serves requests that fit.
    out = small.generate([{"prompt_token_ids": [3, 4, 5]}], _params(4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_leaked_blocks_fail_waiting_requests_instead_of_spinning():
    small = LLM(tiny_model("llama"), enforce_eager=True, block_size=4,
                num_gpu_blocks_override=12, max_num_seqs=2)
    kv = small.llm_engine.scheduler.kv
    kv.free = lambda req: None      # the fault: finished requests never give blocks back
    prompts = [{"prompt_token_ids": [3 + i, 4, 5, 6, 7, 8]} for i in range(6)]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="can never be scheduled"):
        small.generate(prompts, _params(8), use_tqdm=False)
    assert time.monotonic() - t0 < 60


def test_aborting_many_waiting_requests_is_not_quadratic(llm):
    eng = llm.llm_engine
    sp = SamplingParams(n=128, temperature=1.0, max_tokens=4)
    for i in range(100):
        eng.add_request(f"many-{i}", [3, 4, 5], sp)
    assert len(eng.scheduler.waiting) == 12800
    t0 = time.monotonic()
    eng.abort_request([f"many-{i}" for i in range(100)])
    elapsed = time.monotonic() - t0
    assert not eng.scheduler.waiting and not eng.has_unfinished_requests()
    assert elapsed < 2.0, elapsed


@pytest.mark.parametrize("kwargs,field", [
    (dict(top_k=2 ** 63), "top_k"), (dict(top_k=300), "top_k"),
    (dict(n=2, seed=2 ** 64 - 1), "seed"),
    (dict(min_tokens=2, stop_token_ids=[99999]), "stop_token_ids"),
    (dict(repetition_penalty=1e-40), "repetition_penalty")])
def test_crashing_params_never_reach_the_step(llm, kwargs, field):
    """The issue's three step-crashing requests (and the NaN penalty) are refused up front,
    by SamplingParams or by add_request (vocabulary-dependent bounds), naming the field."""
    with pytest.raises(ValueError, match=field):
        llm.generate([{"prompt_token_ids": [3, 4]}],
                     SamplingParams(temperature=1.0, max_tokens=4, **kwargs), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
