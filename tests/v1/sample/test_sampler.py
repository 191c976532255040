import pytest
import torch

from vllm.sampling_params import SamplingParams
from vllm.v1.sample.metadata import SamplingMetadata, make_generator
from vllm.v1.sample.sampler import (Sampler, apply_penalties, apply_temperature,
                                    apply_top_k_top_p_min_p, compute_probs)

V = 37  # not a power of two


def build(params, generators=None, prompt=None, output=None):
    return SamplingMetadata.build(params, generators, prompt, output, "cpu")


def test_greedy_equals_argmax_exactly():
    logits = torch.randn(9, V) * 3
    md = build([SamplingParams(temperature=0.0)] * 9)
    assert md.all_greedy
    out = Sampler()(logits, md)
    assert torch.equal(out.sampled_token_ids, logits.argmax(-1))
    assert out.sampled_token_ids.dtype == torch.int64
    assert out.logprobs is None and out.logprobs_token_ids is None


def test_mixed_batch_greedy_rows_are_argmax():
    logits = torch.randn(8, V)
    params = [SamplingParams(temperature=0.0 if i % 2 == 0 else 1.5, top_k=5 if i % 3 else 0)
              for i in range(8)]
    md = build(params)
    assert not md.all_greedy and not md.all_random
    for _ in range(5):
        out = Sampler()(logits, md).sampled_token_ids
        assert torch.equal(out[0::2], logits[0::2].argmax(-1))


def _naive_filter(row: torch.Tensor, k: int, p: float, min_p: float) -> torch.Tensor:
    """Per-row reference: min_p on the full distribution, then top-k, then top-p."""
    row = row.clone()
    probs = row.softmax(-1)
    row[probs < min_p * probs.max()] = float("-inf")
    order = row.argsort(descending=True).tolist()
    if k > 0:
        for j in order[k:]:
            row[j] = float("-inf")
    if p < 1.0:
        probs = row.softmax(-1)
        mass = 0.0
        for j in order:
            if mass >= p:
                row[j] = float("-inf")
            mass += probs[j].item()
    return row


@pytest.mark.parametrize("k,p,min_p", [(0, 1.0, 0.0), (1, 1.0, 0.0), (5, 1.0, 0.0),
                                       (0, 0.3, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.2),
                                       (4, 0.6, 0.05), (100, 0.5, 0.0), (3, 1.0, 1.0)])
def test_filters_match_naive(k, p, min_p):
    logits = torch.randn(6, V) * 2
    n = logits.shape[0]
    got = apply_top_k_top_p_min_p(logits, torch.full((n,), k), torch.full((n,), p),
                                  torch.full((n,), min_p))
    for i in range(n):
        want = _naive_filter(logits[i], k, p, min_p)
        assert torch.equal(torch.isinf(got[i]), torch.isinf(want)), (i, got[i], want)
        kept = ~torch.isinf(want)
        assert torch.equal(got[i][kept], logits[i][kept])
    # None disables a filter entirely.
    assert torch.equal(apply_top_k_top_p_min_p(logits, None, None, None), logits)


def test_per_row_filters_and_sampled_tokens_stay_inside():
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(3)) * 2
    params = [SamplingParams(top_k=3), SamplingParams(top_p=0.4), SamplingParams(min_p=0.3),
              SamplingParams(top_k=1, temperature=2.0)]
    allowed = [set(_naive_filter(logits[i], params[i].top_k, params[i].top_p, params[i].min_p)
                   .isfinite().nonzero().flatten().tolist()) for i in range(4)]
    toks = Sampler()(logits.repeat(500, 1), build(params * 500)).sampled_token_ids.view(500, 4)
    seen = [set(toks[:, i].tolist()) for i in range(4)]
    for i in range(4):
        assert seen[i] <= allowed[i]
    assert toks[:, 3].eq(logits[3].argmax()).all()   # top_k=1 is argmax at any temperature
    assert len(seen[0]) == 3                           # all three top-k tokens show up


def _naive_penalties(logits, prompt, output, rep, freq, pres):
    out = logits.clone()
    for i in range(out.shape[0]):
        seen = set(prompt[i]) | set(output[i])
        for t in seen:
            out[i, t] = out[i, t] / rep[i] if out[i, t] > 0 else out[i, t] * rep[i]
        for t in set(output[i]):
            out[i, t] -= freq[i] * output[i].count(t) + pres[i]
    return out


def test_penalties_match_naive():
    g = torch.Generator().manual_seed(0)
    n = 5
    logits = torch.randn(n, V, generator=g) * 2
    prompt = [[1, 2, 2, 5], [], [7], [0, 36], [3, 3, 3]]
    output = [[2, 2, 9], [4], [], [36, 36, 36, 1], [3]]
    rep = [1.3, 0.7, 2.0, 1.0, 1.5]
    freq = [0.5, -0.3, 1.0, 0.2, 0.0]
    pres = [0.1, 0.0, -1.0, 1.5, 2.0]
    params = [SamplingParams(temperature=0.0, repetition_penalty=rep[i], frequency_penalty=freq[i],
                             presence_penalty=pres[i]) for i in range(n)]
    md = build(params, prompt=prompt, output=output)
    assert not md.no_penalties
    want = _naive_penalties(logits, prompt, output, rep, freq, pres)
    torch.testing.assert_close(apply_penalties(logits, md), want)
    # The sampler's greedy rows take the argmax of the penalized logits.
    assert torch.equal(Sampler()(logits, md).sampled_token_ids, want.argmax(-1))


def test_temperature_and_compute_probs():
    logits = torch.randn(3, V)
    temp = torch.tensor([0.5, 1.0, 0.0])
    scaled = apply_temperature(logits, temp)
    torch.testing.assert_close(scaled[0], logits[0] * 2)
    torch.testing.assert_close(scaled[2], logits[2])  # greedy rows: divided by 1, stay finite
    md = build([SamplingParams(temperature=0.5), SamplingParams(), SamplingParams(temperature=0)])
    probs = compute_probs(logits, md)
    torch.testing.assert_close(probs[0], (logits[0] * 2).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_sampling_distribution_matches_softmax():
    logits = torch.randn(1, 8) * 1.5
    n = 20000
    md = build([SamplingParams(temperature=0.7)] * n)
    toks = Sampler()(logits.expand(n, 8).contiguous(), md).sampled_token_ids
    freq = torch.bincount(toks, minlength=8).float() / n
    tv = 0.5 * (freq - (logits[0] / 0.7).softmax(-1)).abs().sum().item()
    assert tv < 0.02, tv


def test_seeded_rows_reproducible_regardless_of_batch():
    logits = torch.randn(6, 1000)
    sampler = Sampler()

    def run(seed_row_logits, others, seed):
        batch = torch.cat([others, seed_row_logits.unsqueeze(0)])
        params = [SamplingParams()] * others.shape[0] + [SamplingParams(seed=seed)]
        gens = {others.shape[0]: make_generator(seed, "cpu")}
        return sampler(batch, build(params, gens)).sampled_token_ids[-1].item()

    # Same seed, different neighbours and batch sizes: same token stream.
    a = [run(logits[0], logits[1:3], 1234) for _ in range(3)]
    b = [run(logits[0], torch.randn(4, 1000), 1234) for _ in range(3)]
    assert a == b
    # A generator advances: consecutive steps differ, but replays match.
    gen1, gen2 = make_generator(7, "cpu"), make_generator(7, "cpu")
    params = [SamplingParams(seed=7)]
    s1 = [sampler(logits[:1], build(params, {0: gen1})).sampled_token_ids.item()
          for _ in range(8)]
    s2 = [sampler(logits[:1], build(params, {0: gen2})).sampled_token_ids.item()
          for _ in range(8)]
    assert s1 == s2
    assert len(set(s1)) > 1


def test_different_seeds_differ():
    logits = torch.zeros(1, 1000)  # uniform: two seeds agreeing 8 times in a row ~ 1e-24
    params = [SamplingParams(seed=1)]
    g1, g2 = make_generator(1, "cpu"), make_generator(2, "cpu")
    s1 = [Sampler()(logits, build(params, {0: g1})).sampled_token_ids.item() for _ in range(8)]
    s2 = [Sampler()(logits, build(params, {0: g2})).sampled_token_ids.item() for _ in range(8)]
    assert s1 != s2


@pytest.mark.parametrize("num_logprobs", [0, 3])
def test_logprobs(num_logprobs):
    logits = torch.randn(4, V) * 2
    params = [SamplingParams(logprobs=num_logprobs, temperature=0.0, repetition_penalty=1.5),
              SamplingParams(temperature=0.9), SamplingParams(logprobs=1, top_k=2),
              SamplingParams(temperature=0.0)]
    md = build(params, prompt=[[int(logits[0].argmax())], [], [], []],
               output=[[], [], [], []])
    assert md.max_num_logprobs == max(num_logprobs, 1)
    out = Sampler()(logits, md)
    k = md.max_num_logprobs
    ref = logits.log_softmax(-1)  # raw model distribution: before penalties / temperature
    assert out.logprobs.shape == (4, k + 1) and out.logprobs_token_ids.shape == (4, k + 1)
    assert torch.equal(out.logprobs_token_ids[:, 0], out.sampled_token_ids)
    sampled_ref = ref.gather(1, out.sampled_token_ids[:, None])[:, 0]
    torch.testing.assert_close(out.logprobs[:, 0], sampled_ref)
    torch.testing.assert_close(out.selected_logprobs, out.logprobs[:, 0])
    top_vals, top_ids = ref.topk(k, -1)
    assert torch.equal(out.logprobs_token_ids[:, 1:], top_ids)
    torch.testing.assert_close(out.logprobs[:, 1:], top_vals)
    want_rank = (ref > ref.gather(1, out.sampled_token_ids[:, None])).sum(-1) + 1
    assert torch.equal(out.sampled_token_ranks, want_rank)


def test_selected_logprobs_without_logprobs_request():
    logits = torch.randn(3, V)
    out = Sampler()(logits, build([SamplingParams()] * 3))
    want = logits.log_softmax(-1).gather(1, out.sampled_token_ids[:, None])[:, 0]
    torch.testing.assert_close(out.selected_logprobs, want)


def test_bad_logits_shape():
    with pytest.raises(ValueError, match="logits"):
        Sampler()(torch.randn(2, V), build([SamplingParams()]))
