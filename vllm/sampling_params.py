"""Per-request sampling parameters (upstream names and defaults), validated once at construction."""
from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

# Temperatures below this are treated as greedy (argmax); dividing by them would overflow anyway.
_SAMPLING_EPS = 1e-5

# Seeds are int64 (as upstream's API): torch.Generator.manual_seed accepts [-2**63, 2**64 - 1],
# so the per-choice seeds seed + i of an n > 1 request always stay valid.
_SEED_MIN = -(1 << 63)
_SEED_MAX = (1 << 63) - 1
# top_k beyond any vocabulary (the engine checks the real vocabulary size); keeps it an int32.
_TOP_K_MAX = (1 << 31) - 1
# Repetition penalty divides (or multiplies) logits: far from 1 it overflows them to inf/NaN.
_REP_PENALTY_MIN, _REP_PENALTY_MAX = 0.01, 100.0
# Per-request bounds on list sizes (each entry costs work every step).
MAX_STOP_STRINGS = 64
MAX_STOP_TOKEN_IDS = 1024
MAX_N = 1024


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


def _is_int(v: Any) -> bool:
    # bool is an int subclass; True as "n" or "top_k" is almost certainly a bug in the caller.
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or _is_numpy_number(v)


def _is_numpy_number(v: Any) -> bool:
    # numpy scalars show up when params come from configs / sweeps; accept them as plain numbers.
    mod = type(v).__module__
    return mod == "numpy" and hasattr(v, "item") and isinstance(v.item(), (int, float)) \
        and not isinstance(v.item(), bool)


@dataclass
class SamplingParams:
    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    detokenize: bool = True

    def __post_init__(self) -> None:
        self._normalize_numbers()
        self._verify_args()
        self._normalize()

    # ---- validation -------------------------------------------------------------------------

    def _normalize_numbers(self) -> None:
        """Float fields accept ints (and numpy scalars); int fields accept numpy ints."""
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty",
                     "temperature", "top_p", "min_p"):
            v = getattr(self, name)
            if not _is_number(v):
                raise ValueError(f"{name} must be a number, got {type(v).__name__} {v!r}")
            v = float(v.item() if _is_numpy_number(v) else v)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
            setattr(self, name, v)
        for name in ("n", "best_of", "top_k", "seed", "max_tokens", "min_tokens", "logprobs",
                     "prompt_logprobs"):
            v = getattr(self, name)
            if _is_numpy_number(v) and isinstance(v.item(), int):
                setattr(self, name, v.item())

    def _verify_args(self) -> None:
        def need_int(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if not _is_int(v):
                raise ValueError(f"{name} must be an int{' or None' if optional else ''}, "
                                 f"got {type(v).__name__} {v!r}")

        def need_bool(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be a bool, got {type(v).__name__} {v!r}")

        need_int("n")
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}], got {self.n}")
        need_int("best_of", optional=True)
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of must be >= n ({self.n}), got {self.best_of}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if not _REP_PENALTY_MIN <= self.repetition_penalty <= _REP_PENALTY_MAX:
            raise ValueError(f"repetition_penalty must be in [{_REP_PENALTY_MIN}, "
                             f"{_REP_PENALTY_MAX:g}], got {self.repetition_penalty}")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        need_int("top_k")
        if not -1 <= self.top_k <= _TOP_K_MAX:
            raise ValueError(f"top_k must be -1 or 0 (disable) or in [1, {_TOP_K_MAX}], got "
                             f"{self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        need_int("seed", optional=True)
        if self.seed is not None and not _SEED_MIN <= self.seed <= _SEED_MAX:
            raise ValueError(f"seed must be a 64-bit signed integer, got {self.seed}")

        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if not isinstance(stops, (list, tuple)):
                raise ValueError(f"stop must be a str or a list of str, got "
                                 f"{type(self.stop).__name__}")
            if len(stops) > MAX_STOP_STRINGS:
                raise ValueError(f"stop must have at most {MAX_STOP_STRINGS} strings, got "
                                 f"{len(stops)}")
            for s in stops:
                if not isinstance(s, str):
                    raise ValueError(f"stop must contain only str, got {type(s).__name__} {s!r}")
                if s == "":
                    raise ValueError("stop must not contain empty strings")
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, (list, tuple)):
                raise ValueError(f"stop_token_ids must be a list of int, got "
                                 f"{type(self.stop_token_ids).__name__}")
            if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
                raise ValueError(f"stop_token_ids must have at most {MAX_STOP_TOKEN_IDS} ids, "
                                 f"got {len(self.stop_token_ids)}")
            for t in self.stop_token_ids:
                if not _is_int(t) or not 0 <= t <= _TOP_K_MAX:
                    raise ValueError(f"stop_token_ids must contain non-negative ints, got {t!r}")

        need_bool("ignore_eos")
        need_int("max_tokens", optional=True)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        need_int("min_tokens")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens={self.max_tokens}, "
                             f"got {self.min_tokens}")
        need_int("logprobs", optional=True)
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be non-negative, got {self.logprobs}")
        need_int("prompt_logprobs", optional=True)
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError(f"prompt_logprobs must be non-negative, got {self.prompt_logprobs}")
        need_bool("skip_special_tokens")
        need_bool("include_stop_str_in_output")
        need_bool("detokenize")

    def _normalize(self) -> None:
        if self.top_k == -1:
            self.top_k = 0  # one spelling of "off" downstream
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        if self.is_greedy:
            # Filters are meaningless under argmax; resetting them lets the sampler skip work.
            self.top_p = 1.0
            self.top_k = 0
            self.min_p = 0.0

    # ---- derived ----------------------------------------------------------------------------

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    @property
    def sampling_type(self) -> SamplingType:
        if self.is_greedy:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def has_penalties(self) -> bool:
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)

    def clone(self) -> "SamplingParams":
        return copy.deepcopy(self)
