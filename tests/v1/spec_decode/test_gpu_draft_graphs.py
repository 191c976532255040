"""The drafters' own CUDA graphs (draft model, EAGLE): greedy output with graphed drafting equals
the no-spec output and the eagerly drafted output; the graphs are really replayed; with
VLLM_DRAFT_CUDA_GRAPHS=0 (or enforce_eager) they are not captured at all. cuda marker."""
import dataclasses
import random
import tempfile

import pytest
import torch

from models_util import tiny_model
from spec_util import save_random_eagle_head
from vllm import LLM, SamplingParams
from vllm.v1.spec_decode import draft_model, eagle

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _prompts(n, seed=3):
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(3, 256) for _ in range(rng.randint(2, 12))]
             * rng.randint(1, 3)} for _ in range(n)]


def _ids(outs):
    return [o.outputs[0].token_ids for o in outs]


def _proposer(llm):
    return llm.llm_engine.executor.driver_runner.proposer


@pytest.mark.parametrize("method", ["draft_model", "eagle"])
def test_graphed_drafting_lossless(method, monkeypatch):
    path = tiny_model("llama")
    cfg = ({"method": "draft_model", "model": path, "num_speculative_tokens": 4}
           if method == "draft_model" else
           {"method": "eagle", "model": save_random_eagle_head(path, tempfile.mkdtemp()),
            "num_speculative_tokens": 3})
    # 9 requests of different lengths: batches shrink as requests finish (several graph sizes,
    # padded rows); the first step's catch-up is a whole-prompt batch.
    prompts = _prompts(9)
    sp = [SamplingParams(temperature=0, max_tokens=8 + 3 * i, ignore_eos=True) for i in range(9)]
    base = _ids(LLM(path, dtype="float32", gpu_memory_utilization=0.3).generate(
        prompts, sp, use_tqdm=False))
    for graphs in ("1", "0"):
        monkeypatch.setenv("VLLM_DRAFT_CUDA_GRAPHS", graphs)
        for nwor in ("off", "stage"):
            llm = LLM(path, dtype="float32", nwor_mode=nwor, speculative_config=cfg,
                      gpu_memory_utilization=0.3)
            got = _ids(llm.generate(prompts, sp, use_tqdm=False))
            assert got == base, (graphs, nwor)
            g = _proposer(llm).batch.graphs
            if graphs == "1":
                assert g.graphs and g.num_replays > 0
            else:
                assert not g.graphs and g.num_replays == 0
            del llm
            torch.cuda.empty_cache()


def test_enforce_eager_captures_no_draft_graphs():
    path = tiny_model("llama")
    llm = LLM(path, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3,
              speculative_config={"method": "draft_model", "model": path,
                                  "num_speculative_tokens": 2})
    llm.generate(_prompts(2), SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)
    assert _proposer(llm).batch.graphs.num_replays == 0


@pytest.mark.parametrize("method,thr", [("draft_model", 0.025), ("eagle", 0.0095)])
def test_graphed_drafting_with_exit_and_caps_equals_eager(method, thr, monkeypatch):
    """Confidence exit and per-request caps (ProposeReq.max_drafts, cycling 0..k) with the
    drafter's graphs (masks applied in place to the persistent slot buffer, positions advanced
    on the device) draft call by call what eager drafting drafts, stop as many tokens, and
    stay lossless. Thresholds sit inside the tiny models' draft probabilities (some requests
    stop mid-window)."""
    path = tiny_model("llama")
    cfg = ({"method": "draft_model", "model": path, "num_speculative_tokens": 4}
           if method == "draft_model" else
           {"method": "eagle", "model": save_random_eagle_head(path, tempfile.mkdtemp()),
            "num_speculative_tokens": 3})
    cfg["confidence_threshold"] = thr
    cls = draft_model.DraftModelProposer if method == "draft_model" else eagle.EagleProposer
    inner = cls.propose
    caps = [None, 0, 1, 2, 3]
    drafts = []

    def propose(self, reqs):
        n = len(drafts)
        reqs = [dataclasses.replace(r, max_drafts=caps[(n + i) % len(caps)])
                for i, r in enumerate(reqs)]
        drafts.append(inner(self, reqs))
        return drafts[-1]
    monkeypatch.setattr(cls, "propose", propose)
    prompts = _prompts(9)
    sp = [SamplingParams(temperature=0, max_tokens=8 + 3 * i, ignore_eos=True) for i in range(9)]
    base = _ids(LLM(path, dtype="float32", gpu_memory_utilization=0.3).generate(
        prompts, sp, use_tqdm=False))
    seen, stopped = {}, {}
    for graphs in ("1", "0"):
        monkeypatch.setenv("VLLM_DRAFT_CUDA_GRAPHS", graphs)
        drafts.clear()
        llm = LLM(path, dtype="float32", speculative_config=cfg, gpu_memory_utilization=0.3)
        assert _ids(llm.generate(prompts, sp, use_tqdm=False)) == base, graphs
        assert (_proposer(llm).batch.graphs.num_replays > 0) == (graphs == "1")
        seen[graphs] = list(drafts)
        stopped[graphs] = llm.llm_engine.stats.spec.num_draft_tokens_stopped
        del llm
        torch.cuda.empty_cache()
    assert seen["1"] == seen["0"]
    assert stopped["1"] == stopped["0"] > 0
