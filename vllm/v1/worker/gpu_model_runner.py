"""The model runner: inputs into persistent buffers, the forward (eager or a CUDA graph),
sampling, and the three speculative-decoding calls (metadata, verify with SCV, commit with
NWOR). It runs on CUDA or, with torch reference kernels, on the CPU."""
from __future__ import annotations

import time
from collections import deque
from typing import Optional

import numpy as np
import torch

from vllm.config import VllmConfig
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.logger import init_logger
from vllm.model_executor.model_loader.loader import load_model
from vllm.platform import nvtx_range, to_device_async
from vllm.v1.attention.kv_layout import allocate_kv_cache, kv_bytes_per_block
from vllm.v1.constants import PADDING_SLOT_ID
from vllm.v1.core.sched_output import RunnerOutput, SchedulerOutput
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.sampler import Sampler
from vllm.v1.spec_decode.chain import SpecChain, chain_unsupported_reason, step_samples
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
            lambda t, r, b: InputBuffers(t, r, b, self.block_size, device),
            CudaGraphRunner, default_capture_sizes))
        self.kv_cache: Optional[torch.Tensor] = None
        self.graphs = CudaGraphRunner([])
        # Decode batches of greedy requests: forward, LM head and argmax in one graph.
        self.greedy_graphs = CudaGraphRunner([])
        self.spec_step: Optional[SpecDecodeStep] = None   # when speculative decoding is on
        self.chain: Optional[SpecChain] = None   # chained speculative steps, when they can run
        # Host time of each step launch; bounded, a server runs for ever.
        self.step_times: deque[float] = deque(maxlen=64)
        self._last_tokens: Optional[torch.Tensor] = None   # [n] previous launch's samples
        self._last_rows: dict[str, int] = {}               # request id -> row in it

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
            if self.graphs.enabled:
                # Also with speculative decoding: its steps without drafts are plain decodes.
                self.greedy_graphs = CudaGraphRunner(default_capture_sizes(
                    min(self.max_tokens, 512, sc.max_num_seqs)), pool=self.graphs.pool,
                    name="greedy decode")
                self.greedy_graphs.capture(self._graph_forward_greedy)
        if cfg.speculative_config is not None:
            self._init_chain()

    def _init_chain(self) -> None:
        why = chain_unsupported_reason(self.config)
        if why is not None:
            logger.info("Chained speculative steps off: %s", why)
            return
        use_graphs = self.device.type == "cuda" and not self.config.enforce_eager
        sc = self.config.speculative_config
        self.chain = SpecChain(sc.num_speculative_tokens,
                               self.buffers, self._graph_forward, self.model.compute_logits,
                               self.proposer, self.kv_cache,
                               # shares the forward graphs' pool: they never run concurrently
                               lambda sizes, name: CudaGraphRunner(sizes, pool=self.graphs.pool,
                                                                   name=name),
                               default_capture_sizes, use_graphs,
                               ngram=((sc.prompt_lookup_min, sc.prompt_lookup_max)
                                      if sc.method == "ngram" else None),
                               max_model_len=self.config.scheduler_config.max_model_len,
                               staging=self.staging)
        logger.info("Chained speculative steps on: verify + drafting in one launch%s, the next "
                    "step launched before this one's tokens reach the host",
                    " (CUDA graphs)" if self.chain.graphs.graphs else "")

    @property
    def supports_chain(self) -> bool:
        return self.chain is not None

    def chain_exit(self, exits: list[tuple[str, int]]) -> None:
        """Requests (id, tokens) left the chain: the drafter takes over their bookkeeping."""
        if self.chain is not None:
            self.chain.reset()
        for rid, n in exits:
            self.proposer.chain_exit(rid, n)

    @torch.inference_mode()
    def calibrate_verify_cost(self, max_tokens: int, reps: int = 3) -> dict[int, float]:
        """Seconds of a target forward plus LM head over n tokens, for each capture size n up
        to max_tokens (the median of `reps` runs): the verify cost of the adaptive draft
        length's cost model. Run once at start-up, before any request: the padded rows neither
        attend nor write, so attention over long contexts is not in it (the controller's
        measured residual carries it)."""
        limit = min(max_tokens, self.max_tokens)
        sizes = [s for s in (self.graphs.sizes if self.graphs.graphs else
                             default_capture_sizes(limit)) if s <= limit]
        b = self.buffers
        b.slot_mapping.fill_(PADDING_SLOT_ID)
        b.token_req_idx.fill_(-1)
        cuda = self.device.type == "cuda"
        out: dict[int, float] = {}
        for n in sizes:
            times = []
            for _ in range(reps + 1):       # the first run warms up
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                if self.graphs.padded_size(n) == n:
                    hidden = self.graphs.replay(n)
                else:
                    md = b.attn_view(n, with_stage=self.staging is not None)
                    with set_forward_context(ForwardContext(md, self.kv_cache, self.staging)):
                        hidden = self.model(b.input_ids[:n], b.positions[:n])
                self.model.compute_logits(hidden[:n])
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            out[n] = float(np.median(times[1:]))
        return out

    @property
    def staging(self) -> Optional[torch.Tensor]:
        return self.spec_step.staging if self.spec_step else None

    def spec_decode_counters(self) -> Optional[SpecDecodeCounters]:
        return self.spec_step.counters() if self.spec_step else None

    def _graph_forward(self, T: int) -> torch.Tensor:
        md = self.buffers.attn_view(T, with_stage=self.staging is not None)
        with set_forward_context(ForwardContext(md, self.kv_cache, self.staging)):
            return self.model(self.buffers.input_ids[:T], self.buffers.positions[:T])

    def _graph_forward_greedy(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """T decode tokens, one per request: hidden [T, H] and the argmax token of each [T]."""
        hidden = self._graph_forward(T)
        return hidden, self.model.compute_logits(hidden).argmax(dim=-1)

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> RunnerOutput:
        """One step, synchronously: returns the sampled tokens on the host."""
        return self.execute_model_async(so).result()

    @torch.inference_mode()
    def execute_model_async(self, so: SchedulerOutput) -> "PendingOutput":
        """Launches one step and returns at once; ``result()`` waits for its tokens. Tokens the
        scheduler marked unknown (sampled by the previous launch) are filled in on the device."""
        for rid in so.finished_req_ids:
            self.generators.pop(rid, None)
            if self.proposer is not None:
                self.proposer.drop(rid)
        if not so.reqs:
            return PendingOutput.empty()
        t0 = time.perf_counter()
        # One NVTX range per whole step launch (forward, sampling, SCV, NWOR commit): Nsight
        # Compute's app-range replay measures DRAM traffic over exactly this.
        with nvtx_range("step"):
            pending = self._launch(so)
        self.step_times.append(time.perf_counter() - t0)
        return pending

    def _launch(self, so: SchedulerOutput) -> "PendingOutput":
        if so.chain:
            return self._launch_chain(so)
        reqs = so.reqs
        spec = self.spec_step
        plan = spec.plan(so) if spec is not None else None
        T = so.num_tokens
        Tp = self.graphs.padded_size(T)
        inp = self.buffers.prepare(so, Tp or T, plan)
        if inp.unknown_rows is not None:
            self._fill_unknown_tokens(reqs, inp)
        Tg = self.greedy_graphs.padded_size(T) if T == len(reqs) else None
        if Tg is not None and Tg == Tp and all(r.sample and not r.num_spec and _plain_greedy(r)
                                  and r.params.logprobs is None for r in reqs):
            return self._launch_greedy_decode(so, inp, Tg)
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
            plain_reqs = [reqs[i] for i in plain]
            rows = [inp.req_first_row[i] for i in plain]
            plain_logits = logits if len(rows) == logits.shape[0] else \
                logits.index_select(0, to_device_async(torch.tensor(rows), self.device))
            if all(_plain_greedy(r) for r in plain_reqs):
                plain_tokens = plain_logits.argmax(dim=-1)   # no metadata to build or copy
            else:
                mask_min_tokens(plain_logits, plain_reqs)
                md = self._sampling_metadata(plain_reqs)
                plain_tokens = self.sampler(plain_logits, md,
                                            compute_selected=False).sampled_token_ids
            # The next launch reads these on the device (asynchronous scheduling).
            self._last_tokens = plain_tokens
            self._last_rows = {r.req_id: j for j, r in enumerate(plain_reqs)}
        else:
            self._last_tokens, self._last_rows = None, {}
        spec_out = None
        if inp.spec is not None:
            md = self._sampling_metadata([reqs[i] for i in inp.spec.req_indices])
            plan = plan.with_drafts(inp.spec)
            spec_out = spec.verify_and_commit(plan, logits, md, self.kv_cache)
        return self._pending(so, inp, logits, plain, plain_tokens, spec_out, plan)

    def _launch_chain(self, so: SchedulerOutput) -> "PendingOutput":
        """A chained speculative step (spec_decode/chain.py): one replay of its graph."""
        chain, K1 = self.chain, self.chain.k + 1
        R = len(so.reqs)
        sampling = step_samples(so.reqs)
        rows = chain.padded_rows(R, sampling)
        n = rows or R
        self.buffers.prepare(so, n * K1, None, extra=chain.host_inputs(so.reqs, n, sampling))
        if chain.staging is not None:
            self.spec_step.nwor.begin(R * chain.k, R)
        out = chain.launch(so.reqs, rows, sampling)
        self._last_tokens, self._last_rows = None, {}
        # A copy now: the static output is rewritten by the next step (launched before this
        # one is read).
        host, done = _start_host_copy(out) if self.device.type == "cuda" else (out.clone(), None)
        p = PendingOutput(self, so, None, None, [], None, None, done, None, None)
        p.chain_tokens = host
        return p

    def _launch_greedy_decode(self, so, inp, Tg: int) -> "PendingOutput":
        """Every request decodes one greedy token: a single graph replay yields the tokens."""
        T = len(so.reqs)
        with nvtx_range("forward"):
            hidden, tokens = self.greedy_graphs.replay(Tg)
        if self.proposer is not None:
            self.proposer.observe_target(so, hidden[:T], inp.hidden_rows_per_req)
        tokens = tokens[:T]
        self._last_tokens = tokens
        self._last_rows = {r.req_id: j for j, r in enumerate(so.reqs)}
        return self._pending(so, inp, None, list(range(T)), tokens, None, None)

    def _pending(self, so, inp, logits, plain, plain_tokens, spec_out, plan) -> "PendingOutput":
        host_tokens, done = None, None
        if plain_tokens is not None and self.device.type == "cuda":
            host_tokens, done = _start_host_copy(plain_tokens)
        return PendingOutput(self, so, inp, logits, plain, plain_tokens, host_tokens, done,
                             spec_out, plan)

    def _fill_unknown_tokens(self, reqs, inp) -> None:
        """input_ids rows whose token the host does not know yet <- the previous launch's
        sampled tokens, gathered on the device (no host round trip)."""
        dst = inp.unknown_rows
        last = self._last_rows
        try:
            src = [last[reqs[i].req_id] for i in inp.unknown_reqs]
        except KeyError as e:
            raise RuntimeError(f"request {e.args[0]} has an unknown token but was not sampled "
                               "by the previous step") from None
        n = len(src)
        if n == len(last) and dst[-1] == n - 1 and src == list(range(n)):
            # The common decode step: the same requests in the same order, one token each.
            self.buffers.input_ids[:n].copy_(self._last_tokens)
            return
        idx = to_device_async(torch.from_numpy(np.stack([dst, np.asarray(src, dtype=np.int64)])),
                              self.device)
        self.buffers.input_ids.index_copy_(0, idx[0], self._last_tokens.index_select(0, idx[1]))

    def _finish(self, p: "PendingOutput") -> RunnerOutput:
        """The host side of a launched step: its tokens (the step's one sync), logprobs."""
        reqs = p.so.reqs
        if p.chain_tokens is not None:
            return self._finish_chain(p)
        sampled: list[list[int]] = [[] for _ in reqs]
        if p.plain_tokens is not None:
            if p.done is not None:
                _wait(p.done)
                toks = p.host_tokens.tolist()
            else:
                toks = p.plain_tokens.tolist()
            for i, tok in zip(p.plain, toks):
                sampled[i] = [tok]
        if p.spec_out is not None:
            spec = self.spec_step
            for i, toks in zip(p.plan.drafts.req_indices, spec.to_host(p.plan, p.spec_out)):
                sampled[i] = toks
        logprobs = None
        if any(r.params.logprobs is not None for r in reqs):
            logprobs = gather_logprobs(p.logits, reqs, p.inp.req_first_row, sampled)
        return RunnerOutput(req_ids=[r.req_id for r in reqs], sampled_token_ids=sampled,
                            logprobs=logprobs, num_spec=[r.num_spec for r in reqs])

    def _finish_chain(self, p: "PendingOutput") -> RunnerOutput:
        if p.done is not None:
            _wait(p.done)
        reqs = p.so.reqs
        k = self.chain.k
        stats = self.spec_step.stats
        sampled = []
        for row in p.chain_tokens.tolist():
            toks = [t for t in row if t >= 0]
            stats.observe(k, len(toks) - 1)
            sampled.append(toks)
        if self.chain.staging is not None:
            self.spec_step.nwor.record([len(t) - 1 for t in sampled])
        return RunnerOutput(req_ids=[r.req_id for r in reqs], sampled_token_ids=sampled,
                            num_spec=[k] * len(reqs))

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
        drafts = self.proposer.propose(reqs)
        if self.spec_step is not None:
            self.spec_step.stats.num_draft_tokens_stopped = self.proposer.stopped_tokens
        return drafts


def _start_host_copy(t: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
    """Starts copying a device tensor to pinned host memory (truly asynchronous) -> (the host
    tensor, an event recorded after the copy); result() only waits for the event."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def _wait(done: torch.cuda.Event) -> None:
    """Poll rather than block in the driver: the GIL goes to other threads (the server's
    event loop) meanwhile, and no synchronizing CUDA call is made."""
    while not done.query():
        time.sleep(0)


def _plain_greedy(r) -> bool:
    """Sampling this row is a bare argmax: greedy, no penalties, no min_tokens mask active."""
    p = r.params
    return (p.is_greedy and not p.has_penalties
            and not (p.min_tokens and r.num_output_tokens < p.min_tokens))


class PendingOutput:
    """A launched step. ``result()`` blocks until its tokens are on the host (once)."""

    def __init__(self, runner, so, inp, logits, plain, plain_tokens, host_tokens, done,
                 spec_out, plan):
        self.runner, self.so, self.inp, self.logits = runner, so, inp, logits
        self.plain, self.plain_tokens = plain, plain_tokens
        self.host_tokens, self.done = host_tokens, done
        self.spec_out, self.plan = spec_out, plan
        self.chain_tokens: Optional[torch.Tensor] = None   # [R, k + 1] host (chained step)
        self._result: Optional[RunnerOutput] = None

    @staticmethod
    def empty() -> "PendingOutput":
        p = PendingOutput(None, None, None, None, [], None, None, None, None, None)
        p._result = RunnerOutput([], [])
        return p

    def result(self) -> RunnerOutput:
        if self._result is None:
            self._result = self.runner._finish(self)
            self.runner = self.inp = self.logits = self.spec_out = self.plan = None
        return self._result
