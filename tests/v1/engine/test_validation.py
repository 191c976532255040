"""Bad arguments raise ValueError naming the field; a bad prompt does not break the engine."""
import pytest

from models_util import tiny_model
from vllm import LLM, SamplingParams


@pytest.mark.parametrize("kwargs,field", [
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"block_size": 0}, "block_size"),
    ({"tensor_parallel_size": 3}, "tensor_parallel_size"),
    ({"max_model_len": 100000}, "max_model_len"),
    ({"dtype": "int3"}, "dtype"),
    ({"load_format": "pickle"}, "load_format"),
    ({"speculative_config": {"method": "nope", "num_speculative_tokens": 2}}, "method"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 0}},
     "num_speculative_tokens"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "foo": 1}},
     "unknown keys"),
    ({"speculative_config": {"method": "draft_model", "num_speculative_tokens": 2}}, "model"),
    # no EAGLE head ships for this target
    ({"speculative_config": {"method": "eagle", "num_speculative_tokens": 2}},
     r"speculative_config\.model is required for method 'eagle'"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2,
                             "confidence_threshold": 0.5}}, "'draft_model', 'eagle'"),
    ({"speculative_config": {"method": "draft_model", "model": "x", "num_speculative_tokens": 2,
                             "confidence_threshold": 1.5}}, "confidence_threshold"),
    ({"nwor_mode": "sometimes"}, "nwor_mode"),
    ({"scv_mode": "fast"}, "scv_mode"),
    ({"bogus_arg": 1}, "bogus_arg"),
])
def test_bad_llm_args(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LLM(tiny_model("llama"), enforce_eager=True, **kwargs)


def test_bad_model_path():
    with pytest.raises(ValueError, match="model"):
        LLM("/nonexistent/model/folder")


def test_bad_env_var(monkeypatch):
    monkeypatch.setenv("VLLM_NWOR_MODE", "maybe")
    with pytest.raises(ValueError, match="VLLM_NWOR_MODE"):
        LLM(tiny_model("llama"), enforce_eager=True)


def test_long_prompt_rejected_engine_keeps_serving():
    llm = LLM(tiny_model("llama"), enforce_eager=True, max_model_len=64)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([{"prompt_token_ids": [5] * 10}, {"prompt_token_ids": [5] * 65}],
                     SamplingParams(max_tokens=4), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    out = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=4,
                                                                       ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_max_model_len_stops_generation():
    llm = LLM(tiny_model("llama"), enforce_eager=True, max_model_len=20)
    out = llm.generate({"prompt_token_ids": [5] * 15}, SamplingParams(max_tokens=50,
                                                                      ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_confidence_threshold_one_drafts_nothing_and_equals_no_spec():
    """A threshold of 1.0 stops every draft (no draft reaches probability 1 on a random model),
    so the engine verifies nothing and the output equals no speculation; 0 drafts all k."""
    path = tiny_model("llama")
    prompts = [{"prompt_token_ids": [5 + i, 9, 11, 7 + i, 3]} for i in range(3)]
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    ref = [o.outputs[0].token_ids for o in
           LLM(path, enforce_eager=True, block_size=8).generate(prompts, sp, use_tqdm=False)]
    for thr, drafts in ((1.0, "none"), (0.0, "all")):
        llm = LLM(path, enforce_eager=True, block_size=8, speculative_config={
            "method": "draft_model", "model": path, "num_speculative_tokens": 3,
            "confidence_threshold": thr})
        out = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
        assert out == ref
        n = llm.get_metrics_dict().get("vllm:spec_decode_num_draft_tokens", 0)
        assert (n == 0) if drafts == "none" else (n > 0), (thr, n)
