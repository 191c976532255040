"""Tiny random models saved as real Hugging Face folders (config.json, safetensors, tokenizer)."""
from __future__ import annotations

import functools
import os
import tempfile

import torch

_ROOT = os.path.join(tempfile.gettempdir(), "vllm_test_models")


def _save_tokenizer(path: str, vocab_size: int) -> None:
    """A word-level tokenizer over a fixed small vocabulary (ids < vocab_size)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab_size - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(path)


@functools.lru_cache(maxsize=None)
def tiny_model(arch: str = "llama", seed: int = 0, vocab_size: int = 256, layers: int = 2,
               tie: bool = True) -> str:
    """Build (once per process) and save a tiny random model; returns its folder."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)
    path = os.path.join(_ROOT, f"{arch}-s{seed}-v{vocab_size}-l{layers}-t{int(tie)}-{os.getpid()}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=tie, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=False, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=layers, n_head=4, n_positions=512, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    # Larger-than-default init so greedy choices are well separated (no fp ties).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(path, safe_serialization=True)
    _save_tokenizer(path, vocab_size)
    return path


def hf_greedy(path: str, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=max_new, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        outs.append(g[0, len(p):].tolist())
    return outs
