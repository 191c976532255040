"""The model runner: inputs into persistent buffers, the forward (eager or a CUDA graph),
sampling, and the three speculative-decoding calls (metadata, verify with SCV, commit with
NWOR). It runs on CUDA or, with torch reference kernels, on the CPU."""
from __future__ import annotations

import time
from typing import Optional

import torch

from vllm.config import VllmConfig
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.logger import init_logger
from vllm.model_executor.model_loader.loader import load_model
from vllm.platform import nvtx_range
from vllm.v1.attention.kv_layout import allocate_kv_cache, kv_bytes_per_block
from vllm.v1.core.sched_output import RunnerOutput, SchedulerOutput
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.sampler import Sampler
from vllm.v1.spec_decode.proposer import ProposeReq, ProposerContext, build_proposer
from vllm.v1.spec_decode.spec_step import SpecDecodeCounters, SpecDecodeStep
from vllm.v1.worker.cudagraph import CudaGraphRunner, default_capture_sizes
from vllm.v1.worker.input_batch import InputBuffers
from vllm.v1.worker.kv_cache_alloc import num_kv_blocks
from vllm.v1.worker.sampling_utils import gather_logprobs, mask_min_tokens

logger = init_logger(__name__)


class GPUModelRunner:
    def __init__(self, config: VllmConfig, device: torch.device):
        self.config = config
        self.device = device
        mc = config.model_config
        self.dtype = mc.dtype
        self.model = load_model(mc.hf_config, mc.model_path, mc.load_format, mc.dtype, device,
                                seed=mc.seed)
        self.block_size = config.cache_config.block_size
        self.num_layers = mc.num_layers
        tp = config.parallel_config.tensor_parallel_size
        self.num_kv_heads = mc.num_kv_heads // tp
        self.head_dim = mc.head_dim
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        self.proposer = build_proposer(ProposerContext(
            config, device, self.dtype, self.block_size, self.model,
            lambda t, r, b: InputBuffers(t, r, b, self.block_size, device)))
        self.kv_cache: Optional[torch.Tensor] = None
        self.graphs = CudaGraphRunner([])
        self.spec_step: Optional[SpecDecodeStep] = None   # when speculative decoding is on
        self.step_times: list[float] = []

    # ------------------------------------------------------------------ set-up
    def profile_num_blocks(self) -> int:
        per_block = kv_bytes_per_block(self.num_layers, self.block_size, self.num_kv_heads,
                                       self.head_dim, self.dtype)
        per_block += self.proposer.kv_bytes_per_block() if self.proposer else 0
        return num_kv_blocks(self.config, self.device, per_block, self._profile_forward)

    def _profile_forward(self) -> None:
        """One forward at the largest batch, to measure peak activation memory."""
        sc = self.config.scheduler_config
        T = sc.max_num_batched_tokens
        dummy = allocate_kv_cache(self.num_layers, 1, self.block_size, self.num_kv_heads,
                                  self.head_dim, self.dtype, self.device)
        bufs = InputBuffers(T, 1, 1, self.block_size, self.device)
        bufs.slot_mapping.fill_(-1)
        bufs.token_req_idx.zero_()
        bufs.query_start_loc[1] = T
        md = bufs.attn_view(T)
        with torch.inference_mode(), set_forward_context(ForwardContext(md, dummy)):
            h = self.model(bufs.input_ids[:T], bufs.positions[:T])
            self.model.compute_logits(h[:min(T, sc.max_num_seqs)])

    def initialize_kv_cache(self, num_blocks: int) -> None:
        cfg = self.config
        self.num_blocks = num_blocks
        self.kv_cache = allocate_kv_cache(self.num_layers, num_blocks, self.block_size,
                                          self.num_kv_heads, self.head_dim, self.dtype,
                                          self.device)
        if self.proposer is not None:
            self.proposer.initialize_kv_cache(num_blocks)
        sc = cfg.scheduler_config
        k = cfg.num_lookahead_tokens
        max_blocks = (sc.max_model_len + k + self.block_size - 1) // self.block_size + 1
        self.max_tokens = sc.max_num_batched_tokens
        self.buffers = InputBuffers(self.max_tokens, sc.max_num_seqs, max_blocks,
                                    self.block_size, self.device)
        if cfg.speculative_config is not None:
            self.spec_step = SpecDecodeStep(cfg, self.device, self.num_layers, self.num_kv_heads,
                                            self.head_dim, self.dtype)
        if self.device.type == "cuda" and not cfg.enforce_eager:
            self.graphs = CudaGraphRunner(default_capture_sizes(
                min(self.max_tokens, 512)))
            self.graphs.capture(self._graph_forward)

    @property
    def staging(self) -> Optional[torch.Tensor]:
        return self.spec_step.staging if self.spec_step else None

    def spec_decode_counters(self) -> Optional[SpecDecodeCounters]:
        return self.spec_step.counters() if self.spec_step else None

    def _graph_forward(self, T: int) -> torch.Tensor:
        md = self.buffers.attn_view(T, with_stage=self.staging is not None)
        with set_forward_context(ForwardContext(md, self.kv_cache, self.staging)):
            return self.model(self.buffers.input_ids[:T], self.buffers.positions[:T])

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> RunnerOutput:
        for rid in so.finished_req_ids:
            self.generators.pop(rid, None)
            if self.proposer is not None:
                self.proposer.drop(rid)
        if not so.reqs:
            return RunnerOutput([], [])
        t0 = time.perf_counter()
        # One NVTX range per whole step (forward, sampling, SCV, NWOR commit, the host sync):
        # Nsight Compute's app-range replay measures DRAM traffic over exactly this.
        with nvtx_range("step"):
            sampled, logits, inp = self._step(so)
        reqs = so.reqs
        logprobs = None
        if any(r.params.logprobs is not None for r in reqs):
            logprobs = gather_logprobs(logits, reqs, inp.req_first_row, sampled)
        self.step_times.append(time.perf_counter() - t0)
        return RunnerOutput(req_ids=[r.req_id for r in reqs], sampled_token_ids=sampled,
                            logprobs=logprobs, num_spec=[r.num_spec for r in reqs])

    def _step(self, so: SchedulerOutput):
        reqs = so.reqs
        spec = self.spec_step
        plan = spec.plan(so) if spec is not None else None
        T = so.num_tokens
        Tp = self.graphs.padded_size(T)
        inp = self.buffers.prepare(so, Tp or T, plan)
        with nvtx_range("forward"):
            if Tp is not None:
                hidden = self.graphs.replay(Tp)[:T]
            else:
                ctx = ForwardContext(inp.attn, self.kv_cache, self.staging)
                with set_forward_context(ctx):
                    hidden = self.model(inp.input_ids, inp.positions)[:T]
        if self.proposer is not None:
            self.proposer.observe_target(so, hidden, inp.hidden_rows_per_req)
        logits = self.model.compute_logits(hidden[inp.logits_indices])   # [N, V] fp32

        plain = [i for i, r in enumerate(reqs) if r.sample and r.num_spec == 0]
        plain_tokens = None
        if plain:
            rows = [inp.req_first_row[i] for i in plain]
            plain_logits = logits[rows] if len(rows) != logits.shape[0] else logits
            mask_min_tokens(plain_logits, [reqs[i] for i in plain])
            md = self._sampling_metadata([reqs[i] for i in plain])
            plain_tokens = self.sampler(plain_logits, md, compute_selected=False).sampled_token_ids
        spec_out = None
        if inp.spec is not None:
            plan = plan.with_drafts(inp.spec)
            md = self._sampling_metadata([reqs[i] for i in inp.spec.req_indices])
            spec_out = spec.verify_and_commit(plan, logits, md, self.kv_cache)

        # The one host sync of the step.
        sampled: list[list[int]] = [[] for _ in reqs]
        if plain_tokens is not None:
            for i, tok in zip(plain, plain_tokens.tolist()):
                sampled[i] = [tok]
        if spec_out is not None:
            for i, toks in zip(plan.drafts.req_indices, spec.to_host(plan, spec_out)):
                sampled[i] = toks
        return sampled, logits, inp

    def _sampling_metadata(self, reqs) -> SamplingMetadata:
        gens = {}
        for row, r in enumerate(reqs):
            if r.params.seed is not None and not r.params.is_greedy:
                g = self.generators.get(r.req_id)
                if g is None:
                    g = torch.Generator(device=self.device)
                    g.manual_seed(r.params.seed)
                    self.generators[r.req_id] = g
                gens[row] = g
        return SamplingMetadata.build(
            [r.params for r in reqs], gens,
            [r.prompt_token_ids or [] for r in reqs],
            [r.output_token_ids or [] for r in reqs], self.device)

    # ------------------------------------------------------------------ drafting
    @torch.inference_mode()
    def propose(self, reqs: list[ProposeReq]) -> dict[str, list[int]]:
        if self.proposer is None or not reqs:
            return {}
        return self.proposer.propose(reqs)
