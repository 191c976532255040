"""The engine on the GPU: Triton kernels, CUDA graphs, NWOR / SCV modes (cuda marker)."""
import random

import pytest
import torch

from models_util import hf_greedy, tiny_model
from vllm import LLM, SamplingParams

pytestmark = pytest.mark.cuda


def _prompts(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        base = [rng.randrange(3, 256) for _ in range(rng.randint(2, 12))]
        out.append(base * rng.randint(1, 3))
    return out


def _ids(outs):
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("eager", [True, False])
def test_gpu_greedy_matches_transformers(eager):
    path = tiny_model("llama")
    prompts = _prompts(5)
    ref = hf_greedy(path, prompts, 24)
    llm = LLM(path, dtype="float32", enforce_eager=eager, gpu_memory_utilization=0.3)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
                        use_tqdm=False)
    assert _ids(outs) == ref
    runner = llm.llm_engine.executor.driver_runner
    assert runner.graphs.num_replays > 0 if not eager else runner.graphs.num_replays == 0


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_gpu_spec_lossless_all_modes(method):
    path = tiny_model("llama")
    prompts = [{"prompt_token_ids": p} for p in _prompts(8, seed=1)]
    sp = [SamplingParams(temperature=0, max_tokens=10 + 4 * i, ignore_eos=True) for i in range(8)]
    base = _ids(LLM(path, dtype="float32", gpu_memory_utilization=0.3).generate(
        prompts, sp, use_tqdm=False))
    cfg = ({"method": "ngram", "num_speculative_tokens": 3} if method == "ngram" else
           {"method": "draft_model", "model": path, "num_speculative_tokens": 4})
    for eager in (True, False):
        for nwor in ("off", "stage"):
            for scv in ("off", "vectorized", "graph", "adaptive"):
                llm = LLM(path, dtype="float32", enforce_eager=eager, nwor_mode=nwor,
                          scv_mode=scv, speculative_config=cfg, gpu_memory_utilization=0.3)
                got = _ids(llm.generate(prompts, sp, use_tqdm=False))
                assert got == base, (eager, nwor, scv)
                m = llm.get_metrics_dict()
                if nwor == "stage":
                    assert m["vllm:nwor_tokens_staged"] == m["vllm:spec_decode_num_draft_tokens"]
                    assert m["vllm:nwor_tokens_committed"] == \
                        m["vllm:spec_decode_num_accepted_tokens"]
                del llm
                torch.cuda.empty_cache()


def test_gpu_bf16_smoke_and_seeded_sampling():
    path = tiny_model("llama")
    llm = LLM(path, dtype="bfloat16", gpu_memory_utilization=0.3, nwor_mode="stage",
              speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    p = [{"prompt_token_ids": q} for q in _prompts(4, seed=2)]
    sp = SamplingParams(temperature=0.8, seed=7, max_tokens=20, ignore_eos=True)
    a = _ids(llm.generate(p, sp, use_tqdm=False))
    b = _ids(llm.generate(p, sp, use_tqdm=False))
    assert a == b and all(len(x) == 20 for x in a)
