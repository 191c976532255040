"""The offline API: LLM(...).generate(prompts, sampling_params)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from tqdm.auto import tqdm

from vllm.engine.arg_utils import DEFAULT_MODEL, EngineArgs
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.llm_engine import LLMEngine
from vllm.v1.metrics.reader import metrics_dict, to_metrics

PromptType = Union[str, list[int], dict]


class LLM:
    def __init__(self, model: str = DEFAULT_MODEL, tokenizer: Optional[str] = None,
                 dtype: str = "auto", max_model_len: Optional[int] = None,
                 gpu_memory_utilization: float = 0.9, max_num_seqs: int = 256,
                 max_num_batched_tokens: Optional[int] = None, block_size: int = 16,
                 enforce_eager: bool = False, seed: int = 0, tensor_parallel_size: int = 1,
                 load_format: str = "auto", speculative_config: Optional[Any] = None,
                 **kwargs):
        args = EngineArgs(model=model, tokenizer=tokenizer, dtype=dtype,
                          max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization,
                          max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens,
                          block_size=block_size, enforce_eager=enforce_eager, seed=seed,
                          tensor_parallel_size=tensor_parallel_size, load_format=load_format,
                          speculative_config=speculative_config)
        for k, v in kwargs.items():
            if not hasattr(args, k):
                raise ValueError(f"LLM got an unknown argument {k!r}")
            setattr(args, k, v)
        self.llm_engine = LLMEngine.from_engine_args(args)
        self._next_id = 0

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(self, prompts: Union[PromptType, Sequence[PromptType]],
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)) or (
                isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError("sampling_params must be one SamplingParams or one per prompt")
        eng = self.llm_engine
        ids = []
        try:
            for p, sp in zip(prompts, params):
                rid = f"llm-{self._next_id}"
                self._next_id += 1
                eng.add_request(rid, p, sp)
                ids.append(rid)
        except Exception:
            eng.abort_request(ids)
            raise
        return self._run(ids, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        eng = self.llm_engine
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm)
        try:
            while eng.has_unfinished_requests():
                try:
                    outs = eng.step()
                except Exception as e:
                    # Leave the engine clean for the next call (nothing of ours left waiting
                    # for ever), then report: blamed requests by name, else the step's error.
                    failed = eng.fail_step_requests(e) or {}
                    eng.abort_request(ids)
                    if failed:
                        raise RuntimeError("; ".join(f"request {rid} failed: {why}"
                                                     for rid, why in failed.items())) from e
                    raise
                for out in outs:
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        finally:
            bar.close()
        return [done[i] for i in ids]

    def get_metrics(self):
        """Upstream-style metric objects (Counter / Gauge / Vector / Histogram)."""
        return to_metrics(self.llm_engine.stats)

    def get_metrics_dict(self) -> dict[str, float]:
        return metrics_dict(self.llm_engine.stats)

    def shutdown(self) -> None:
        self.llm_engine.shutdown()
