"""Shared by the speculative-decoding engine tests: the tiny target and its no-speculation
greedy output on spec_util's repetitive prompts (the reference every lossless test compares
against)."""
import pytest

from models_util import tiny_model
from spec_util import repetitive_prompts, staggered_greedy_params
from vllm import LLM


@pytest.fixture(scope="session")
def target():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def baseline(target):
    llm = LLM(target, enforce_eager=True)
    outs = llm.generate(repetitive_prompts(), staggered_greedy_params(), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]
