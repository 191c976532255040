"""The drafters' graph path on the CPU: DraftBatch.capture / run_graph drive a stand-in graph
runner that re-runs the captured forward eagerly over the padded rows (what a CUDA graph replay
computes). This checks what the CPU can check of the CUDA-graph drafting path: padding to a
capture size, the persistent input ids / positions / EAGLE hidden-state buffers, the previous
argmax fed on the device, positions / context lengths / slots advanced on the device from the
second drafting step on (run_graph_next), and the eager fallback for batches larger than every
size. Greedy
output must equal the no-spec output."""
import tempfile

import pytest

from models_util import tiny_model
from spec_util import EagerReplay, save_random_eagle_head
from vllm import LLM, SamplingParams
from vllm.v1.spec_decode import draft_common, draft_model, eagle


def _prompts():
    return [{"prompt_token_ids": [5 + (i * 7 + j) % 200 for j in range(3 + 2 * i)]}
            for i in range(5)]


@pytest.mark.parametrize("method", ["draft_model", "eagle"])
def test_graph_path_greedy_identical(method, monkeypatch):
    path = tiny_model("llama")
    sp = [SamplingParams(temperature=0, max_tokens=6 + 2 * i, ignore_eos=True) for i in range(5)]
    base = [o.outputs[0].token_ids for o in LLM(path, enforce_eager=True, block_size=8).generate(
        _prompts(), sp, use_tqdm=False)]
    cls = draft_model.DraftModelProposer if method == "draft_model" else eagle.EagleProposer
    drafts = {"eager": [], "graph": []}
    inner = cls.propose
    cfg = ({"method": "draft_model", "model": path, "num_speculative_tokens": 3}
           if method == "draft_model" else
           {"method": "eagle", "model": save_random_eagle_head(path, tempfile.mkdtemp()),
            "num_speculative_tokens": 3})
    advanced = []
    inner_next = draft_common.DraftBatch.run_graph_next

    def counting_next(self, *a, **kw):
        out = inner_next(self, *a, **kw)
        advanced.append(out is not None)
        return out
    monkeypatch.setattr(draft_common.DraftBatch, "run_graph_next", counting_next)
    for mode in ("eager", "graph"):
        if mode == "graph":
            monkeypatch.setattr(draft_common.DraftBatch, "graph_runner_cls", EagerReplay)
            monkeypatch.setattr(draft_model, "draft_graphs_wanted", lambda c, d: True)
            monkeypatch.setattr(eagle, "draft_graphs_wanted", lambda c, d: True)
        monkeypatch.setattr(cls, "propose",
                            lambda self, reqs, m=mode: drafts[m].append(inner(self, reqs))
                            or drafts[m][-1])
        # max_num_seqs 4: capture sizes up to 4 * (k + 1) = 16 tokens; the whole-prompt
        # catch-ups of the first step (up to 33 tokens) take the eager fallback.
        llm = LLM(path, enforce_eager=True, block_size=8, max_num_seqs=4,
                  speculative_config=cfg)
        got = [o.outputs[0].token_ids for o in llm.generate(_prompts(), sp, use_tqdm=False)]
        assert got == base, mode
        g = llm.llm_engine.executor.driver_runner.proposer.batch.graphs
        if mode == "graph":
            assert isinstance(g, EagerReplay) and g.captured == [1, 2, 4, 8, 16]
            assert g.num_replays > 0
            assert set(g.replayed) <= {1, 2, 4, 8, 16} and 4 in g.replayed
            # drafting steps >= 2 advanced positions / slots on the device
            assert any(advanced)
        else:
            assert g.num_replays == 0 and not any(advanced)
            advanced.clear()
    # The same drafts, call by call, from the graph path as from the eager path.
    assert drafts["graph"] == drafts["eager"] and any(drafts["eager"])
