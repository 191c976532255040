"""NWOR invariants on the real engine: committed cache contents identical to the off path,
rejected drafts never written, staged == drafted, committed == accepted."""
import random

import pytest
import torch

from models_util import tiny_model
from vllm import LLM, SamplingParams

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1,
        "prompt_lookup_max": 2}


def _workload():
    rng = random.Random(7)
    prompts = []
    for _ in range(6):
        base = [rng.randrange(3, 256) for _ in range(rng.randint(3, 8))]
        prompts.append({"prompt_token_ids": base * 3})
    params = [SamplingParams(temperature=0, max_tokens=20 + 3 * i, ignore_eos=True)
              for i in range(6)]
    return prompts, params


class Recorder:
    """Wraps the runner's input preparation and verification to log what each step wrote."""

    def __init__(self, llm):
        runner = llm.llm_engine.executor.driver_runner
        self.runner = runner
        self.written: set[int] = set()      # slots written for committed (non-draft) tokens
        self.draft_slots: set[int] = set()
        self.accepted_slots: set[int] = set()
        self.final: dict[str, tuple[list[int], int]] = {}
        prepare = runner.buffers.prepare
        verify = runner.spec_step.verify_and_commit

        def prepare_rec(so, *a, **kw):
            inp = prepare(so, *a, **kw)
            sm = inp.attn.slot_mapping[:inp.num_tokens].tolist()
            for r, (a, b) in zip(so.reqs, inp.hidden_rows_per_req):
                # non-draft tokens only: the off path also writes drafts, which is what the
                # test wants to catch
                self.written.update(x for x in sm[a:b - r.num_spec] if x >= 0)
            return inp

        def verify_rec(plan, logits, md, kv):
            out = verify(plan, logits, md, kv)
            spec = plan.drafts
            slots = spec.draft_slots.tolist()
            self.draft_slots.update(slots)
            i = 0
            for r, k in enumerate(spec.num_draft_tokens):
                row = out[r].tolist()
                drafts = spec.draft_token_ids[i:i + k].tolist()
                for j in range(k):
                    if row[j] != drafts[j]:
                        break
                    self.accepted_slots.add(slots[i + j])
                i += k
            return out

        runner.buffers.prepare = prepare_rec
        runner.spec_step.verify_and_commit = verify_rec

    def run(self, llm, prompts, params, max_steps=None):
        """Runs to completion, or aborts everything after max_steps (a client going away
        mid-window leaves rejected drafts past the last committed token)."""
        eng = llm.llm_engine
        for i, (p, sp) in enumerate(zip(prompts, params)):
            eng.add_request(f"r{i}", p, sp)
        outs = {}
        steps = 0
        while eng.has_unfinished_requests():
            steps += 1
            if max_steps is not None and steps > max_steps:
                eng.abort_request([f"r{i}" for i in range(len(prompts))])
                return None
            for req in list(eng.scheduler.running):
                self.final[req.request_id] = (list(req.block_ids), req.num_computed_tokens)
            for o in eng.step():
                outs[o.request_id] = o
        return [outs[f"r{i}"] for i in range(len(prompts))]


def _committed_slots(rec, block_size):
    slots = {}
    for rid, (blocks, n) in rec.final.items():
        slots[rid] = [blocks[p // block_size] * block_size + p % block_size for p in range(n)]
    return slots


def _engine(mode):
    return LLM(tiny_model("llama"), enforce_eager=True, block_size=8, nwor_mode=mode,
               speculative_config=SPEC, enable_prefix_caching=False)


def test_cache_identical_at_committed_positions_and_counters():
    prompts, params = _workload()
    caches, outs, recs = {}, {}, {}
    for mode in ("off", "stage"):
        llm = _engine(mode)
        rec = Recorder(llm)
        outs[mode] = rec.run(llm, prompts, params)
        caches[mode] = rec.runner.kv_cache.clone()
        recs[mode] = rec
        m = llm.get_metrics_dict()
        accepted_from_outputs = len(rec.accepted_slots)
        if mode == "stage":
            assert m["vllm:nwor_tokens_staged"] == m["vllm:spec_decode_num_draft_tokens"]
            assert m["vllm:nwor_tokens_committed"] == m["vllm:spec_decode_num_accepted_tokens"]
            assert m["vllm:nwor_tokens_committed"] == accepted_from_outputs
            assert m["vllm:nwor_windows"] > 0
    assert [o.outputs[0].token_ids for o in outs["off"]] == \
        [o.outputs[0].token_ids for o in outs["stage"]]
    slots_off = _committed_slots(recs["off"], 8)
    slots_stage = _committed_slots(recs["stage"], 8)
    assert slots_off == slots_stage       # same schedule, same blocks
    flat = torch.tensor(sorted({s for v in slots_off.values() for s in v}))
    L, two, NB, BS, H, D = caches["off"].shape
    a = caches["off"].view(L, 2, NB * BS, H, D)[:, :, flat]
    b = caches["stage"].view(L, 2, NB * BS, H, D)[:, :, flat]
    assert torch.equal(a, b)              # bit-identical at every committed position


@pytest.mark.parametrize("mode", ["stage", "off"])
def test_sentinel_rejected_slots_never_written(mode):
    prompts, params = _workload()
    llm = _engine(mode)
    rec = Recorder(llm)
    sentinel = 12345.0
    rec.runner.kv_cache.fill_(sentinel)
    rec.run(llm, prompts, params, max_steps=7)
    only_rejected = rec.draft_slots - rec.accepted_slots - rec.written
    assert len(only_rejected) > 0, "the workload must produce rejected drafts"
    kv = rec.runner.kv_cache
    L, _, NB, BS, H, D = kv.shape
    idx = torch.tensor(sorted(only_rejected))
    vals = kv.view(L, 2, NB * BS, H, D)[:, :, idx]
    untouched = (vals == sentinel).all()
    if mode == "stage":
        assert untouched, "NWOR stage wrote K/V of a rejected draft into the cache"
    else:
        # the off path writes every draft: this is what NWOR saves (and proves the test bites)
        assert not untouched
