#!/usr/bin/env python3
"""Three forward passes of this engine's model code, for the roofline study (seed 003):

  v0_prefill  P prompt tokens per sequence, NO cache: nothing is written to or read from the
              paged KV cache (slot_mapping = -1, context 0); attention sees only the step's K/V.
  v1_prefill  the same P tokens, BUILDING the cache: every token's K/V is written to its slot.
  v1_decode   one new token per sequence, attending to the P cached positions.

Each stage runs --warmup times, then once inside an NVTX range named after the stage (between
cudaProfilerStart / cudaProfilerStop, so `ncu --profile-from-start off --nvtx --nvtx-include
'<stage>/'` selects exactly that pass), then --iters timed runs (CUDA events on a GPU, a
wall clock on the CPU). Logits are computed for the last token of each sequence, as the engine
does. Weights are random ("dummy"): FLOPs and bytes depend on shapes only.

  python3 tools/roofline/profile_decode_step.py --P 512 --batch 1 --model gpt2-medium \\
      --dtype float16 --output /tmp/stages.json

The JSON holds, per stage, the median time and an analytic count of the useful FLOPs and of
the fewest DRAM bytes (each weight read once, KV read/written once; activations not counted),
so the hardware counters of run_ncu.sh can be read against them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

STAGES = ("v0_prefill", "v1_prefill", "v1_decode")


def model_config(name: str):
    """HF config with the shapes of `name` (no weights, no download)."""
    from transformers import GPT2Config, LlamaConfig
    gpt2 = {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20),
            "tiny-gpt2": (64, 2, 4)}
    if name in gpt2:
        h, layers, heads = gpt2[name]
        cfg = GPT2Config(n_embd=h, n_layer=layers, n_head=heads,
                         n_positions=256 if name.startswith("tiny") else 1024,
                         vocab_size=512 if name.startswith("tiny") else 50257,
                         bos_token_id=0, eos_token_id=0)
        cfg.architectures = ["GPT2LMHeadModel"]
        return cfg
    llama = {  # hidden, intermediate, layers, heads, kv heads, vocab, rope theta, tied
        "smollm2": (576, 1536, 30, 9, 3, 49152, 100000.0, True),
        "llama3-8b": (4096, 14336, 32, 32, 8, 128256, 500000.0, False),
        "tiny-llama": (64, 128, 2, 4, 2, 512, 10000.0, False),
    }
    if name in llama:
        h, inter, layers, heads, kv, vocab, theta, tied = llama[name]
        cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                          max_position_embeddings=8192, rope_theta=theta, rms_norm_eps=1e-5,
                          tie_word_embeddings=tied)
        cfg.architectures = ["LlamaForCausalLM"]
        return cfg
    raise ValueError(f"--model {name!r}: expected one of {', '.join(MODELS)}")


MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "smollm2", "llama3-8b", "tiny-gpt2",
          "tiny-llama")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def geometry(cfg) -> dict:
    if cfg.architectures[0] == "GPT2LMHeadModel":
        h, layers, heads = cfg.n_embd, cfg.n_layer, cfg.n_head
        return {"hidden": h, "layers": layers, "heads": heads, "kv_heads": heads,
                "head_dim": h // heads, "vocab": cfg.vocab_size, "max_positions": cfg.n_positions}
    return {"hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
            "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads, "vocab": cfg.vocab_size,
            "max_positions": cfg.max_position_embeddings}


class Stages:
    """The model, a paged KV cache for `batch` sequences of P + 1 tokens, and one attention
    metadata per stage."""

    def __init__(self, model_name: str, P: int, batch: int, dtype: torch.dtype,
                 device: torch.device, block_size: int = 16, seed: int = 0):
        from vllm.model_executor.model_loader.loader import load_model
        self.cfg = model_config(model_name)
        self.geo = geometry(self.cfg)
        if P < 1 or batch < 1:
            raise ValueError(f"--P and --batch must be >= 1 (got P={P}, batch={batch})")
        if P + 1 > self.geo["max_positions"]:
            raise ValueError(f"--P {P}: {model_name} has {self.geo['max_positions']} positions; "
                             f"the decode token needs P + 1 <= that")
        self.P, self.B, self.dtype, self.device, self.bs = P, batch, dtype, device, block_size
        self.model = load_model(self.cfg, "", "dummy", dtype, device, seed=seed)
        g = self.geo
        nblk = -(-(P + 1) // block_size)                 # blocks per sequence
        self.nblk = nblk
        self.kv_cache = torch.zeros((g["layers"], 2, batch * nblk, block_size, g["kv_heads"],
                                     g["head_dim"]), dtype=dtype, device=device)
        # v0 has a one-block cache that is never touched (no slot, no context).
        self.no_cache = torch.zeros((g["layers"], 2, 1, block_size, g["kv_heads"],
                                     g["head_dim"]), dtype=dtype, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        self.block_tables = torch.arange(batch * nblk, **i32).view(batch, nblk)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        ids = torch.randint(0, g["vocab"], (batch, P + 1), generator=gen)
        self.prompt_ids = ids[:, :P].reshape(-1).to(device)
        self.decode_ids = ids[:, P].to(device)
        pos = torch.arange(P, device=device)
        self.prompt_pos = pos.repeat(batch)
        self.decode_pos = torch.full((batch,), P, dtype=torch.int64, device=device)
        req = torch.arange(batch, **i32)
        qsl_prefill = torch.arange(0, (batch + 1) * P, P, **i32)
        bt = self.block_tables.long()
        slots_prefill = (bt[:, pos // block_size] * block_size + pos % block_size).reshape(-1)
        slot_decode = bt[:, P // block_size] * block_size + P % block_size
        self.meta = {
            "v0_prefill": self._md(torch.full((batch * P,), -1, dtype=torch.int64,
                                              device=device),
                                   torch.zeros((batch, 1), **i32), torch.zeros(batch, **i32),
                                   qsl_prefill, req.repeat_interleave(P)),
            "v1_prefill": self._md(slots_prefill, self.block_tables, torch.zeros(batch, **i32),
                                   qsl_prefill, req.repeat_interleave(P)),
            "v1_decode": self._md(slot_decode, self.block_tables,
                                  torch.full((batch,), P, **i32),
                                  torch.arange(batch + 1, **i32), req),
        }
        self.last_prefill = torch.arange(P - 1, batch * P, P, device=device)

    @staticmethod
    def _md(slots, block_tables, context_lens, qsl, tok_req):
        from vllm.forward_context import AttentionMetadata
        return AttentionMetadata(slot_mapping=slots, block_tables=block_tables,
                                 context_lens=context_lens, query_start_loc=qsl,
                                 token_req_idx=tok_req)

    @torch.inference_mode()
    def run(self, stage: str) -> torch.Tensor:
        """One forward of `stage`; returns the logits [batch, vocab]."""
        from vllm.forward_context import ForwardContext, set_forward_context
        cache = self.no_cache if stage == "v0_prefill" else self.kv_cache
        with set_forward_context(ForwardContext(attn_metadata=self.meta[stage], kv_cache=cache)):
            if stage == "v1_decode":
                h = self.model(self.decode_ids, self.decode_pos)
            else:
                h = self.model(self.prompt_ids, self.prompt_pos)[self.last_prefill]
            return self.model.compute_logits(h)

    @torch.inference_mode()
    def reference_decode_logits(self) -> torch.Tensor:
        """The decode token's logits from a cache-free forward over all P + 1 tokens: what
        v1_decode must reproduce (a check that the cache v1_prefill builds is the right one)."""
        from vllm.forward_context import ForwardContext, set_forward_context
        B, P, dev = self.B, self.P, self.device
        i32 = dict(dtype=torch.int32, device=dev)
        ids = torch.cat([self.prompt_ids.view(B, P), self.decode_ids.view(B, 1)], 1).reshape(-1)
        pos = torch.arange(P + 1, device=dev).repeat(B)
        md = self._md(torch.full((B * (P + 1),), -1, dtype=torch.int64, device=dev),
                      torch.zeros((B, 1), **i32), torch.zeros(B, **i32),
                      torch.arange(0, (B + 1) * (P + 1), P + 1, **i32),
                      torch.arange(B, **i32).repeat_interleave(P + 1))
        with set_forward_context(ForwardContext(attn_metadata=md, kv_cache=self.no_cache)):
            h = self.model(ids, pos)[torch.arange(P, B * (P + 1), P + 1, device=dev)]
            return self.model.compute_logits(h)

    # -- analytic counts -------------------------------------------------------------------
    def linear_params(self) -> int:
        """Weights that every token multiplies (all linear layers, not the LM head)."""
        from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
        return sum(m.weight.numel() for m in self.model.modules()
                   if isinstance(m, (ColumnParallelLinear, RowParallelLinear)))

    def model_counts(self, stage: str) -> dict:
        g, P, B = self.geo, self.P, self.B
        el = torch.empty((), dtype=self.dtype).element_size()
        lin = self.linear_params()
        head = g["vocab"] * g["hidden"]
        weight_bytes = sum(p.numel() for p in self.model.parameters()) * el
        kv_tok = g["layers"] * 2 * g["kv_heads"] * g["head_dim"] * el    # K+V, all layers
        if stage == "v1_decode":
            tokens, keys = B, B * (P + 1)               # each query sees P cached + itself
            kv_read, kv_write = B * P * kv_tok, B * kv_tok
        else:
            tokens, keys = B * P, B * P * (P + 1) // 2  # causal: query i sees i + 1 keys
            kv_read, kv_write = 0, (B * P * kv_tok if stage == "v1_prefill" else 0)
        # QK^T and PV: 2 FLOPs per multiply-add, D per head, every q head
        attn = 2 * 2 * g["head_dim"] * g["heads"] * g["layers"] * keys
        flops = 2 * tokens * lin + attn + 2 * B * head
        # fewest bytes: every weight once (embedding: only the rows used, ignored) + KV
        min_bytes = weight_bytes + kv_read + kv_write
        return {"tokens": tokens, "flops_model": flops, "flops_model_linear": 2 * tokens * lin,
                "flops_model_attention": attn, "flops_model_lm_head": 2 * B * head,
                "bytes_model_min": min_bytes, "bytes_model_weights": weight_bytes,
                "bytes_model_kv_read": kv_read, "bytes_model_kv_write": kv_write,
                "arithmetic_intensity_model": flops / min_bytes}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(st: Stages, stage: str, iters: int) -> list[float]:
    """Seconds per run: CUDA events around each run on a GPU, perf_counter on the CPU."""
    out = []
    for _ in range(iters):
        if st.device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            st.run(stage)
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            st.run(stage)
            out.append(time.perf_counter() - t)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--P", type=int, default=512, help="prompt length (prefill tokens)")
    p.add_argument("--batch", type=int, default=1, help="batch size (sequences)")
    p.add_argument("--model", default="gpt2-medium", choices=MODELS,
                   help="model shapes (dummy weights); tiny-* are for CPU tests")
    p.add_argument("--dtype", default="float16", choices=tuple(DTYPES))
    p.add_argument("--stage", default="all", choices=("all",) + STAGES,
                   help="stage(s) to run; v1_decode always builds the cache first (unprofiled)")
    p.add_argument("--warmup", type=int, default=3, help="unprofiled runs per stage first")
    p.add_argument("--iters", type=int, default=20, help="timed runs per stage (0: none)")
    p.add_argument("--block-size", type=int, default=16, help="KV cache page size")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON with per-stage times and model counts")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.dtype == "float16":
        print("note: float16 on the CPU is slow; fine for tiny shapes", file=sys.stderr)
    from vllm.platform import nvtx_range
    st = Stages(args.model, args.P, args.batch, DTYPES[args.dtype], device,
                block_size=args.block_size, seed=args.seed)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if "v1_decode" in stages and "v1_prefill" not in stages:
        st.run("v1_prefill")                       # the cache decode reads
    _sync(device)
    results = {}
    for stage in stages:
        for _ in range(args.warmup):
            st.run(stage)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.profiler.start()            # ncu --profile-from-start off starts here
        with nvtx_range(stage):
            logits = st.run(stage)
            _sync(device)
        if device.type == "cuda":
            torch.cuda.profiler.stop()
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"{stage}: non-finite logits (dummy weights out of range?)")
        times = time_stage(st, stage, args.iters)
        r = {"stage": stage, **st.model_counts(stage), "time_s_all": times,
             "time_s_median": statistics.median(times) if times else None,
             "logits_shape": list(logits.shape)}
        if times:
            r["flops_per_s_model"] = r["flops_model"] / r["time_s_median"]
        results[stage] = r
        t = f"{1e3 * r['time_s_median']:.3f} ms" if times else "untimed"
        print(f"{stage:11s} tokens={r['tokens']:6d} flops(model)={r['flops_model']:.3e} "
              f"bytes(min)={r['bytes_model_min']:.3e} AI={r['arithmetic_intensity_model']:.1f} "
              f"{t}")
    check = None
    if "v1_decode" in results:
        got, ref = st.run("v1_decode").float(), st.reference_decode_logits().float()
        check = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
        print(f"v1_decode vs a cache-free forward over P + 1 tokens: rel. error {check:.2e}")
    if args.output:
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else platform.processor() or platform.machine()),
                "torch": torch.__version__}
        out = {"config": {**meta, **{k: v for k, v in vars(args).items()},
                          "geometry": st.geo, "weights": "dummy (random)",
                          "decode_check_rel_err": check},
               "stages": results}
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2, default=lambda o: None if isinstance(o, float)
                      and not math.isfinite(o) else str(o))
            f.write("\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
