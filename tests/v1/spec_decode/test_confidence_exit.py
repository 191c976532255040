"""Confidence early exit and per-request draft caps through the engine: greedy output equals no
speculation; every request gets at most its cap of drafts (none at cap 0); the stopped counter
equals the drafts the caps allowed but the exit withheld; it reaches /metrics and the log."""
import dataclasses
import logging
import tempfile

import numpy as np
import pytest

from spec_util import repetitive_prompts, save_random_eagle_head, staggered_greedy_params
from vllm import LLM
from vllm.entrypoints.openai.metrics import make_registry, render
from vllm.v1.spec_decode.draft_model import DraftModelProposer
from vllm.v1.spec_decode.eagle import EagleProposer
from vllm.v1.spec_decode.ngram import NgramProposer, ngram_propose

K = 3
# max_drafts handed to the proposer, cycling over requests and calls (None = k).
CAPS = [None, 0, 1, 2, None, 3]
_CLS = {"ngram": NgramProposer, "draft_model": DraftModelProposer, "eagle": EagleProposer}


@pytest.fixture(scope="module")
def eagle_dir(target):
    return save_random_eagle_head(target, tempfile.mkdtemp(prefix="eagle-"))


def _cfg(method, target, eagle_dir, thr):
    cfg = {"method": method, "num_speculative_tokens": K, "confidence_threshold": thr}
    if method != "ngram":
        cfg["model"] = target if method == "draft_model" else eagle_dir
    return cfg


def _record(monkeypatch, method, capped):
    """Wraps the proposer's propose: sets max_drafts (when capped) and records every call as
    (requests, their effective caps, result)."""
    cls, calls = _CLS[method], []
    inner = cls.propose

    def propose(self, reqs):
        if capped:
            n = len(calls)
            reqs = [dataclasses.replace(r, max_drafts=CAPS[(n + i) % len(CAPS)])
                    for i, r in enumerate(reqs)]
        out = inner(self, reqs)
        # token_ids is the request's live list: copy what the proposer saw
        seen = [dataclasses.replace(r, token_ids=list(r.token_ids)) for r in reqs]
        calls.append((seen, [K if r.max_drafts is None else r.max_drafts for r in reqs], out))
        return out
    monkeypatch.setattr(cls, "propose", propose)
    return calls


# (method, threshold, capped). Thresholds: the tiny random models' draft probabilities are
# about 0.017-0.06 (draft model) and 0.007-0.017 (EAGLE head); 0.025 / 0.0095 sit inside
# (some requests stop mid-window), 0.5 / 0.999 stop every draft.
CASES = [("ngram", 0.0, True), ("draft_model", 0.0, True), ("draft_model", 0.5, False),
         ("draft_model", 0.025, True), ("draft_model", 0.025, False), ("eagle", 0.0, True),
         ("eagle", 0.0095, True), ("eagle", 0.999, False)]


@pytest.mark.parametrize("method,thr,capped", CASES)
def test_exit_and_caps_lossless(target, eagle_dir, baseline, monkeypatch, method, thr, capped):
    calls = _record(monkeypatch, method, capped)
    llm = LLM(target, enforce_eager=True, block_size=8,
              speculative_config=_cfg(method, target, eagle_dir, thr))
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    drafted = expected_stopped = 0
    for reqs, caps, out in calls:
        for r, cap in zip(reqs, caps):
            got = out.get(r.req_id, [])
            assert len(got) <= cap and (cap > 0 or r.req_id not in out)
            if method == "ngram":
                full = ngram_propose(np.asarray(r.token_ids), 1, 3, K)
                assert got == full[:cap]        # the uncapped drafts, truncated
            elif thr == 0:
                assert len(got) == cap
            drafted += len(got)
            expected_stopped += cap - len(got) if thr > 0 else 0
    m = llm.get_metrics_dict()
    assert m["vllm:spec_decode_num_draft_tokens_stopped"] == expected_stopped
    if capped:
        assert any(c == 0 for _, caps, _ in calls for c in caps)
    if thr >= 0.5:          # nothing drafted: every allowed draft was stopped
        assert drafted == 0 and expected_stopped == sum(sum(c) for _, c, _ in calls) > 0
    elif thr > 0:           # a threshold inside the probabilities: some of both
        assert drafted > 0 and expected_stopped > 0


def _generate_logged(target, monkeypatch, caplog, threshold: float, n: int):
    """A draft-model engine with the given threshold, stats logged every step, after
    generating n requests with INFO logs captured."""
    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "0")
    llm = LLM(target, enforce_eager=True, block_size=8,
              speculative_config=_cfg("draft_model", target, None, threshold))
    with caplog.at_level(logging.INFO, logger="vllm"):
        llm.generate(repetitive_prompts(n), staggered_greedy_params(n), use_tqdm=False)
    return llm


def test_stopped_counter_exported_and_logged(target, monkeypatch, caplog):
    llm = _generate_logged(target, monkeypatch, caplog, 0.025, 3)
    n = llm.llm_engine.stats.spec.num_draft_tokens_stopped
    assert n > 0
    text = render(make_registry(lambda: [llm.llm_engine.stats])).decode()
    line = [s for s in text.splitlines()
            if s.startswith("vllm:spec_decode_num_draft_tokens_stopped_total{")]
    assert len(line) == 1 and float(line[0].rsplit(" ", 1)[1]) == n
    logged = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Confidence early exit stats:")]
    assert logged and logged[-1] == f"Confidence early exit stats: {n} tokens stopped"


def test_no_exit_log_without_threshold(target, monkeypatch, caplog):
    llm = _generate_logged(target, monkeypatch, caplog, 0.0, 2)
    assert llm.llm_engine.stats.spec.num_draft_tokens_stopped == 0
    assert not [r for r in caplog.records if "Confidence early exit" in r.getMessage()]
