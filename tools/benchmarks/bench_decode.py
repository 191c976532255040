"""Decode throughput of the engine (issue: engine core benchmark).

(a) the default model (SmolLM2-135M) at several batch sizes, with and without CUDA graphs;
(b) Llama-3-8B shapes with dummy weights at batch 1 and 32: achieved bandwidth =
    (weight bytes + KV bytes read per step) / step time, against a measured copy bandwidth;
(c) transformers' generate on the same model and prompts, in the same run.

Example (H100):  python3 -m tools.benchmarks.bench_decode --model /path/SmolLM2.gguf \
                     --output sweeps/bench_decode_h100.json
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import tempfile
import time

import torch

from tools.benchmarks import gpu_busy
from tools.common import Timer, llama3_8b_folder, run_metadata, sync, weight_bytes, write_json
from tools.profiling.byte_model import kv_bytes_per_token_of
from vllm import LLM, SamplingParams


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(100, vocab - 1) for _ in range(length)]}
            for _ in range(batch)]


def run_engine(llm: LLM, batch: int, prompt_len: int, max_tokens: int, seed: int = 0) -> dict:
    """Steps the engine by hand so prefill and decode steps are timed separately; the GPU busy
    fraction is profiled over 20 decode steps of a separate, identical batch."""
    eng = llm.llm_engine
    vocab = eng.config.model_config.vocab_size
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    # warm-up (graphs captured at start; this covers allocator / first-call costs)
    llm.generate(_prompts(batch, prompt_len, vocab, seed + 99), SamplingParams(
        temperature=0.0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    for i, p in enumerate(_prompts(batch, prompt_len, vocab, seed)):
        eng.add_request(f"b{i}", p, sp)
    steps = []
    sync()
    t_all = time.perf_counter()
    while eng.has_unfinished_requests():
        before = eng.stats.generation_tokens
        t0 = time.perf_counter()
        eng.step()
        steps.append((time.perf_counter() - t0, eng.stats.generation_tokens - before))
    total = time.perf_counter() - t_all
    busy = {}
    if torch.cuda.is_available():
        for i, p in enumerate(_prompts(batch, prompt_len, vocab, seed + 7)):
            eng.add_request(f"p{i}", p, sp)
        for _ in range(4):       # prefill and the first decode steps
            eng.step()
        busy = gpu_busy.measure(eng.step, min(20, max_tokens - 8))
        while eng.has_unfinished_requests():
            eng.step()
    decode = steps[1:]            # the first step is the prefill of all prompts
    dec_t = sum(t for t, _ in decode)
    dec_tok = sum(n for _, n in decode)
    return {"batch": batch, "prompt_len": prompt_len, "max_tokens": max_tokens,
            "total_s": total, "output_tokens": batch * max_tokens,
            "output_tokens_per_s": batch * max_tokens / total,
            "decode_tokens_per_s": dec_tok / dec_t if dec_t else 0.0,
            "ms_per_decode_step_median": 1e3 * statistics.median(t for t, _ in decode),
            "ms_per_decode_step_mean": 1e3 * dec_t / max(len(decode), 1),
            "prefill_ms": 1e3 * steps[0][0], "num_steps": len(steps),
            "async_scheduling": eng.async_scheduling, **busy}


def _free(llm) -> None:
    llm.shutdown()
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    if not torch.cuda.is_available():
        return 0.0
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    with Timer() as t:
        for _ in range(20):
            y.copy_(x)
    return 2 * x.numel() * 20 / t.s


def part_a(model: str, batches: list[int], max_tokens: int, prompt_len: int,
           max_model_len: int, load_format: str = "auto") -> list[dict]:
    out = []
    for graphs in (True, False):
        for asy in (False, True):       # sync vs async side by side, same run
            llm = LLM(model, enforce_eager=not graphs, max_model_len=max_model_len,
                      max_num_seqs=max(batches), gpu_memory_utilization=0.5,
                      async_scheduling=asy, load_format=load_format)
            for b in batches:
                r = run_engine(llm, b, prompt_len, max_tokens)
                r["cuda_graphs"] = graphs
                print(f"[a] smollm2 graphs={graphs} async={asy} batch={b}: "
                      f"{r['output_tokens_per_s']:.0f} tok/s, "
                      f"{r['ms_per_decode_step_median']:.3f} ms/step, "
                      f"busy {r.get('gpu_busy_fraction') or 0:.2f}, "
                      f"{r.get('kernels_per_step') or 0:.0f} kernels/step")
                out.append(r)
            _free(llm)
    return out


def part_b(batches: list[int], max_tokens: int, prompt_len: int, bw: float) -> list[dict]:
    out = []
    for asy in (False, True):
        out += _part_b(batches, max_tokens, prompt_len, bw, asy)
    return out


def _part_b(batches: list[int], max_tokens: int, prompt_len: int, bw: float,
            asy: bool) -> list[dict]:
    folder = llama3_8b_folder(tempfile.mkdtemp())
    llm = LLM(folder, load_format="dummy", dtype="bfloat16", max_model_len=2048,
              max_num_seqs=max(batches), gpu_memory_utilization=0.85, async_scheduling=asy)
    eng = llm.llm_engine
    mc = eng.config.model_config
    wbytes = weight_bytes(eng.executor.driver_runner.model)
    kvtok = kv_bytes_per_token_of(mc)
    out = []
    for b in batches:
        r = run_engine(llm, b, prompt_len, max_tokens)
        avg_ctx = prompt_len + max_tokens / 2
        step_bytes = wbytes + b * avg_ctx * kvtok
        step_s = r["ms_per_decode_step_median"] / 1e3
        r.update({"model": "Llama-3-8B shapes, DUMMY weights (bf16)", "weight_bytes": wbytes,
                  "kv_bytes_per_token": kvtok, "bytes_per_step": step_bytes,
                  "achieved_bw_bytes_per_s": step_bytes / step_s,
                  "copy_bw_bytes_per_s": bw,
                  "fraction_of_copy_bw": step_bytes / step_s / bw if bw else None})
        print(f"[b] llama3-8b dummy async={asy} batch={b}: {r['decode_tokens_per_s']:.0f} tok/s, "
              f"{r['ms_per_decode_step_median']:.3f} ms/step, "
              f"{100 * (r['fraction_of_copy_bw'] or 0):.1f}% of copy bandwidth")
        out.append(r)
    _free(llm)
    return out


def part_c(model: str, batches: list[int], max_tokens: int, prompt_len: int) -> list[dict]:
    """transformers' generate on the same weights (our GGUF state dict) and prompts."""
    from transformers import LlamaForCausalLM
    from vllm.model_executor.model_loader import loader
    from vllm.model_executor.model_loader.gguf_loader import load_gguf
    path = loader.resolve(model)
    g = load_gguf(path, dtype=torch.bfloat16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hf = LlamaForCausalLM(g.hf_config)
    hf.load_state_dict(g.state_dict, strict=False)
    hf.tie_weights()
    hf = hf.to(dev, torch.bfloat16).eval()
    out = []
    for b in batches:
        ids = torch.tensor([p["prompt_token_ids"] for p in
                            _prompts(b, prompt_len, g.hf_config.vocab_size, 0)], device=dev)
        with torch.no_grad():
            hf.generate(ids[:, :8], max_new_tokens=8, do_sample=False)
            with Timer() as t:
                gen = hf.generate(ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                  do_sample=False, pad_token_id=0)
        n = (gen.shape[1] - ids.shape[1]) * b
        out.append({"batch": b, "output_tokens": n, "total_s": t.s,
                    "output_tokens_per_s": n / t.s})
        print(f"[c] transformers generate batch={b}: {n / t.s:.1f} tok/s")
    del hf
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--llama-batches", default="1,32")
    ap.add_argument("--hf-batches", default="1,32")
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--load-format", default="auto",
                    help="part a: 'dummy' runs a config folder's shapes with random weights")
    ap.add_argument("--output", default="sweeps/bench_decode.json")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    res = {"config": {**run_metadata(), **vars(args)}}
    bw = copy_bandwidth()
    res["copy_bandwidth_bytes_per_s"] = bw
    if "a" in parts:
        res["smollm2"] = part_a(args.model, [int(x) for x in args.batches.split(",")],
                                args.max_tokens, args.prompt_len, args.max_model_len,
                                args.load_format)
        write_json(args.output, res)
    if "b" in parts:
        res["llama3_8b_dummy"] = part_b([int(x) for x in args.llama_batches.split(",")],
                                        args.max_tokens, 128, bw)
        write_json(args.output, res)
    if "c" in parts:
        res["transformers"] = part_c(args.model, [int(x) for x in args.hf_batches.split(",")],
                                     args.max_tokens, args.prompt_len)
    write_json(args.output, res)


if __name__ == "__main__":
    main()
