"""SamplingMetadata: the per-step, per-row sampling parameters as device tensors plus host flags.

Rows are sampling positions. The normal sampler has one row per request; the rejection sampler
gets one row per REQUEST too and expands it to the request's draft + bonus positions itself.
Host flags (all_greedy, no_penalties, ...) are computed from the Python params while building, so
the sampler can skip whole stages without reading a device tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from vllm.platform import to_device_async
from vllm.sampling_params import _SAMPLING_EPS, SamplingParams


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A per-request generator; the caller keeps it across steps so a seeded request's stream
    does not depend on which other requests share its batch."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor            # [N] fp32, raw (greedy rows hold their ~0 value)
    top_p: torch.Tensor                  # [N] fp32, 1.0 = off
    top_k: torch.Tensor                  # [N] int64, 0 = off
    min_p: torch.Tensor                  # [N] fp32, 0.0 = off
    presence_penalties: torch.Tensor     # [N] fp32
    frequency_penalties: torch.Tensor    # [N] fp32
    repetition_penalties: torch.Tensor   # [N] fp32
    all_greedy: bool
    all_random: bool
    no_penalties: bool
    no_top_k: bool
    no_top_p: bool
    no_min_p: bool
    generators: dict[int, torch.Generator]   # row -> seeded generator (seeded random rows only)
    output_token_ids: list[list[int]]        # [N][*] tokens generated so far (penalties)
    prompt_token_ids: Optional[list[list[int]]]  # [N][*] (repetition penalty); None if unknown
    max_num_logprobs: Optional[int]          # max over rows of params.logprobs; None = none asked
    device: torch.device = torch.device("cpu")
    # Padded token tensors, built on first use: penalties are rare, so most steps never pay.
    _padded: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_rows(self) -> int:
        return self.temperature.shape[0]

    @property
    def is_greedy(self) -> torch.Tensor:
        """[N] bool on device: rows that take the argmax."""
        return self.temperature < _SAMPLING_EPS

    def padded_token_ids(self, which: str, pad_id: int) -> torch.Tensor:
        """[N, L] int64 on device, ragged rows right-padded with ``pad_id`` (cached per pad_id).

        which: 'prompt' or 'output'. Penalty code pads with vocab_size and scatters into V + 1
        columns so the padding lands in a throwaway column.
        """
        key = (which, pad_id)
        if key not in self._padded:
            if which == "prompt":
                if self.prompt_token_ids is None:
                    raise ValueError("prompt_token_ids is required for repetition penalties")
                rows = self.prompt_token_ids
            elif which == "output":
                rows = self.output_token_ids
            else:
                raise ValueError(f"which must be 'prompt' or 'output', got {which!r}")
            if len(rows) != self.num_rows:
                raise ValueError(f"{which}_token_ids has {len(rows)} rows, "
                                 f"expected {self.num_rows}")
            width = max((len(r) for r in rows), default=0)
            host = torch.full((len(rows), width), pad_id, dtype=torch.int64)
            for i, r in enumerate(rows):
                if r:
                    host[i, :len(r)] = torch.as_tensor(r, dtype=torch.int64)
            self._padded[key] = to_device_async(host, self.device)
        return self._padded[key]

    @staticmethod
    def build(params_list: Sequence[SamplingParams],
              generators: Optional[dict[int, torch.Generator]] = None,
              prompt_ids: Optional[list[list[int]]] = None,
              output_ids: Optional[list[list[int]]] = None,
              device: torch.device | str = "cpu") -> "SamplingMetadata":
        """One row per entry of ``params_list`` (repeat a request's params for several rows).

        generators: row -> generator for seeded rows (see make_generator); rows of unseeded
        requests draw from the global generator.
        """
        device = torch.device(device)
        n = len(params_list)
        generators = dict(generators or {})
        for row in generators:
            if not 0 <= row < n:
                raise ValueError(f"generators has row {row}, outside [0, {n})")
        if output_ids is None:
            output_ids = [[] for _ in range(n)]
        if len(output_ids) != n:
            raise ValueError(f"output_ids has {len(output_ids)} rows, expected {n}")
        if prompt_ids is not None and len(prompt_ids) != n:
            raise ValueError(f"prompt_ids has {len(prompt_ids)} rows, expected {n}")

        floats = [[p.temperature for p in params_list], [p.top_p for p in params_list],
                  [p.min_p for p in params_list], [p.presence_penalty for p in params_list],
                  [p.frequency_penalty for p in params_list],
                  [p.repetition_penalty for p in params_list]]
        # One host tensor, one H2D copy for all six float fields.
        packed = to_device_async(torch.tensor(floats, dtype=torch.float32).reshape(6, n), device)
        top_k = to_device_async(torch.tensor([p.top_k for p in params_list], dtype=torch.int64), device)

        greedy = [p.is_greedy for p in params_list]
        random_rows = [not g for g in greedy]
        logprobs = [p.logprobs for p in params_list if p.logprobs is not None]
        return SamplingMetadata(
            temperature=packed[0], top_p=packed[1], top_k=top_k, min_p=packed[2],
            presence_penalties=packed[3], frequency_penalties=packed[4],
            repetition_penalties=packed[5],
            all_greedy=all(greedy), all_random=all(random_rows),
            no_penalties=not any(p.has_penalties for p in params_list),
            # Greedy rows never filter; only random rows' filters matter.
            no_top_k=all(p.top_k <= 0 or g for p, g in zip(params_list, greedy)),
            no_top_p=all(p.top_p >= 1.0 or g for p, g in zip(params_list, greedy)),
            no_min_p=all(p.min_p <= 0.0 or g for p, g in zip(params_list, greedy)),
            generators=generators, output_token_ids=output_ids, prompt_token_ids=prompt_ids,
            max_num_logprobs=max(logprobs) if logprobs else None, device=device)

