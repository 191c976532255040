import pytest
import torch

import vllm.v1.sample.rejection_sampler as rs_mod
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.metadata import SamplingMetadata, make_generator
from vllm.v1.constants import PLACEHOLDER_TOKEN_ID
from vllm.v1.sample.rejection_sampler import RejectionSampler, rejection_scan, rejection_scan_ref

P = PLACEHOLDER_TOKEN_ID
V = 11
BIG = 1e4  # softmax of a +BIG logit is exactly one-hot in fp32: makes random requests decisive

GREEDY = SamplingParams(temperature=0.0)
RANDOM = SamplingParams(temperature=1.0)


def triton_cpu_ok() -> bool:
    """Kernels can run on this machine: CUDA, or the interpreter set up by conftest."""
    if torch.cuda.is_available():
        return True
    return type(rs_mod._rejection_scan_kernel).__name__ == "InterpretedFunction"


needs_triton = pytest.mark.skipif(not triton_cpu_ok(), reason="triton interpreter unavailable")


def one_hot_logits(tokens: list[int], vocab: int = V, sign: float = 1.0) -> torch.Tensor:
    out = torch.zeros(len(tokens), vocab)
    out[torch.arange(len(tokens)), torch.tensor(tokens)] = sign * BIG
    return out


def run(draft: list[list[int]], target_rows: list[list[int]], params, draft_probs=None,
        generators=None, force_triton=False) -> torch.Tensor:
    """draft: per request drafts; target_rows: per request the argmax token of each of its
    k + 1 target positions."""
    nd = [len(d) for d in draft]
    draft_ids = torch.tensor([t for d in draft for t in d], dtype=torch.int64)
    logits = one_hot_logits([t for rows in target_rows for t in rows])
    md = SamplingMetadata.build(params, generators, None, None, "cpu")
    return RejectionSampler()(draft_ids, nd, draft_probs, logits, md, force_triton=force_triton)


@pytest.mark.parametrize("force_triton", [False, pytest.param(True, marks=needs_triton)])
@pytest.mark.parametrize("params", [GREEDY, RANDOM])
def test_all_accepted_plus_bonus(params, force_triton):
    out = run([[3, 4, 5]], [[3, 4, 5, 9]], [params], force_triton=force_triton)
    assert out.tolist() == [[3, 4, 5, 9]]


@pytest.mark.parametrize("force_triton", [False, pytest.param(True, marks=needs_triton)])
@pytest.mark.parametrize("params", [GREEDY, RANDOM])
def test_first_rejected(params, force_triton):
    out = run([[3, 4, 5]], [[7, 4, 5, 9]], [params], force_triton=force_triton)
    assert out.tolist() == [[7, P, P, P]]


@pytest.mark.parametrize("force_triton", [False, pytest.param(True, marks=needs_triton)])
def test_mixed_batch_with_k0_rows(force_triton):
    draft = [[1, 2], [], [3, 4, 5], [6], [], [8, 8]]
    target = [[1, 9, 0], [10], [3, 4, 2, 7], [6, 5], [4], [8, 8, 1]]
    params = [GREEDY, RANDOM, RANDOM, GREEDY, GREEDY, RANDOM]
    out = run(draft, target, params, force_triton=force_triton)
    assert out.shape == (6, 4)
    assert out.tolist() == [
        [1, 9, P, P],      # greedy: second draft mismatches -> target argmax recovered
        [10, P, P, P],     # k = 0: just the bonus
        [3, 4, 2, P],      # random, p one-hot: third draft has p(d) = 0 -> recovered = 2
        [6, 5, P, P],      # greedy all accepted + bonus
        [4, P, P, P],
        [8, 8, 1, P],      # random all accepted + bonus
    ]


def test_random_rejection_with_draft_probs():
    # q puts mass on the draft; p is one-hot elsewhere: reject, recover from max(0, p - q).
    q = torch.full((1, V), 1.0 / V)
    out = run([[2]], [[6, 3]], [RANDOM], draft_probs=q)
    assert out.tolist() == [[6, P]]
    # p == q exactly: min(1, p/q) = 1, always accepted.
    nd, draft_ids = [1], torch.tensor([2])
    logits = torch.zeros(2, V)
    md = SamplingMetadata.build([RANDOM], None, None, None, "cpu")
    for _ in range(20):
        out = RejectionSampler()(draft_ids, nd, q, logits, md)
        assert out[0, 0].item() == 2 and out[0, 1].item() != P


def test_all_k0_and_empty_batch():
    out = run([[], []], [[5], [6]], [GREEDY, RANDOM])
    assert out.tolist() == [[5], [6]]
    md = SamplingMetadata.build([], None, None, None, "cpu")
    empty = RejectionSampler()(torch.empty(0, dtype=torch.int64), [], None, torch.empty(0, V), md)
    assert empty.shape == (0, 1)


def test_validation_errors_name_the_field():
    md = SamplingMetadata.build([GREEDY], None, None, None, "cpu")
    rs = RejectionSampler()
    with pytest.raises(ValueError, match="draft_token_ids"):
        rs(torch.tensor([1, 2]), [3], None, torch.zeros(4, V), md)
    with pytest.raises(ValueError, match="target_logits"):
        rs(torch.tensor([1, 2]), [2], None, torch.zeros(2, V), md)
    with pytest.raises(ValueError, match="draft_probs"):
        rs(torch.tensor([1, 2]), [2], torch.zeros(2, V + 1), torch.zeros(3, V), md)
    with pytest.raises(ValueError, match="metadata"):
        rs(torch.tensor([1]), [1, 0], None, torch.zeros(3, V), md)


def _random_scan_inputs(num_draft_tokens, all_greedy, has_q, gen):
    r = len(num_draft_tokens)
    t = sum(num_draft_tokens)
    cu = torch.tensor(num_draft_tokens, dtype=torch.int64).cumsum(0)
    vocab = 5  # small vocab: drafts often equal the recovered token -> long accepted prefixes
    draft = torch.randint(0, vocab, (t,), generator=gen)
    recovered = torch.randint(0, vocab, (t,), generator=gen)
    bonus = torch.randint(0, vocab, (r,), generator=gen)
    if all_greedy:
        return cu, draft, None, None, None, recovered, bonus, None
    p = torch.rand(t, generator=gen)
    q = torch.rand(t, generator=gen) if has_q else None
    u = torch.rand(t, generator=gen)
    greedy = torch.rand(r, generator=gen) < 0.4
    return cu, draft, p, q, u, recovered, bonus, greedy


@needs_triton
@pytest.mark.parametrize("all_greedy,has_q", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("num_draft_tokens", [[0], [1], [4], [3, 0, 5, 1, 2], [7] * 9,
                                              [0, 0, 0]])
def test_scan_triton_matches_ref(num_draft_tokens, all_greedy, has_q):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    args = _random_scan_inputs(num_draft_tokens, all_greedy, has_q, gen)
    max_k = max(num_draft_tokens)
    ref = rejection_scan_ref(*args, max_k)
    got = rejection_scan(*args, max_k, force_triton=True)
    assert torch.equal(got, ref), f"seed={seed}"


@needs_triton
def test_forward_triton_matches_ref_with_seeds():
    # Every request seeded so both runs draw the same noise.
    seed = torch.seed()
    g = torch.Generator().manual_seed(seed)
    nd = [3, 0, 5, 1, 4, 2]
    vocab = 13
    params = [GREEDY, RANDOM, SamplingParams(temperature=0.7, top_k=4), RANDOM,
              SamplingParams(top_p=0.8, min_p=0.05), GREEDY]
    draft = torch.randint(0, vocab, (sum(nd),), generator=g)
    logits = torch.randn(sum(nd) + len(nd), vocab, generator=g)
    q = torch.softmax(torch.randn(sum(nd), vocab, generator=g), -1)

    def once(force, draft_probs):
        gens = {i: make_generator(seed + i, "cpu") for i in range(len(nd))}
        md = SamplingMetadata.build(params, gens, None, None, "cpu")
        return RejectionSampler()(draft, nd, draft_probs, logits, md, force_triton=force)

    for draft_probs in (None, q):
        ref = once(False, draft_probs)
        assert torch.equal(ref, once(False, draft_probs)), f"seed={seed}"  # seeded = reproducible
        assert torch.equal(once(True, draft_probs), ref), f"seed={seed}"


def test_greedy_matches_plain_argmax_chain():
    # Greedy output = drafts up to the first mismatch with argmax, then the argmax.
    seed = torch.seed()
    g = torch.Generator().manual_seed(seed)
    nd = [4, 2, 0, 3]
    logits = torch.randn(sum(nd) + len(nd), 5, generator=g)
    am = logits.argmax(-1).tolist()
    draft = []
    for r, k in enumerate(nd):
        base = sum(nd[:r]) + r
        keep = (torch.rand(k, generator=g) < 0.7).tolist()
        draft += [am[base + i] if keep[i] else (am[base + i] + 1) % 5 for i in range(k)]
    md = SamplingMetadata.build([GREEDY] * len(nd), None, None, None, "cpu")
    out = RejectionSampler()(torch.tensor(draft, dtype=torch.int64), nd, None, logits, md).tolist()
    pos = 0
    for r, k in enumerate(nd):
        base = sum(nd[:r]) + r
        want = []
        for i in range(k):
            want.append(am[base + i])
            if draft[pos + i] != am[base + i]:
                break
        else:
            want.append(am[base + k])
        assert out[r] == want + [P] * (max(nd) + 1 - len(want)), f"seed={seed}"
        pos += k


# ---- distribution: every emitted token must be distributed as the target p -------------------

DIST_V = 8
DIST_R = 60000
DIST_K = 2
CHI2_CRIT = 40.0  # chi-square, 7 degrees of freedom: P(X > 40) ~ 1.3e-6 for a correct sampler


def _tv(tokens: torch.Tensor, p: torch.Tensor) -> float:
    freq = torch.bincount(tokens, minlength=DIST_V).float() / tokens.numel()
    return 0.5 * (freq - p).abs().sum().item()


def _chi2(tokens: torch.Tensor, p: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=DIST_V).double()
    expected = p.double() * tokens.numel()
    return ((counts - expected) ** 2 / expected).sum().item()


def _dist_setup():
    # The distributions are fixed (seeded) so the gap between p and q is known; the sampler's
    # own noise and the drafts are fresh every run.
    g = torch.Generator().manual_seed(1234)
    p_logits = torch.randn(DIST_K + 1, DIST_V, generator=g)           # positions 0, 1, bonus
    q = torch.softmax(torch.randn(DIST_K, DIST_V, generator=g), -1)    # draft model per position
    return p_logits, p_logits.softmax(-1), q


def _dist_run(ngram: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p_logits, p, q = _dist_setup()
    if ngram:
        # Arbitrary drafts (q is one-hot at each): half the target's argmax, half uniform.
        top = p[:DIST_K].argmax(-1).expand(DIST_R, DIST_K)
        uniform = torch.randint(0, DIST_V, (DIST_R, DIST_K))
        drafts = torch.where(torch.rand(DIST_R, DIST_K) < 0.5, top, uniform)
        draft_probs = None
    else:
        drafts = torch.stack([torch.multinomial(q[i], DIST_R, replacement=True)
                              for i in range(DIST_K)], dim=1)          # drafts ~ q
        draft_probs = q.repeat(DIST_R, 1)
    logits = p_logits.repeat(DIST_R, 1)                                # [R * (k + 1), V]
    md = SamplingMetadata.build([RANDOM] * DIST_R, None, None, None, "cpu")
    out = RejectionSampler()(drafts.reshape(-1), [DIST_K] * DIST_R, draft_probs, logits, md)
    return out, p, drafts


@pytest.mark.parametrize("ngram", [False, True])
def test_emitted_tokens_follow_target_distribution(ngram):
    out, p, _ = _dist_run(ngram)
    assert out.shape == (DIST_R, DIST_K + 1)
    assert (out[:, 0] >= 0).all()
    assert _tv(out[:, 0], p[0]) < 0.02
    assert _chi2(out[:, 0], p[0]) < CHI2_CRIT
    second = out[:, 1][out[:, 1] != P]     # present iff the first draft was accepted
    assert second.numel() > DIST_R // 10
    assert _chi2(second, p[1]) < CHI2_CRIT
    if not ngram:
        assert _tv(second, p[1]) < 0.02
    third = out[:, 2][out[:, 2] != P]      # the bonus, after two accepts
    assert third.numel() > 1000
    assert _chi2(third, p[2]) < CHI2_CRIT


@pytest.mark.parametrize("ngram", [False, True])
def test_broken_sampler_fails_the_same_check(ngram, monkeypatch):
    _, p, q = _dist_setup()
    if not ngram:
        assert 0.5 * (p[0] - q[0]).abs().sum() > 0.1  # the check can tell p from q at all
    # u = 0 accepts every draft with p(d) > 0: "accept always".
    monkeypatch.setattr(rs_mod, "_draw_uniforms_hook", torch.zeros_like)
    out, p, drafts = _dist_run(ngram)
    assert torch.equal(out[:, :DIST_K], drafts)
    assert _tv(out[:, 0], p[0]) > 0.05
    assert _chi2(out[:, 0], p[0]) > CHI2_CRIT
    assert _chi2(out[:, 1], p[1]) > CHI2_CRIT
