"""The one registry of VLLM_* environment variables.

Every variable has a default, a parser that validates it, and a doc line. No other module reads
``os.environ``; they call ``envs.get("VLLM_...")`` (parsed on each call, so tests can set the
environment per engine) or read the attribute ``envs.VLLM_...``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable

NWOR_MODES = ("off", "stage")
SCV_MODES = ("off", "vectorized", "graph", "adaptive")


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        val = raw.strip().lower()
        if val not in choices:
            raise ValueError(f"{name}={raw!r} is invalid; expected one of {', '.join(choices)}")
        return val
    return parse


def _bool(name: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        val = raw.strip().lower()
        if val in ("1", "true", "yes", "on"):
            return True
        if val in ("", "0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={raw!r} is invalid; expected 0/1/true/false")
    return parse


def _float(name: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is invalid; expected a number") from None
    return parse


def _int(name: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is invalid; expected an integer") from None
    return parse


def _str(raw: str) -> str:
    return raw


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: Any
    parse: Callable[[str], Any]
    doc: str


_VARS: dict[str, EnvVar] = {}


def _register(name: str, default: Any, parse: Callable[[str], Any], doc: str) -> None:
    _VARS[name] = EnvVar(name, default, parse, doc)


_register("VLLM_NWOR_MODE", "off", _choice("VLLM_NWOR_MODE", NWOR_MODES),
          "No-write-on-reject: 'stage' keeps draft tokens' K/V in a staging buffer and writes only "
          "accepted ones into the paged KV cache; 'off' writes every token (upstream behaviour).")
_register("VLLM_NWOR_DEBUG", False, _bool("VLLM_NWOR_DEBUG"),
          "Log every NWOR window (begin / commit), fallbacks and errors.")
_register("VLLM_SCV_MODE", None, _choice("VLLM_SCV_MODE", SCV_MODES),
          "Speculative verification mask: off (per-request host loop), vectorized (one kernel), "
          "graph (that kernel replayed from a CUDA graph), adaptive (graph where captured). "
          "Unset: the fastest safe mode for the platform.")
_register("VLLM_CPU_KVCACHE_SPACE", 1.0, _float("VLLM_CPU_KVCACHE_SPACE"),
          "KV-cache budget in GiB when running on the CPU.")
_register("VLLM_LOGGING_LEVEL", "INFO", _str, "Log level of the 'vllm' logger.")
_register("VLLM_LOG_STATS_INTERVAL", 10.0, _float("VLLM_LOG_STATS_INTERVAL"),
          "Seconds between periodic stats log lines (spec-decode acceptance, throughput).")
_register("VLLM_DRAFT_CONFIDENCE_THRESHOLD", 0.0, _float("VLLM_DRAFT_CONFIDENCE_THRESHOLD"),
          "Default of speculative_config's confidence_threshold: a model drafter stops drafting a "
          "request once its draft's top probability falls below this (0 = never).")
_register("VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH", False, _bool("VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH"),
          "Default of speculative_config's adaptive_draft_length: pick each step's number of "
          "drafts (0 = no speculation) from measured acceptance and step cost.")
_register("VLLM_SPEC_CHAIN", True, _bool("VLLM_SPEC_CHAIN"),
          "Chained speculative steps (draft_model / EAGLE, greedy, asynchronous scheduling): "
          "verification, the drafter's catch-up and the next drafts run on the device in one "
          "launch (one CUDA graph), and the next step is launched before this one's tokens "
          "reach the host. 0 = every speculative step is synchronous (before/after runs).")
_register("VLLM_TRITON_DISABLE", False, _bool("VLLM_TRITON_DISABLE"),
          "Use the torch reference paths even on a GPU (debugging).")
_register("VLLM_DISABLE_KERNEL_FUSION", False, _bool("VLLM_DISABLE_KERNEL_FUSION"),
          "Launch the unfused kernel sequence (rotary, then the KV-cache write) instead of the "
          "fused rope + KV-write kernel: before/after comparisons. Read when a model is built.")
_register("VLLM_DRAFT_CUDA_GRAPHS", True, _bool("VLLM_DRAFT_CUDA_GRAPHS"),
          "Replay the draft model's / EAGLE head's forward from CUDA graphs (CUDA, not "
          "enforce_eager). 0 = run the drafter eagerly (before/after comparisons).")
_register("VLLM_PORT_BASE", 29500, _int("VLLM_PORT_BASE"),
          "Base TCP port for the tensor-parallel process group rendezvous.")
_register("VLLM_TP_FAULT_INJECT", None, _str,
          "Tests only: 'RANK:METHOD:N' makes tensor-parallel rank RANK raise on its N-th call of "
          "the runner method METHOD (e.g. '1:execute_model:2').")
_register("VLLM_SHUTDOWN_TIMEOUT", 5.0, _float("VLLM_SHUTDOWN_TIMEOUT"),
          "Seconds a shutdown waits for worker processes before terminating, then killing them.")
_register("VLLM_RENDEZVOUS_SECRET", "vllm-rendezvous", _str,
          "Multi-node (env://): shared secret that authenticates the control connections of the "
          "ranks to rank 0 (same value on every host).")
# Set by torchrun (or by hand) for the env:// rendezvous; read only in that mode.
_register("RANK", None, _int("RANK"), "env:// rendezvous: this process's global rank.")
_register("WORLD_SIZE", None, _int("WORLD_SIZE"), "env:// rendezvous: number of ranks.")
_register("LOCAL_RANK", None, _int("LOCAL_RANK"),
          "env:// rendezvous: this process's rank on its host (picks cuda:LOCAL_RANK).")
_register("CUDA_VISIBLE_DEVICES", None, _str,
          "GPUs this process may use; data-parallel replicas get consecutive groups of them.")
_register("MASTER_ADDR", None, _str, "env:// rendezvous: address of the host of rank 0.")
_register("MASTER_PORT", None, _int("MASTER_PORT"),
          "env:// rendezvous: torch.distributed's port on rank 0's host; vllm's control "
          "connections use MASTER_PORT + 1.")


def get(name: str) -> Any:
    """Parse one variable from the current environment (raises ValueError if invalid)."""
    var = _VARS[name]
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return var.default
    return var.parse(raw)


def set_default(name: str, value: str) -> None:
    """Set a variable for this process and its children unless the user already set it."""
    os.environ.setdefault(name, value)


def is_set(name: str) -> bool:
    """Whether the variable is given a non-empty value (env:// rendezvous checks its inputs)."""
    return os.environ.get(name) not in (None, "")


@contextlib.contextmanager
def scoped(values: dict[str, str]):
    """Set variables while child processes are started (they copy the environment at spawn),
    then restore this process's values."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def __getattr__(name: str) -> Any:
    if name in _VARS:
        return get(name)
    raise AttributeError(name)
