"""NWOR off vs stage: per-step latency and tokens/s in one run (issue: NWOR benchmark).

Both engines (NWOR off and stage) live in one process and run the same workload in turns
(A B, then B A, ... for --repeats rounds, after a warm-up of each on that very workload), so
drift, JIT compilation and clock changes hit both alike; the per-round stage/off ratios give
the spread that any difference must beat.

Models: the default model with real weights and n-gram drafting, and Llama-3-8B shapes with
DUMMY weights and CONTROLLED acceptance (each draft accepted with probability --acceptance,
drafts padded to k every step; labelled as such in the output).

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


def run_once(llm: LLM, prompts, max_tokens: int) -> dict:
    """One pass of the workload, stepped by hand. The first step (the prefill) is left out of
    the per-step numbers."""
    eng = llm.llm_engine
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    m0 = llm.get_metrics_dict()
    steps, toks = [], []
    for i, p in enumerate(prompts):
        eng.add_request(f"n{i}-{time.monotonic_ns()}", p, sp)
    sync()
    t_all = time.perf_counter()
    first = True
    while eng.has_unfinished_requests():
        g0 = eng.stats.generation_tokens
        t0 = time.perf_counter()
        eng.step()
        if not first:
            steps.append(time.perf_counter() - t0)
            toks.append(eng.stats.generation_tokens - g0)
        first = False
    total = time.perf_counter() - t_all
    m1 = llm.get_metrics_dict()
    d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1 if isinstance(m1.get(k), (int, float))}
    return {"steps": steps, "toks": toks, "total": total, "metrics": d}


def summarise(runs: list[dict], out_tokens: int) -> dict:
    steps = [t for r in runs for t in r["steps"]]
    toks = sum(sum(r["toks"]) for r in runs)
    d = lambda k: sum(r["metrics"].get(k, 0) for r in runs)  # noqa: E731
    return {"ms_per_step_median": 1e3 * statistics.median(steps),
            "ms_per_step_mean": 1e3 * statistics.mean(steps),
            "ms_per_step_median_per_round": [1e3 * statistics.median(r["steps"]) for r in runs],
            "tokens_per_s": toks / sum(steps),
            "e2e_tokens_per_s": out_tokens * len(runs) / sum(r["total"] for r in runs),
            "decode_steps": len(steps), "rounds": len(runs), "output_tokens": out_tokens,
            "spec_num_drafts": d("vllm:spec_decode_num_drafts"),
            "spec_num_draft_tokens": d("vllm:spec_decode_num_draft_tokens"),
            "spec_num_accepted_tokens": d("vllm:spec_decode_num_accepted_tokens"),
            "nwor_tokens_staged": d("vllm:nwor_tokens_staged"),
            "nwor_tokens_committed": d("vllm:nwor_tokens_committed")}


def byte_model(r: dict, kvtok: int, mode: str) -> dict:
    drafts, acc, win = (r["spec_num_draft_tokens"], r["spec_num_accepted_tokens"],
                        r["spec_num_drafts"])
    off_cache = (win + drafts) * kvtok                 # (1 + k) per window
    cache = (win + acc) * kvtok if mode == "stage" else off_cache
    staging = drafts * kvtok if mode == "stage" else 0
    return {"verify_cache_bytes": cache, "verify_staging_bytes": staging,
            "verify_cache_bytes_if_off": off_cache,
            "cache_write_reduction": 1 - cache / off_cache if off_cache else 0.0}


def _engine(args, model_name: str, k: int, mode: str, util: float, max_batch: int):
    if model_name == "smollm2":
        path, kw = args.model, {}
        spec = {"method": "ngram", "num_speculative_tokens": k}
        label = "SmolLM2-135M (real weights, n-gram drafts)"
    else:
        path = llama3_8b_folder(tempfile.gettempdir())
        kw = {"load_format": "dummy", "dtype": "bfloat16"}
        spec = {"method": "ngram", "num_speculative_tokens": k,
                "acceptance_rate": args.acceptance}
        label = f"Llama-3-8B shapes, DUMMY weights, CONTROLLED acceptance p={args.acceptance}"
    llm = LLM(path, max_model_len=args.max_model_len, max_num_seqs=max_batch,
              max_num_batched_tokens=max(2048, max_batch * (k + 1)),
              gpu_memory_utilization=util, speculative_config=spec, nwor_mode=mode,
              enforce_eager=args.enforce_eager, **kw)
    return llm, label


def _prompts(llm: LLM, model_name: str, b: int):
    if llm.get_tokenizer() is not None and model_name == "smollm2":
        return [CODE_PROMPT] * b
    rng = random.Random(b)
    return [{"prompt_token_ids": [rng.randrange(1000, 100000) for _ in range(128)]}
            for _ in range(b)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--batches", default="8,32,128")
    ap.add_argument("--ks", default="4,10")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--acceptance", type=float, default=0.6)
    ap.add_argument("--models", default="smollm2,llama3-8b-dummy")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--repeats", type=int, default=4, help="rounds of (off, stage) in turns")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--output", default="sweeps/bench_nwor.json")
    args = ap.parse_args()
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    batches = [int(x) for x in args.batches.split(",")]
    res = {"config": {**run_meta(), **vars(args)}, "rows": [], "ratios": []}
    modes = ("off", "stage")
    for model_name in args.models.split(","):
        for k in [int(x) for x in args.ks.split(",")]:
            # Two engines at once: the first takes about half the memory budget, the second
            # sizes itself from what is left (KV sizing subtracts memory already allocated).
            engines = {}
            for mode, util in zip(modes, (0.45, 0.9)):
                engines[mode], label = _engine(args, model_name, k, mode, util, max(batches))
            kvtok = kv_bytes_per_token(engines["off"].llm_engine.config.model_config)
            for b in batches:
                prompts = _prompts(engines["off"], model_name, b)
                sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
                for mode in modes:          # warm-up on the very workload (shapes, JIT, graphs)
                    engines[mode].generate(prompts, sp, use_tqdm=False)
                runs = {m: [] for m in modes}
                for rnd in range(args.repeats):
                    for mode in (modes if rnd % 2 == 0 else modes[::-1]):
                        runs[mode].append(run_once(engines[mode], prompts, args.max_tokens))
                summ = {}
                for mode in modes:
                    r = summarise(runs[mode], len(prompts) * args.max_tokens)
                    r.update({"model": label, "k": k, "nwor_mode": mode, "batch": b,
                              "kv_bytes_per_token": kvtok, **byte_model(r, kvtok, mode)})
                    summ[mode] = r
                    res["rows"].append(r)
                    print(f"{model_name:16s} k={k:2d} {mode:5s} b={b:3d}: "
                          f"{r['ms_per_step_median']:.3f} ms/step {r['tokens_per_s']:.0f} tok/s "
                          f"acc={r['spec_num_accepted_tokens']}/{r['spec_num_draft_tokens']} "
                          f"committed={r['nwor_tokens_committed']}")
                per_round = [s / o for s, o in zip(summ["stage"]["ms_per_step_median_per_round"],
                                                   summ["off"]["ms_per_step_median_per_round"])]
                ratio = {"model": label, "k": k, "batch": b,
                         "latency_ratio_stage_over_off":
                             summ["stage"]["ms_per_step_median"] / summ["off"]["ms_per_step_median"],
                         "latency_ratio_per_round": per_round,
                         "latency_ratio_spread": max(per_round) - min(per_round),
                         "throughput_ratio_stage_over_off":
                             summ["stage"]["tokens_per_s"] / summ["off"]["tokens_per_s"],
                         "cache_write_reduction_model": summ["stage"]["cache_write_reduction"]}
                res["ratios"].append(ratio)
                print(f"{label[:30]:30s} k={k:2d} b={b:3d}: latency stage/off "
                      f"{ratio['latency_ratio_stage_over_off']:.3f} (rounds "
                      f"{min(per_round):.3f}..{max(per_round):.3f}), cache writes -"
                      f"{100 * ratio['cache_write_reduction_model']:.1f}% (model)")
                write_json(args.output, res)
            for mode in modes:
                engines[mode].shutdown()
            del engines          # no other name may keep an engine (its KV cache) alive
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    write_json(args.output, res)


if __name__ == "__main__":
    main()
