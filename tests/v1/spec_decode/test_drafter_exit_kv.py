"""PagedDrafter called directly (draft model, EAGLE; eager, the graph path on the CPU through
EagerReplay, and real CUDA graphs under the cuda marker): requests stopped by the confidence
exit or by their own cap (max_drafts) write no K/V into the drafter's cache after they stop, get
only their kept drafts, and are counted in stopped_tokens; a request capped at 0 stays out of
the forwards and is caught up later.

Every check reads the drafter's cache after zeroing it: the set of slots holding anything must
be exactly the slots of the catch-up tokens plus those of the drafting steps that were allowed
to write (from each request's block table and positions)."""
import tempfile
from types import SimpleNamespace

import pytest
import torch

from models_util import tiny_model
from spec_util import EagerReplay, save_random_eagle_head
from vllm import LLM
from vllm.v1.spec_decode import draft_common, draft_model, eagle
from vllm.v1.spec_decode.proposer import ProposeReq

K, BS, H = 4, 8, 64
LENS = [5, 9, 12, 7]


def _blocks(i: int) -> list[int]:
    return [10 * i + 1, 10 * i + 2, 10 * i + 3]     # 24 positions >= every length + K


def _tokens(i: int, n: int) -> list[int]:
    return [3 + (17 * i + 5 * j) % 250 for j in range(n)]


def _hidden(i: int) -> torch.Tensor:
    """EAGLE: request i's target hidden state per position [24, H] (fixed, so a fresh request
    with the same tokens sees the same features)."""
    return torch.randn(24, H, generator=torch.Generator().manual_seed(100 + i)) * 0.5


def _cuda(method):
    return pytest.param((method, "cuda"), marks=pytest.mark.cuda, id=f"{method}-cuda")


@pytest.fixture(scope="module", params=[("draft_model", False), ("draft_model", True),
                                        ("eagle", False), ("eagle", True),
                                        _cuda("draft_model"), _cuda("eagle")],
                ids=["draft_model-eager", "draft_model-graph", "eagle-eager", "eagle-graph",
                     "draft_model-cuda", "eagle-cuda"])
def drafter(request):
    method, graphs = request.param
    path = tiny_model("llama")
    cfg = ({"method": "draft_model", "model": path, "num_speculative_tokens": K}
           if method == "draft_model" else
           {"method": "eagle", "model": save_random_eagle_head(path, tempfile.mkdtemp()),
            "num_speculative_tokens": K})
    # 64 blocks: this test's requests use blocks 1..33; checks read the whole cache.
    kw = dict(block_size=BS, max_num_seqs=4, num_gpu_blocks_override=64,
              speculative_config=cfg)
    if graphs == "cuda":        # the drafter's own CUDA graphs, captured for real
        llm = LLM(path, dtype="float32", gpu_memory_utilization=0.3, **kw)
    else:
        with pytest.MonkeyPatch.context() as mp:
            if graphs:      # graphs are captured while the engine is built
                mp.setattr(draft_common.DraftBatch, "graph_runner_cls", EagerReplay)
                mp.setattr(draft_model, "draft_graphs_wanted", lambda c, d: True)
                mp.setattr(eagle, "draft_graphs_wanted", lambda c, d: True)
            llm = LLM(path, enforce_eager=True, **kw)
    prop = llm.llm_engine.executor.driver_runner.proposer
    prop.test_method, prop.test_graphs = method, graphs
    yield prop


def _observe(prop, rid: str, i: int, start: int, end: int) -> None:
    """EAGLE: the target computed positions start..end - 1 of request i."""
    if prop.test_method == "eagle":
        so = SimpleNamespace(reqs=[SimpleNamespace(req_id=rid, start_pos=start)])
        prop.observe_target(so, _hidden(i)[start:end].to(prop.device, prop.dtype),
                            [(0, end - start)])


def _propose(prop, specs, tag: str):
    """specs: (request index, length, max_drafts). Fresh request ids per tag."""
    reqs = []
    for i, n, cap in specs:
        rid = f"{tag}{i}"
        if rid not in prop.computed:
            _observe(prop, rid, i, 0, n)
        reqs.append(ProposeReq(rid, _tokens(i, n), n, _blocks(i), max_drafts=cap))
    with torch.inference_mode():
        out = prop.propose(reqs)
    return [out.get(f"{tag}{i}", []) for i, _, _ in specs]


def _written_slots(prop) -> set[int]:
    kv = prop.kv_cache      # [L, 2, blocks, BS, Hkv, D]
    return set(torch.nonzero(kv.abs().amax(dim=(0, 1, 4, 5)).flatten()).flatten().tolist())


def _slots(i: int, positions) -> set[int]:
    b = _blocks(i)
    return {b[p // BS] * BS + p % BS for p in positions}


def _expected_slots(prop, specs, kept: list[int], steps: int) -> set[int]:
    """Catch-up tokens of each request, then drafting step j (1 <= j < steps) at position
    first + j - 1 iff the request kept draft j - 1 and may keep draft j."""
    out = set()
    for (i, n, cap), nk in zip(specs, kept):
        cap = K if cap is None else cap
        if cap == 0:
            continue
        first = n if prop.test_method == "draft_model" else n - 1   # first drafting position
        out |= _slots(i, range(first))
        out |= _slots(i, [first + j - 1 for j in range(1, steps) if j <= nk and j < cap])
    return out


def _fake_confidence(monkeypatch, pattern: list[list[bool]]):
    """Draft j of the r-th request in the batch is 'confident' iff pattern[r][j]."""
    step = [0]

    def fake(logits, threshold):
        j = step[0]
        step[0] += 1
        ok = torch.tensor([p[j] for p in pattern[:logits.shape[0]]], device=logits.device)
        return logits.argmax(dim=-1), ok
    monkeypatch.setattr(draft_common, "greedy_with_confidence", fake)


def test_stopped_requests_write_no_drafter_kv(drafter, monkeypatch):
    prop = drafter
    specs = [(0, LENS[0], None), (1, LENS[1], 2), (2, LENS[2], None), (3, LENS[3], 3)]
    ref = _propose(prop, [(i, n, None) for i, n, _ in specs], "ref")   # all k, no exit
    assert [len(d) for d in ref] == [K] * 4
    T, F = True, False
    pattern = [[T, F, T, T],    # exits after 1 draft (3 stopped)
               [T, T, T, T],    # capped at 2: not stopped
               [F, T, T, T],    # exits at once (4 stopped)
               [T, T, T, T]]    # capped at 3
    _fake_confidence(monkeypatch, pattern)
    prop.kv_cache.zero_()
    before = prop.stopped_tokens
    got = _propose(prop, specs, "ee")
    kept = [1, 2, 0, 3]
    assert got == [r[:n] for r, n in zip(ref, kept)]
    assert prop.stopped_tokens - before == 3 + 4
    assert _written_slots(prop) == _expected_slots(prop, specs, kept, steps=K)
    if prop.test_graphs:
        assert prop.batch.graphs.num_replays > 0


def test_max_drafts_caps_and_later_catch_up(drafter):
    prop = drafter
    ref = _propose(prop, [(i, n, None) for i, n in enumerate(LENS)], "full")
    # Caps 0 / 1 / 3 / none: request 0 takes no part in the forwards at all.
    prop.kv_cache.zero_()
    specs = [(0, LENS[0], 0), (1, LENS[1], 1), (2, LENS[2], 3), (3, LENS[3], None)]
    got = _propose(prop, specs, "cap")
    assert got == [[], ref[1][:1], ref[2][:3], ref[3]]
    assert "cap0" not in prop.computed
    assert _written_slots(prop) == _expected_slots(prop, specs, [0, 1, 3, K], steps=K)
    # A smaller largest cap: only that many drafting steps run.
    prop.kv_cache.zero_()
    specs = [(1, LENS[1], 2), (2, LENS[2], 1)]
    got = _propose(prop, specs, "two")
    assert got == [ref[1][:2], ref[2][:1]]
    assert _written_slots(prop) == _expected_slots(prop, specs, [2, 1], steps=2)
    # All capped at 0: no forward, nothing drafted, nothing recorded.
    computed = dict(prop.computed)
    prop.kv_cache.zero_()
    assert _propose(prop, [(1, LENS[1], 0), (2, LENS[2], 0)], "zero") == [[], []]
    assert prop.computed == computed and not _written_slots(prop)
    # Drafted once, skipped (cap 0) while it grew, then drafted again: the catch-up covers the
    # tokens committed while it was skipped, so the drafts equal a fresh request's.
    n0 = LENS[2]
    _propose(prop, [(2, n0 - 4, None)], "late")
    assert _propose(prop, [(2, n0 - 1, 0)], "late") == [[]]
    _observe(prop, "late2", 2, n0 - 4, n0)
    assert _propose(prop, [(2, n0, None)], "late") == [ref[2]]
