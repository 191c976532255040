"""Adaptive draft length with chained steps (vllm/v1/spec_decode/chain_switch.py): per batch
size, chained speculation or plain steps by measured tokens/s; switching between them in the
middle of requests stays lossless."""
import pytest

from spec_util import repetitive_prompts, staggered_greedy_params
from vllm import LLM
from vllm.v1.spec_decode.chain_switch import EXPLORE_MAX, EXPLORE_MIN, ChainModeSwitch


class _Sim:
    """Drives a switch with a fake clock: each step takes `period[mode]` seconds and emits
    `tokens[mode]` tokens."""

    def __init__(self, period, tokens, stint=6, settle=2):
        self.t, self.tok = 0.0, 0
        self.period, self.tokens = dict(period), dict(tokens)
        self.sw = ChainModeSwitch(4, stint=stint, settle=settle, clock=lambda: self.t)
        self.modes = []

    def run(self, steps, batch=8):
        for _ in range(steps):
            m = self.sw.step(batch, self.tok)
            self.modes.append(m)
            self.t += self.period[m]
            self.tok += self.tokens[m]
        return self.modes[-steps:]


def test_both_modes_are_measured_first_then_the_faster_wins():
    sim = _Sim({"chain": 1.0, "plain": 1.0}, {"chain": 20, "plain": 8})
    first = sim.run(12)
    assert first[:6] == ["chain"] * 6 and first[6:] == ["plain"] * 6   # unmeasured first
    later = sim.run(600)
    assert later.count("chain") > 0.9 * len(later)                    # chain emits 2.5x
    assert later.count("plain") > 0                                    # still explored
    assert sim.sw.explore[sim.sw._bucket] == EXPLORE_MAX               # backed off


def test_plain_wins_where_speculation_does_not_pay():
    sim = _Sim({"chain": 2.0, "plain": 1.0}, {"chain": 12, "plain": 8})  # chain: 6/s, plain 8/s
    later = sim.run(600)[-300:]
    assert later.count("plain") > 0.9 * len(later)


def test_a_change_in_acceptance_is_tracked():
    sim = _Sim({"chain": 1.0, "plain": 1.0}, {"chain": 20, "plain": 8})
    sim.run(300)
    sim.tokens["chain"] = 4                 # acceptance collapses: chain now loses
    tail = sim.run(1500)[-300:]
    assert tail.count("plain") > 0.9 * len(tail)
    assert sim.sw.explore[sim.sw._bucket] >= EXPLORE_MIN


def test_buckets_keep_their_own_estimates():
    sim = _Sim({"chain": 1.0, "plain": 1.0}, {"chain": 20, "plain": 8})
    sim.run(200, batch=2)
    sim.tokens = {"chain": 4, "plain": 8}   # at batch 64 chain loses
    big = sim.run(400, batch=64)[-200:]
    assert big.count("plain") > 0.8 * len(big)
    assert sim.sw.rate[(2 .bit_length(), "chain")] > sim.sw.rate[(2 .bit_length(), "plain")]


def test_settle_steps_are_not_measured():
    with pytest.raises(ValueError):
        ChainModeSwitch(4, stint=3, settle=3)


@pytest.mark.parametrize("method", ["draft_model-other", "eagle"])
def test_switching_modes_mid_request_is_lossless(target, baseline, method):
    from test_chain import _cfg
    cfg = dict(_cfg(method, target), adaptive_draft_length=True)
    llm = LLM(target, enforce_eager=True, speculative_config=cfg, block_size=8,
              async_scheduling=True)
    eng = llm.llm_engine
    assert eng.chain_switch is not None and eng.adaptive is None and eng._chain
    eng.chain_switch.stint, eng.chain_switch.settle = 3, 1     # switch every few steps
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    st = eng.chain_switch.stats
    assert st.steps_spec > 0 and st.steps_plain > 0
    pool = eng.scheduler.kv.pool
    assert pool.num_free == pool.num_blocks
