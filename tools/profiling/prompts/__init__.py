"""Prompt sets of the microbench scenarios (hand-written; JSON next to this file).

short      chat-like questions (a few dozen prompt tokens)
medium     code-completion style with repeated structure (where n-gram drafting finds matches)
long       a few paragraphs followed by "Summarize ..." (hundreds of prompt tokens)
synthetic  token-id prompts: a short random pattern repeated (any tokenizer; tiny test models,
           dummy weights). Built from the model's vocabulary size, deterministic in the seed.

The one-off scenarios of tools/experiments/run_oneoff_scenarios.sh (docs/experiments.md):
code_completion   unfinished functions to complete (short answers, repetitive: high acceptance)
chatbot           customer-service questions with a short system-style preamble
high_throughput   short extraction / classification / rewrite tasks (many requests at once)
creative_writing  open-ended stories and poems (sampled: low acceptance)
"""
from __future__ import annotations

import json
import os
import random
from typing import Union

TEXT_SCENARIOS = ("short", "medium", "long", "code_completion", "chatbot", "high_throughput",
                  "creative_writing")
SCENARIOS = TEXT_SCENARIOS + ("synthetic",)
# Output tokens per request when --max-tokens is not given.
DEFAULT_MAX_TOKENS = {"short": 64, "medium": 128, "long": 128, "synthetic": 32,
                      "code_completion": 64, "chatbot": 128, "high_throughput": 64,
                      "creative_writing": 256}

Prompt = Union[str, dict]
_DIR = os.path.dirname(os.path.abspath(__file__))


def text_prompts(scenario: str) -> list[str]:
    if scenario not in TEXT_SCENARIOS:
        raise ValueError(f"scenario {scenario!r} has no text prompts; expected one of "
                         f"{TEXT_SCENARIOS}")
    with open(os.path.join(_DIR, f"{scenario}.json")) as f:
        return json.load(f)


def synthetic_prompts(n: int, vocab_size: int, seed: int = 0, min_len: int = 12,
                      max_len: int = 32) -> list[dict]:
    """n prompts, each a random pattern of 3..8 tokens repeated to 12..32 tokens."""
    rng = random.Random(seed)
    lo, hi = 3, max(4, min(vocab_size, 32000))   # skip the usual special ids 0..2
    out = []
    for _ in range(n):
        pat = [rng.randrange(lo, hi) for _ in range(rng.randint(3, 8))]
        length = rng.randint(min_len, max_len)
        out.append({"prompt_token_ids": (pat * (length // len(pat) + 1))[:length]})
    return out


def load_file(path: str) -> list[Prompt]:
    """A JSON list of strings, token-id lists, or {"prompt_token_ids": [...]} objects."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of prompts")
    out: list[Prompt] = []
    for p in data:
        if isinstance(p, list):
            p = {"prompt_token_ids": p}
        if not isinstance(p, (str, dict)):
            raise ValueError(f"{path}: a prompt must be a string, a token-id list or an object")
        out.append(p)
    return out


def batches(pool: list[Prompt], num_batches: int, batch_size: int,
            offset: int = 0) -> list[list[Prompt]]:
    """Batch b takes pool[(offset + b * batch_size + i) % len(pool)]: consecutive batches use
    different prompts while the pool lasts (less prefix-cache reuse between batches)."""
    return [[pool[(offset + b * batch_size + i) % len(pool)] for i in range(batch_size)]
            for b in range(num_batches)]
