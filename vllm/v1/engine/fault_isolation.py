"""Pinning a failed engine step on the request it belongs to.

When ``LLMEngine.step()`` raises, the whole batch's step is lost, but the cause is usually one
request's own data (its sampling parameters, its generator, its token ids). ``request_fault``
replays that request's per-request preparation alone, on the host, with a one-row batch: the
model-facing checks (token ids and stop ids inside the vocabulary, top_k <= vocabulary), the
generator seeding, the sampling metadata, min_tokens masking and one sampler call. A request
whose replay raises is the culprit; the others did nothing wrong.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch

from vllm.sampling_params import SamplingParams
from vllm.v1.request import Request


def check_params_for_model(params: SamplingParams, vocab_size: int) -> None:
    """ValueError naming the field when a parameter does not fit the model's vocabulary."""
    if params.top_k > vocab_size:
        raise ValueError(f"top_k must be -1, 0 or at most the vocabulary size ({vocab_size}), "
                         f"got {params.top_k}")
    for t in params.stop_token_ids or ():
        if not 0 <= t < vocab_size:
            raise ValueError(f"stop_token_ids must be token ids in [0, {vocab_size}), got {t}")


def request_fault(req: Request, vocab_size: int) -> Optional[str]:
    """Why this request alone cannot be stepped, or None if its preparation replays cleanly."""
    from vllm.v1.sample.metadata import SamplingMetadata, make_generator
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.sampling_utils import mask_min_tokens

    p = req.sampling_params
    try:
        check_params_for_model(p, vocab_size)
        bad = next((t for t in req.all_token_ids
                    if not isinstance(t, int) or not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad!r} is outside [0, {vocab_size})")
        with torch.inference_mode():
            gens = {}
            if p.seed is not None and not p.is_greedy:
                gens[0] = make_generator(p.seed, "cpu")
            md = SamplingMetadata.build([p], gens, [list(req.prompt_token_ids)],
                                        [list(req.output_token_ids)], "cpu")
            logits = torch.zeros(1, vocab_size)
            # num_output_tokens=0: exercise the min_tokens mask whatever the request's progress.
            mask_min_tokens(logits, [SimpleNamespace(params=p, num_output_tokens=0,
                                                     eos_token_id=req.eos_token_id)])
            Sampler()(logits, md, compute_selected=False)
    except Exception as e:  # noqa: BLE001 - any failure of its own replay is the request's
        return f"{type(e).__name__}: {e}"
    return None
