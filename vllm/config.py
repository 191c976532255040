"""Engine configuration: built once from the user's arguments, then read-only.

Runtime-derived values live with the component that derives them, never here: the number of KV
blocks is measured by the executor and passed to the runner and the scheduler
(vllm/v1/engine/llm_engine.py); CUDA-graph capture sizes belong to CudaGraphRunner
(vllm/v1/worker/cudagraph.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

import torch

from vllm import envs

_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # bf16 on GPUs (the weights we load are fp16/bf16/quantized); fp32 on the CPU, where
        # bf16 matmuls are slow and tests compare against fp32 references.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is invalid; expected 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


@dataclass(frozen=True)
class ModelConfig:
    model: str                      # what the user passed (name, folder, or .gguf)
    model_path: str                 # resolved folder or .gguf path
    tokenizer: Optional[str]
    hf_config: Any                  # transformers.PretrainedConfig
    dtype: torch.dtype
    max_model_len: int
    load_format: str
    seed: int
    served_model_name: str

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or []
        return archs[0] if archs else type(self.hf_config).__name__.replace("Config", "ForCausalLM")

    @property
    def num_layers(self) -> int:
        c = self.hf_config
        return getattr(c, "num_hidden_layers", None) or c.n_layer

    @property
    def num_heads(self) -> int:
        c = self.hf_config
        return getattr(c, "num_attention_heads", None) or c.n_head

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.hf_config, "num_key_value_heads", None) or self.num_heads

    @property
    def hidden_size(self) -> int:
        c = self.hf_config
        return getattr(c, "hidden_size", None) or c.n_embd

    @property
    def head_dim(self) -> int:
        return getattr(self.hf_config, "head_dim", None) or self.hidden_size // self.num_heads

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: Optional[int] = None
    enable_prefix_caching: bool = True
    cpu_kvcache_space_gib: float = 1.0


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True
    # Schedule step n+1 while the GPU runs step n (tokens of step n reach step n+1 on the
    # device; the host learns them one step later). See docs/architecture.md.
    async_scheduling: bool = False


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    # Engine replicas behind one server (vllm/v1/engine/dp_engine.py); each has its own
    # tensor-parallel group.
    data_parallel_size: int = 1
    # None: tensor-parallel workers are spawned on this machine. "env://": every rank is
    # started by a launcher (torchrun) with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT.
    distributed_init_method: Optional[str] = None


_SPEC_METHODS = ("ngram", "draft_model", "eagle")
_SPEC_KEYS = {"method", "model", "num_speculative_tokens", "prompt_lookup_min",
              "prompt_lookup_max", "draft_tensor_parallel_size", "acceptance_rate",
              "confidence_threshold", "adaptive_draft_length"}
# Drafters whose drafts come with a probability (confidence early exit applies to them).
_CONFIDENCE_METHODS = ("draft_model", "eagle")


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    model: Optional[str] = None
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 3
    draft_tensor_parallel_size: Optional[int] = None
    # Benchmarks on dummy weights only: accept each draft with this probability instead of
    # verifying (clearly labelled "controlled acceptance" wherever it is used). None = real.
    acceptance_rate: Optional[float] = None
    # Stop drafting a request once its draft's top-1 probability falls below this (0 = never).
    confidence_threshold: float = 0.0
    # Choose each step's number of drafts (0..num_speculative_tokens, 0 = do not speculate)
    # from per-request acceptance and the measured step cost (vllm/v1/spec_decode/adaptive.py).
    adaptive_draft_length: bool = False

    @staticmethod
    def from_user(cfg: Any, target_model: str,
                  eagle_head_lookup: Optional[Callable[[str], str]] = None
                  ) -> Optional["SpeculativeConfig"]:
        """The validated config. eagle_head_lookup(target_model): the EAGLE head folder when
        method 'eagle' has no 'model' (the engine passes the shipped-head lookup of
        vllm/v1/spec_decode/shipped.py; it raises a ValueError naming the field if none)."""
        if cfg is None:
            return None
        if isinstance(cfg, str):
            try:
                cfg = json.loads(cfg)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config is not valid JSON: {e}") from None
        if isinstance(cfg, SpeculativeConfig):
            return cfg
        if not isinstance(cfg, dict):
            raise ValueError("speculative_config must be a dict (or JSON object)")
        unknown = set(cfg) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"speculative_config has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(_SPEC_KEYS)}")
        method = cfg.get("method")
        model = cfg.get("model")
        if method is None:
            method = "ngram" if model in (None, "[ngram]", "ngram") else "draft_model"
        if method not in _SPEC_METHODS:
            raise ValueError(f"speculative_config.method={method!r} is invalid; "
                             f"expected one of {_SPEC_METHODS}")
        k = cfg.get("num_speculative_tokens")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > 32:
            raise ValueError("speculative_config.num_speculative_tokens must be an int in "
                             f"[1, 32], got {k!r}")
        lo = cfg.get("prompt_lookup_min", None)
        hi = cfg.get("prompt_lookup_max", None)
        if method == "ngram":
            lo = 1 if lo is None else lo
            hi = max(lo, 3) if hi is None else hi
            for name, v in (("prompt_lookup_min", lo), ("prompt_lookup_max", hi)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"speculative_config.{name} must be an int >= 1, got {v!r}")
            if lo > hi:
                raise ValueError("speculative_config.prompt_lookup_min must be <= "
                                 f"prompt_lookup_max ({lo} > {hi})")
            if model not in (None, "[ngram]", "ngram"):
                raise ValueError("speculative_config.model must be unset for method 'ngram'")
            model = None
        else:
            if lo is not None or hi is not None:
                raise ValueError("speculative_config.prompt_lookup_min/max apply to 'ngram' only")
            lo, hi = 1, 3
            if method == "eagle" and model is None and eagle_head_lookup is not None:
                # the head shipped for this target (ValueError naming the field if none)
                model = eagle_head_lookup(target_model)
            if not isinstance(model, str) or not model:
                raise ValueError(f"speculative_config.model is required for method {method!r}")
        dtp = cfg.get("draft_tensor_parallel_size")
        if dtp is not None and (not isinstance(dtp, int) or dtp < 1):
            raise ValueError(f"speculative_config.draft_tensor_parallel_size must be an int >= 1, "
                             f"got {dtp!r}")
        rate = cfg.get("acceptance_rate")
        if rate is not None and (not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0):
            raise ValueError(f"speculative_config.acceptance_rate must be in [0, 1], got {rate!r}")
        thr = cfg.get("confidence_threshold")
        if thr is None:
            thr = envs.get("VLLM_DRAFT_CONFIDENCE_THRESHOLD")
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0.0 <= thr <= 1.0:
            raise ValueError("speculative_config.confidence_threshold must be in [0, 1], got "
                             f"{thr!r}")
        if thr > 0 and method not in _CONFIDENCE_METHODS:
            raise ValueError(f"speculative_config.confidence_threshold={thr} needs a drafter "
                             f"with probabilities {_CONFIDENCE_METHODS}; method {method!r} "
                             "has none")
        adaptive = cfg.get("adaptive_draft_length")
        if adaptive is None:
            adaptive = envs.get("VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH")
        if not isinstance(adaptive, bool):
            raise ValueError("speculative_config.adaptive_draft_length must be true or false, "
                             f"got {adaptive!r}")
        return SpeculativeConfig(method=method, num_speculative_tokens=k, model=model,
                                 prompt_lookup_min=lo, prompt_lookup_max=hi,
                                 draft_tensor_parallel_size=dtp,
                                 acceptance_rate=None if rate is None else float(rate),
                                 confidence_threshold=float(thr),
                                 adaptive_draft_length=adaptive)


@dataclass(frozen=True)
class SpecDecodeOptions:
    """NWOR / SCV switches of one engine (from env vars unless given as engine arguments)."""
    nwor_mode: str = "off"
    scv_mode: Optional[str] = None       # None: platform default (resolved by the runner)
    nwor_debug: bool = False

    @staticmethod
    def resolve(nwor_mode: Optional[str], scv_mode: Optional[str]) -> "SpecDecodeOptions":
        nm = envs.get("VLLM_NWOR_MODE") if nwor_mode is None else nwor_mode
        if nm not in envs.NWOR_MODES:
            raise ValueError(f"nwor_mode={nm!r} is invalid; expected one of {envs.NWOR_MODES}")
        sm = envs.get("VLLM_SCV_MODE") if scv_mode is None else scv_mode
        if sm is not None and sm not in envs.SCV_MODES:
            raise ValueError(f"scv_mode={sm!r} is invalid; expected one of {envs.SCV_MODES}")
        return SpecDecodeOptions(nwor_mode=nm, scv_mode=sm, nwor_debug=envs.get("VLLM_NWOR_DEBUG"))


@dataclass(frozen=True)
class VllmConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    speculative_config: Optional[SpeculativeConfig]
    spec_options: SpecDecodeOptions
    device: str
    enforce_eager: bool = False

    @property
    def num_lookahead_tokens(self) -> int:
        sc = self.speculative_config
        return sc.num_speculative_tokens if sc else 0

    def summary(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v if not hasattr(v, "__dataclass_fields__") else {
                g.name: str(getattr(v, g.name)) for g in fields(v) if g.name != "hf_config"}
        return out
