"""NWOR off vs stage: per-step latency and tokens/s in one run (issue: NWOR benchmark).

Models: the default model with real weights and n-gram drafting, and Llama-3-8B shapes with
DUMMY weights and CONTROLLED acceptance (each draft accepted with probability --acceptance,
drafts padded to k every step; labelled as such in the output). For each model, k and NWOR
mode one engine runs every batch size; the stage/off ratio compares runs of one process.

Example (H100): python tools/benchmarks/bench_nwor.py --model /path/SmolLM2.gguf \
                    --output sweeps/bench_nwor_h100.json
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import kv_bytes_per_token, llama3_8b_folder, run_meta, sync, write_json  # noqa: E402

from vllm import LLM, SamplingParams  # noqa: E402

CODE_PROMPT = ("def bubble_sort(items):\n    n = len(items)\n    for i in range(n):\n"
               "        for j in range(0, n - i - 1):\n            if items[j] > items[j + 1]:\n"
               "                items[j], items[j + 1] = items[j + 1], items[j]\n"
               "    return items\n\n# The same function with comments:\ndef bubble_sort(items):\n")


def measure(llm: LLM, prompts, max_tokens: int, repeats: int = 2) -> dict:
    """Warm up on the very workload (same shapes: Triton JIT, allocator, graphs), then time
    `repeats` runs step by step. The first step of each run (the prefill) is left out of the
    per-step numbers; decode tokens/s = decode tokens / decode time."""
    eng = llm.llm_engine
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(prompts, sp, use_tqdm=False)
    m0 = llm.get_metrics_dict()
    steps, toks, total = [], [], 0.0
    for rep in range(repeats):
        for i, p in enumerate(prompts):
            eng.add_request(f"n{rep}-{i}-{time.monotonic_ns()}", p, sp)
        sync()
        t_all = time.perf_counter()
        first = True
        while eng.has_unfinished_requests():
            g0 = eng.stats.generation_tokens
            t0 = time.perf_counter()
            eng.step()
            dt, n = time.perf_counter() - t0, eng.stats.generation_tokens - g0
            if not first:
                steps.append(dt)
                toks.append(n)
            first = False
        total += time.perf_counter() - t_all
    m1 = llm.get_metrics_dict()
    d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1 if isinstance(m1.get(k), (int, float))}
    out_tokens = repeats * len(prompts) * max_tokens
    return {"ms_per_step_median": 1e3 * statistics.median(steps),
            "ms_per_step_mean": 1e3 * statistics.mean(steps),
            "tokens_per_s": sum(toks) / sum(steps), "e2e_tokens_per_s": out_tokens / total,
            "decode_steps": len(steps), "repeats": repeats,
            "output_tokens": out_tokens,
            "spec_num_drafts": d.get("vllm:spec_decode_num_drafts", 0),
            "spec_num_draft_tokens": d.get("vllm:spec_decode_num_draft_tokens", 0),
            "spec_num_accepted_tokens": d.get("vllm:spec_decode_num_accepted_tokens", 0),
            "nwor_tokens_staged": d.get("vllm:nwor_tokens_staged", 0),
            "nwor_tokens_committed": d.get("vllm:nwor_tokens_committed", 0)}


def byte_model(r: dict, kvtok: int, mode: str) -> dict:
    drafts, acc, win = (r["spec_num_draft_tokens"], r["spec_num_accepted_tokens"],
                        r["spec_num_drafts"])
    off_cache = (win + drafts) * kvtok                 # (1 + k) per window
    cache = (win + acc) * kvtok if mode == "stage" else off_cache
    staging = drafts * kvtok if mode == "stage" else 0
    return {"verify_cache_bytes": cache, "verify_staging_bytes": staging,
            "verify_cache_bytes_if_off": off_cache,
            "cache_write_reduction": 1 - cache / off_cache if off_cache else 0.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--batches", default="8,32,128")
    ap.add_argument("--ks", default="4,10")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--acceptance", type=float, default=0.6)
    ap.add_argument("--models", default="smollm2,llama3-8b-dummy")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--output", default="sweeps/bench_nwor.json")
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    res = {"config": {**run_meta(), **vars(args)}, "rows": []}
    for model_name in args.models.split(","):
        for k in [int(x) for x in args.ks.split(",")]:
            for mode in ("off", "stage"):
                if model_name == "smollm2":
                    path, kw = args.model, {}
                    spec = {"method": "ngram", "num_speculative_tokens": k}
                    label = "SmolLM2-135M (real weights, n-gram drafts)"
                else:
                    path = llama3_8b_folder(tempfile.gettempdir())
                    kw = {"load_format": "dummy", "dtype": "bfloat16"}
                    spec = {"method": "ngram", "num_speculative_tokens": k,
                            "acceptance_rate": args.acceptance}
                    label = (f"Llama-3-8B shapes, DUMMY weights, CONTROLLED acceptance "
                             f"p={args.acceptance}")
                llm = LLM(path, max_model_len=args.max_model_len, max_num_seqs=max(batches),
                          max_num_batched_tokens=max(2048, max(batches) * (k + 1)),
                          gpu_memory_utilization=0.85, speculative_config=spec, nwor_mode=mode,
                          enforce_eager=args.enforce_eager, **kw)
                mc = llm.llm_engine.config.model_config
                kvtok = kv_bytes_per_token(mc)
                tok = llm.get_tokenizer()
                for b in batches:
                    if tok is not None and model_name == "smollm2":
                        prompts = [CODE_PROMPT] * b
                    else:
                        rng = random.Random(b)
                        prompts = [{"prompt_token_ids": [rng.randrange(1000, 100000)
                                                         for _ in range(128)]} for _ in range(b)]
                    r = measure(llm, prompts, args.max_tokens, args.repeats)
                    r.update({"model": label, "k": k, "nwor_mode": mode, "batch": b,
                              "kv_bytes_per_token": kvtok, **byte_model(r, kvtok, mode)})
                    print(f"{model_name:16s} k={k:2d} {mode:5s} b={b:3d}: "
                          f"{r['ms_per_step_median']:.3f} ms/step {r['tokens_per_s']:.0f} tok/s "
                          f"acc={r['spec_num_accepted_tokens']}/{r['spec_num_draft_tokens']} "
                          f"committed={r['nwor_tokens_committed']}")
                    res["rows"].append(r)
                llm.shutdown()
                del llm
                gc.collect()
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
                write_json(args.output, res)
    # stage / off ratios inside this run
    ratios = []
    for r in res["rows"]:
        if r["nwor_mode"] != "stage":
            continue
        base = next((o for o in res["rows"] if o["nwor_mode"] == "off" and o["model"] == r["model"]
                     and o["k"] == r["k"] and o["batch"] == r["batch"]), None)
        if base:
            ratios.append({"model": r["model"], "k": r["k"], "batch": r["batch"],
                           "latency_ratio_stage_over_off":
                               r["ms_per_step_median"] / base["ms_per_step_median"],
                           "throughput_ratio_stage_over_off":
                               r["tokens_per_s"] / base["tokens_per_s"],
                           "cache_write_reduction_model": r["cache_write_reduction"]})
    res["ratios"] = ratios
    for x in ratios:
        print(f"{x['model'][:30]:30s} k={x['k']:2d} b={x['batch']:3d}: latency stage/off "
              f"{x['latency_ratio_stage_over_off']:.3f}, cache writes -"
              f"{100 * x['cache_write_reduction_model']:.1f}% (model)")
    write_json(args.output, res)


if __name__ == "__main__":
    main()
