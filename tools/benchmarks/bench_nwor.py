"""NWOR off vs stage: the latency cost of staging, resolved to +-0.5% (the one NWOR latency
harness; tools/profiling/run_benchmark_sweep.sh sweeps it).

Design (why each part):
- Both engines (NWOR off, stage) live in one process and run the same workload in turns,
  A B then B A, ..., so drift, clocks and caches hit both alike; each is warmed up first on that
  very workload (shapes, Triton JIT, CUDA graphs).
- A round: one batch of requests is prefilled (untimed), then --steps-per-round (>= 30) decode
  steps are timed one by one, GPU time per step from CUDA events recorded around
  `engine.step()` (a wall clock on the CPU), while every request is still running (max_tokens
  is set so none can finish: (k + 1) tokens a step at most); the rest of the batch is aborted.
  The round's value per mode is the mean ms per step.
- The statistic is the per-round ratio stage / off (paired: the two halves of a round run back
  to back). Rounds continue until the 95% confidence interval of the mean ratio (Student t)
  is within --target (0.5%) of the mean, or --max-rounds, or --budget-s seconds per point;
  the JSON says which (converged true/false) with the mean, the interval and the rounds.

Models: the default model with real weights and n-gram drafting, and Llama-3-8B shapes with
DUMMY weights and CONTROLLED acceptance (each draft accepted with probability --acceptance,
drafts padded to k every step; labelled as such in the output).

  python3 tools/benchmarks/bench_nwor.py --models llama3-8b-dummy --ks 4 --batches 32 \\
      --output sweeps/bench_nwor_llama8b.json
"""
from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import tempfile
import time

import torch

from tools.common import llama3_8b_folder, run_metadata as run_meta, sync, write_json  # noqa: E402
from tools.profiling.byte_model import kv_bytes_per_token_of as kv_bytes_per_token  # noqa: E402,E501

from vllm import LLM, SamplingParams  # noqa: E402

CODE_PROMPT = ("def bubble_sort(items):\n    n = len(items)\n    for i in range(n):\n"
               "        for j in range(0, n - i - 1):\n            if items[j] > items[j + 1]:\n"
               "                items[j], items[j + 1] = items[j + 1], items[j]\n"
               "    return items\n\n# The same function with comments:\ndef bubble_sort(items):\n")
MODES = ("off", "stage")
# two-sided 95% Student t quantiles by degrees of freedom (1..30); 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        return float("inf")
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.96 + 2.4 / df          # within 0.003 of the exact quantile for df > 30


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% interval); half-width inf for fewer than 2 values."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("inf")
    return m, t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def timed_round(llm: LLM, prompts, params: SamplingParams, n_steps: int, tag: str) -> dict:
    """Prefill `prompts` (untimed), time n_steps decode steps, abort the rest."""
    eng = llm.llm_engine
    ids = [f"{tag}-{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        eng.add_request(rid, p, params)
    # prefill may take several steps (chunked): until every request has its first token
    for _ in range(10_000):
        if all(eng.seqs[r].req.num_output_tokens >= 1 for r in ids if r in eng.seqs):
            break
        eng.step()
    sync()
    cuda = torch.cuda.is_available()
    m0 = llm.get_metrics_dict()
    times = []
    for _ in range(n_steps):
        running = sum(r in eng.seqs for r in ids)
        if running < len(ids):
            raise RuntimeError(f"{tag}: a request finished inside the timed steps "
                               "(max_tokens too small)")
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            eng.step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            eng.step()
            times.append(time.perf_counter() - t)
    m1 = llm.get_metrics_dict()
    eng.abort_request(ids)
    while eng.has_unfinished_requests():      # nothing left, but drain defensively
        eng.step()
    d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1 if isinstance(m1.get(k), (int, float))}
    return {"step_s": times, "mean_s": statistics.fmean(times), "metrics": d}


def byte_model(d: dict, kvtok: int, mode: str) -> dict:
    drafts = d.get("vllm:spec_decode_num_draft_tokens", 0)
    acc = d.get("vllm:spec_decode_num_accepted_tokens", 0)
    win = d.get("vllm:spec_decode_num_drafts", 0)
    off_cache = (win + drafts) * kvtok                 # (1 + k) per window
    cache = (win + acc) * kvtok if mode == "stage" else off_cache
    return {"verify_cache_bytes": cache,
            "verify_staging_bytes": drafts * kvtok if mode == "stage" else 0,
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
    kw.update(args.engine_kwargs or {})
    llm = LLM(path, max_model_len=args.max_model_len, max_num_seqs=max_batch,
              max_num_batched_tokens=max(2048, max_batch * (k + 1)),
              gpu_memory_utilization=util, speculative_config=spec, nwor_mode=mode,
              enforce_eager=args.enforce_eager, **kw)
    return llm, label


def _prompts(llm: LLM, model_name: str, b: int, prompt_len: int):
    if llm.get_tokenizer() is not None and model_name == "smollm2":
        return [CODE_PROMPT] * b
    rng = random.Random(b)
    vocab = llm.llm_engine.config.model_config.vocab_size
    return [{"prompt_token_ids": [rng.randrange(min(1000, vocab // 2), vocab)
                                  for _ in range(prompt_len)]} for _ in range(b)]


def run_point(args, engines: dict, model_name: str, label: str, k: int, b: int,
              kvtok: int) -> dict:
    prompts = _prompts(engines["off"], model_name, b, args.prompt_len)
    # (k + 1) tokens a step at most: no request can finish within the timed steps
    mt = (k + 1) * (args.steps_per_round + 1) + 2
    sp = SamplingParams(temperature=args.temperature, max_tokens=mt, ignore_eos=True,
                        seed=0 if args.temperature > 0 else None)
    for mode in MODES:
        timed_round(engines[mode], prompts, sp, min(args.steps_per_round, 8), f"warm-{mode}")
    per_round = {m: [] for m in MODES}
    metrics = {m: {} for m in MODES}
    ratios: list[float] = []
    t0 = time.perf_counter()
    stop = "max_rounds"
    mean, hw = float("nan"), float("inf")
    for rnd in range(args.max_rounds):
        for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
            r = timed_round(engines[mode], prompts, sp, args.steps_per_round, f"r{rnd}-{mode}")
            per_round[mode].append(r["mean_s"])
            for key, v in r["metrics"].items():
                metrics[mode][key] = metrics[mode].get(key, 0) + v
        ratios.append(per_round["stage"][-1] / per_round["off"][-1])
        mean, hw = mean_ci(ratios)
        if len(ratios) >= args.min_rounds and hw <= args.target * mean:
            stop = "converged"
            break
        if time.perf_counter() - t0 > args.budget_s:
            stop = "budget"
            break
    ms = {m: 1e3 * statistics.fmean(v) for m, v in per_round.items()}
    row = {"model": label, "k": k, "batch": b, "timer": "cuda_events" if
           torch.cuda.is_available() else "wall_clock", "steps_per_round": args.steps_per_round,
           "rounds": len(ratios), "stopped_by": stop, "converged": stop == "converged",
           "target_half_width": args.target,
           "ms_per_step_off": ms["off"], "ms_per_step_stage": ms["stage"],
           "ratio_stage_over_off_mean": mean,
           "ratio_ci95": [mean - hw, mean + hw] if math.isfinite(hw) else None,
           "ci95_half_width_pct": 100 * hw / mean if math.isfinite(hw) else None,
           "ratio_per_round": ratios,
           "ms_per_step_per_round": {m: [1e3 * x for x in v] for m, v in per_round.items()},
           "seconds": time.perf_counter() - t0}
    for mode in MODES:
        d = metrics[mode]
        row[f"counters_{mode}"] = {k2: d.get(k2, 0) for k2 in (
            "vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
            "vllm:spec_decode_num_accepted_tokens", "vllm:nwor_tokens_staged",
            "vllm:nwor_tokens_committed")}
        row[f"byte_model_{mode}"] = byte_model(d, kvtok, mode)
    return row


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct",
                    help="the smollm2 model (path or the default model's name)")
    ap.add_argument("--models", default="llama3-8b-dummy",
                    help="comma list of smollm2, llama3-8b-dummy")
    ap.add_argument("--batches", default="32", help="comma list of batch sizes")
    ap.add_argument("--ks", default="4", help="comma list of k (draft tokens)")
    ap.add_argument("--acceptance", type=float, default=0.6,
                    help="controlled acceptance of the dummy-weight model")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--prompt-len", type=int, default=128, help="token-id prompts' length")
    ap.add_argument("--steps-per-round", type=int, default=30,
                    help="timed decode steps per mode per round (>= 30 for a resolved ratio)")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--target", type=float, default=0.005,
                    help="stop when the 95%% CI half-width <= target x mean ratio")
    ap.add_argument("--budget-s", type=float, default=150.0, help="seconds per point at most")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--output", default="sweeps/bench_nwor.json")
    ap.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)  # old flag
    ap.add_argument("--max-tokens", type=int, default=None, help=argparse.SUPPRESS)  # old flag
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.engine_kwargs = None
    for name, v, lo in (("--steps-per-round", args.steps_per_round, 1),
                        ("--min-rounds", args.min_rounds, 2),
                        ("--max-rounds", args.max_rounds, 2)):
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    if args.max_rounds < args.min_rounds:
        raise ValueError("--max-rounds must be >= --min-rounds")
    if not 0 < args.target < 1:
        raise ValueError(f"--target must be in (0, 1), got {args.target}")
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in ("smollm2", "llama3-8b-dummy")]
    if bad:
        raise ValueError(f"--models: unknown {bad}; expected smollm2, llama3-8b-dummy")
    batches = [int(x) for x in args.batches.split(",")]
    res = {"config": {**run_meta(), **{k: v for k, v in vars(args).items()
                                       if k != "engine_kwargs"}}, "rows": []}
    for model_name in models:
        for k in [int(x) for x in args.ks.split(",")]:
            # Two engines at once: the first takes about half the memory budget, the second
            # sizes itself from what is left (KV sizing subtracts memory already allocated).
            engines = {}
            for mode, util in zip(MODES, (0.45, 0.9)):
                engines[mode], label = _engine(args, model_name, k, mode, util, max(batches))
            kvtok = kv_bytes_per_token(engines["off"].llm_engine.config.model_config)
            for b in batches:
                row = run_point(args, engines, model_name, label, k, b, kvtok)
                res["rows"].append(row)
                ci = row["ratio_ci95"] or [float("nan")] * 2
                print(f"{model_name:16s} k={k:2d} b={b:3d}: off {row['ms_per_step_off']:.3f} "
                      f"ms/step, stage {row['ms_per_step_stage']:.3f}; stage/off "
                      f"{row['ratio_stage_over_off_mean']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] "
                      f"(95% CI, {row['rounds']} rounds x {row['steps_per_round']} steps, "
                      f"{row['stopped_by']})", flush=True)
                write_json(args.output, res)
            for mode in MODES:
                engines[mode].shutdown()
            del engines          # no other name may keep an engine (its KV cache) alive
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    write_json(args.output, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
