"""Request sets for `vllm bench serve`: random token prompts, or the project's prompt sets.

random     --random-input-len token ids drawn uniformly from the tokenizer's ordinary tokens
           (specials excluded), --random-output-len tokens out; lengths vary by
           +-(--random-range-ratio). Exact lengths: sent as token-id prompts.
short / medium / long
           the microbench's hand-written text prompts (tools/profiling/prompts/*.json),
           cycled to --num-prompts; --output-len tokens out (default 64 / 128 / 128).
synthetic  token-id prompts of a short random pattern repeated (where n-gram drafting finds
           matches), from the tokenizer's vocabulary size.
A JSON file (--dataset-path): a list of strings or token-id lists, cycled.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Optional, Union

DATASETS = ("random", "short", "medium", "long", "synthetic")
SET_OUTPUT_LEN = {"short": 64, "medium": 128, "long": 128, "synthetic": 32}
_PROMPTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tools", "profiling", "prompts")


@dataclass
class BenchRequest:
    prompt: Union[str, list[int]]
    prompt_len: Optional[int]          # tokens, when known here
    output_len: int


def load_tokenizer(name: str):
    from vllm.model_executor.model_loader import loader
    tok = loader.load_tokenizer(loader.resolve(name), None)
    if tok is None:
        raise ValueError(f"no tokenizer could be loaded from {name!r}")
    return tok


def _ordinary_ids(tokenizer) -> list[int]:
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    return [i for i in range(len(tokenizer)) if i not in special]


def _cycle(items: list, n: int) -> list:
    if not items:
        raise ValueError("the prompt set is empty")
    return [items[i % len(items)] for i in range(n)]


def _vary(rng: random.Random, length: int, ratio: float) -> int:
    lo, hi = max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio)))
    return rng.randint(lo, hi)


def build_requests(name: str, num: int, *, tokenizer=None, dataset_path: Optional[str] = None,
                   input_len: int = 128, output_len: Optional[int] = None,
                   range_ratio: float = 0.0, seed: int = 0, chat: bool = False
                   ) -> list[BenchRequest]:
    """``num`` requests of the named set. ``chat``: prompts must be text (chat endpoint)."""
    rng = random.Random(seed)
    if num < 1:
        raise ValueError("--num-prompts must be >= 1")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError("--random-range-ratio must be in [0, 1)")
    if dataset_path is not None:
        with open(dataset_path) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{dataset_path}: expected a JSON list of prompts")
        out = output_len or 128
        return [BenchRequest(p, len(p) if isinstance(p, list) else None, out)
                for p in _cycle(data, num)]
    if name in ("short", "medium", "long"):
        with open(os.path.join(_PROMPTS_DIR, f"{name}.json")) as f:
            texts = json.load(f)
        out = output_len or SET_OUTPUT_LEN[name]
        return [BenchRequest(t, None, out) for t in _cycle(texts, num)]
    if tokenizer is None:
        raise ValueError(f"dataset {name!r} draws token ids: give --tokenizer (or --model as a "
                         "local model path / name)")
    ids = _ordinary_ids(tokenizer)
    reqs = []
    for _ in range(num):
        if name == "random":
            n_in = _vary(rng, input_len, range_ratio)
            prompt = [rng.choice(ids) for _ in range(n_in)]
            out = _vary(rng, output_len or 128, range_ratio)
        elif name == "synthetic":
            pat = [rng.choice(ids) for _ in range(rng.randint(3, 8))]
            n_in = rng.randint(12, 32)
            prompt = (pat * (n_in // len(pat) + 1))[:n_in]
            out = output_len or SET_OUTPUT_LEN["synthetic"]
        else:
            raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
        if chat:
            reqs.append(BenchRequest(tokenizer.decode(prompt), None, out))
        else:
            reqs.append(BenchRequest(prompt, len(prompt), out))
    return reqs
