import pytest

from vllm.sampling_params import SamplingParams, SamplingType


def test_defaults_match_upstream():
    p = SamplingParams()
    assert (p.n, p.best_of, p.temperature, p.top_p, p.top_k, p.min_p) == (1, None, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.max_tokens, p.min_tokens, p.logprobs, p.prompt_logprobs) == (16, 0, None, None)
    assert p.stop == [] and p.stop_token_ids == [] and p.seed is None
    assert p.skip_special_tokens and p.detokenize
    assert not p.ignore_eos and not p.include_stop_str_in_output
    assert p.sampling_type == SamplingType.RANDOM and not p.is_greedy


@pytest.mark.parametrize("field,value", [
    ("n", 0), ("n", 1.5), ("n", True), ("n", "2"),
    ("best_of", 0), ("best_of", 2.0),
    ("presence_penalty", 2.5), ("presence_penalty", -2.1), ("presence_penalty", "x"),
    ("frequency_penalty", 3.0), ("frequency_penalty", -3.0), ("frequency_penalty", None),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", 1.1), ("top_p", float("inf")),
    ("top_k", -2), ("top_k", 1.5), ("top_k", None),
    ("min_p", -0.1), ("min_p", 1.5),
    ("seed", 1.5), ("seed", "7"), ("seed", 1 << 70),
    ("stop", 3), ("stop", ["ok", 3]), ("stop", [""]),
    ("stop_token_ids", 3), ("stop_token_ids", [1, -2]), ("stop_token_ids", ["a"]),
    ("ignore_eos", 1), ("ignore_eos", "yes"),
    ("max_tokens", 0), ("max_tokens", 2.0),
    ("min_tokens", -1), ("min_tokens", 100), ("min_tokens", 0.5),
    ("logprobs", -1), ("logprobs", 1.0),
    ("prompt_logprobs", -1), ("prompt_logprobs", "1"),
    ("skip_special_tokens", None), ("include_stop_str_in_output", 0), ("detokenize", "no"),
])
def test_invalid_field_raises_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_best_of_must_cover_n():
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=3, best_of=2)
    assert SamplingParams(n=2, best_of=3).best_of == 3


def test_min_tokens_vs_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    assert SamplingParams(max_tokens=None, min_tokens=50).min_tokens == 50
    assert SamplingParams(max_tokens=5, min_tokens=5).min_tokens == 5


def test_normalization():
    p = SamplingParams(top_k=-1, stop="###", stop_token_ids=(3, 4), temperature=1)
    assert p.top_k == 0 and p.stop == ["###"] and p.stop_token_ids == [3, 4]
    assert isinstance(p.temperature, float)
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]


def test_greedy_and_sampling_type():
    g = SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.2)
    assert g.is_greedy and g.sampling_type == SamplingType.GREEDY
    # Filters are reset for greedy requests so the sampler can skip them.
    assert (g.top_k, g.top_p, g.min_p) == (0, 1.0, 0.0)
    assert SamplingParams(temperature=1e-6).is_greedy
    assert not SamplingParams(temperature=1e-4).is_greedy
    assert SamplingParams(seed=3).sampling_type == SamplingType.RANDOM_SEED
    assert SamplingParams(temperature=0, seed=3).sampling_type == SamplingType.GREEDY


def test_edges_accepted():
    SamplingParams(presence_penalty=-2, frequency_penalty=2, repetition_penalty=0.01, top_p=1,
                   min_p=1, top_k=1, logprobs=0, prompt_logprobs=0, seed=-5, max_tokens=1)


def test_clone_is_deep():
    p = SamplingParams(stop=["a"], stop_token_ids=[1], seed=4)
    c = p.clone()
    assert c == p and c is not p
    c.stop.append("b")
    c.stop_token_ids.append(2)
    assert p.stop == ["a"] and p.stop_token_ids == [1]
