"""The one registry of VLLM_* environment variables.

Every variable has a default, a parser that validates it, and a doc line. No other module reads
``os.environ``; they call ``envs.get("VLLM_...")`` (parsed on each call, so tests can set the
environment per engine) or read the attribute ``envs.VLLM_...``.
"""
from __future__ import annotations

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
_register("VLLM_ADAPTIVE_DRAFT", False, _bool("VLLM_ADAPTIVE_DRAFT"),
          "Adapt the number of speculative tokens per request to its recent acceptance.")
_register("VLLM_DRAFT_CONFIDENCE_THRESHOLD", 0.0, _float("VLLM_DRAFT_CONFIDENCE_THRESHOLD"),
          "Stop drafting once the draft's top probability falls below this (0 = never).")
_register("VLLM_TRITON_DISABLE", False, _bool("VLLM_TRITON_DISABLE"),
          "Use the torch reference paths even on a GPU (debugging).")
_register("VLLM_PORT_BASE", 29500, _int("VLLM_PORT_BASE"),
          "Base TCP port for the tensor-parallel process group rendezvous.")


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


def __getattr__(name: str) -> Any:
    if name in _VARS:
        return get(name)
    raise AttributeError(name)
