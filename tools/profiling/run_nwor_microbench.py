#!/usr/bin/env python3
"""NWOR x SCV microbenchmark: latency, speculative-decoding counters and the KV byte model per
mode, optionally with Nsight Compute DRAM / L2 counters (--ncu).

One engine per (NWOR mode, SCV mode); its metrics are read before it is torn down. Warmup
batches are excluded from latencies and from every counter (counters are deltas over the
measured batches). Output: one JSON, {"config": {...}, "summary": {"per_mode": [...]}}
(ARCHITECTURE.md "Microbench output"), and a table on stdout. See docs/profiling.md.

  python3 -m tools.profiling.run_nwor_microbench --scenario short --requests 8 --batches 4 \
      --draft-tokens 4 --nwor-modes off,stage --scv-modes off,graph --output out.json

Models: --target-model / --draft-model, else the TARGET_MODEL / DRAFT_MODEL environment
variables, else the default model with n-gram drafting; TENSOR_PARALLEL_SIZE is honoured.
--adaptive-draft-length 0|1 and --confidence-threshold X go into speculative_config (seed 004,
tools/experiments/); the engine's validation runs before any model loads, so a threshold with
n-gram drafting fails at once with its message.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
from typing import Optional

from tools import common
from tools.profiling import byte_model
from tools.profiling import prompts as prompt_sets

NWOR_MODES = ("off", "stage")
SCV_MODES = ("off", "vectorized", "graph", "adaptive")
SPEC_METHODS = ("ngram", "eagle", "draft_model")
# Gauges: not differenced between the post-warmup and the final snapshot.
_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
           "vllm:num_kv_blocks_free", "vllm:nwor_writes_saved_pct")
# Flags that define the workload: passed on to the child process that runs under ncu.
_WORKLOAD_FLAGS = ("scenario", "prompts_file", "requests", "batches", "warmup", "draft_tokens",
                   "temperature", "max_tokens", "max_model_len", "spec_method", "target_model",
                   "draft_model", "tensor_parallel_size", "acceptance_rate", "load_format",
                   "dtype", "block_size", "max_num_seqs", "gpu_memory_utilization", "seed",
                   "prompt_lookup_max", "prompt_lookup_min", "cpu_threads",
                   "adaptive_draft_length", "confidence_threshold")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w = p.add_argument_group("workload")
    w.add_argument("--scenario", default="short", choices=prompt_sets.SCENARIOS,
                   help="prompt set shipped in tools/profiling/prompts (synthetic: repeated "
                        "random token ids, for any tokenizer)")
    w.add_argument("--prompts-file", default=None,
                   help="JSON list of prompts (strings or token-id lists) instead of --scenario")
    w.add_argument("--requests", type=int, default=8, help="requests per batch")
    w.add_argument("--batches", type=int, default=4, help="measured batches per mode")
    w.add_argument("--warmup", type=int, default=1, help="unmeasured batches per mode first")
    w.add_argument("--max-tokens", type=int, default=None,
                   help="output tokens per request (ignore_eos); default per scenario "
                        f"{prompt_sets.DEFAULT_MAX_TOKENS}")
    w.add_argument("--temperature", type=float, default=0.0)
    w.add_argument("--seed", type=int, default=0,
                   help="engine seed; request i samples with seed + i when temperature > 0")
    m = p.add_argument_group("model and speculation")
    m.add_argument("--target-model", default=None,
                   help="default: $TARGET_MODEL, else the engine's default model")
    m.add_argument("--draft-model", default=None, help="default: $DRAFT_MODEL")
    m.add_argument("--spec-method", default=None, choices=SPEC_METHODS,
                   help="default: ngram without a draft model; with one, eagle if its name "
                        "contains 'eagle', else draft_model")
    m.add_argument("--draft-tokens", type=int, default=4, help="num_speculative_tokens (k)")
    m.add_argument("--prompt-lookup-min", type=int, default=None, help="ngram only")
    m.add_argument("--prompt-lookup-max", type=int, default=None, help="ngram only")
    m.add_argument("--adaptive-draft-length", type=int, choices=(0, 1), default=None,
                   help="speculative_config.adaptive_draft_length: 1 = each step picks its "
                        "number of drafts (0..k); default: the engine's "
                        "(VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH)")
    m.add_argument("--confidence-threshold", type=float, default=None,
                   help="speculative_config.confidence_threshold: a model drafter (draft_model, "
                        "eagle) stops a request's draft once its top-1 probability falls below "
                        "this (0 = never); default: the engine's "
                        "(VLLM_DRAFT_CONFIDENCE_THRESHOLD)")
    m.add_argument("--acceptance-rate", type=float, default=None,
                   help="CONTROLLED acceptance (benchmark only, for dummy weights): accept "
                        "each draft with this probability instead of verifying it")
    m.add_argument("--tensor-parallel-size", type=int, default=None,
                   help="default: $TENSOR_PARALLEL_SIZE, else 1")
    m.add_argument("--max-model-len", type=int, default=None)
    m.add_argument("--max-num-seqs", type=int, default=None, help="default: --requests")
    m.add_argument("--load-format", default="auto", choices=("auto", "dummy", "safetensors",
                                                             "gguf"))
    m.add_argument("--dtype", default="auto")
    m.add_argument("--block-size", type=int, default=16)
    m.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    m.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs for the forward")
    r = p.add_argument_group("modes and output")
    r.add_argument("--nwor-modes", default="off,stage",
                   help=f"comma-separated subset of {','.join(NWOR_MODES)}")
    r.add_argument("--scv-modes", default="off,graph",
                   help=f"comma-separated subset of {','.join(SCV_MODES)} (graph/adaptive run "
                        "as vectorized without CUDA; scv_mode_effective says so)")
    r.add_argument("--output", default=os.path.join("sweeps", "nwor_microbench.json"))
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--cpu-threads", type=int, default=None,
                   help="torch.set_num_threads (CPU runs on a busy machine: 1 avoids "
                        "descheduled OpenMP workers stalling every op)")
    n = p.add_argument_group("Nsight Compute (--ncu)")
    n.add_argument("--ncu", action="store_true",
                   help="after the normal runs, re-run each mode under ncu and fill ncu_metrics")
    n.add_argument("--ncu-path", default=None, help="ncu binary (default: PATH, CUDA folders)")
    n.add_argument("--ncu-passes", default="steps,kernels",
                   help="steps: DRAM over whole decode steps (NVTX ranges, app-range replay); "
                        "kernels: per-kernel L2 write sectors of the KV-write/commit kernels")
    n.add_argument("--ncu-nvtx-include", default="step/",
                   help="NVTX include expression of the steps pass")
    # = ncu.DEFAULT_KERNEL_REGEX (a test checks): the fused and the unfused KV write both match
    n.add_argument("--ncu-kernel-regex",
                   default="_rope_kv_write|_write_kv|_commit_staged|paged_attention",
                   help="kernels profiled by the kernels pass")
    n.add_argument("--ncu-launch-count", type=int, default=None,
                   help="profile at most this many results per pass (ncu --launch-count)")
    n.add_argument("--ncu-profile-warmup", action="store_true",
                   help="profile from the start (warmup included) instead of only the measured "
                        "batches (implied with tensor parallelism: workers never call "
                        "cudaProfilerStart)")
    n.add_argument("--ncu-timeout", type=float, default=3600.0, help="seconds per ncu pass")
    n.add_argument("--ncu-dir", default=None,
                   help="reports, CSVs and logs (default: <output without .json>_ncu/)")
    n.add_argument("--ncu-child", action="store_true", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------
def resolve_models(args) -> dict:
    from vllm.engine.arg_utils import DEFAULT_MODEL
    target = args.target_model or common.tool_env("TARGET_MODEL") or DEFAULT_MODEL
    draft = args.draft_model or common.tool_env("DRAFT_MODEL")
    tp = args.tensor_parallel_size or common.tool_env("TENSOR_PARALLEL_SIZE") or 1
    method = args.spec_method
    if method is None:
        method = "ngram" if not draft else ("eagle" if "eagle" in draft.lower()
                                            else "draft_model")
    if method != "ngram" and not draft:
        raise SystemExit(f"--spec-method {method} needs a draft model (--draft-model or "
                         "DRAFT_MODEL)")
    return {"target_model": target, "draft_model": draft if method != "ngram" else None,
            "spec_method": method, "tensor_parallel_size": int(tp)}


def speculative_config(args, models: dict) -> dict:
    sc = {"method": models["spec_method"], "num_speculative_tokens": args.draft_tokens}
    if models["draft_model"]:
        sc["model"] = models["draft_model"]
    if models["spec_method"] == "ngram":
        if args.prompt_lookup_min is not None:
            sc["prompt_lookup_min"] = args.prompt_lookup_min
        if args.prompt_lookup_max is not None:
            sc["prompt_lookup_max"] = args.prompt_lookup_max
    if args.acceptance_rate is not None:
        sc["acceptance_rate"] = args.acceptance_rate
    if args.adaptive_draft_length is not None:
        sc["adaptive_draft_length"] = bool(args.adaptive_draft_length)
    if args.confidence_threshold is not None:
        sc["confidence_threshold"] = args.confidence_threshold
    return sc


def resolve_spec_config(args, models: dict):
    """The engine's own validation of speculative_config, before any model loads: a bad
    combination (confidence_threshold > 0 with ngram) fails here with the engine's message.
    Returns the SpeculativeConfig the engines will run with (environment defaults applied)."""
    from vllm.config import SpeculativeConfig
    return SpeculativeConfig.from_user(speculative_config(args, models), models["target_model"])


def acceptance_label(args) -> str:
    if args.acceptance_rate is None:
        return "verified (rejection sampler on the target's logits)"
    return (f"CONTROLLED acceptance_rate={args.acceptance_rate} (benchmark only: drafts accepted "
            "at random, not verified; token quality meaningless)")


def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free_device() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _delta(before: dict, after: dict) -> dict:
    out = {}
    for k, v in after.items():
        if k in _GAUGES or not isinstance(v, (int, float)):
            out[k] = v
        else:
            out[k] = v - before.get(k, 0)
    return out


def _controller(eng):
    """The engine's adaptive draft length controller: the chain switch when steps are chained
    (per batch size: chained k or plain), else the per-request controller (None: off)."""
    return getattr(eng, "chain_switch", None) or eng.adaptive


def adaptive_snapshot(controller) -> Optional[dict]:
    """The adaptive draft length controller's decisions so far (None: adaptive off):
    steps_spec (speculative steps, probes included), steps_plain (steps it ran without drafts),
    probes, k_hist {batch k chosen: steps} (k = 0: plain)."""
    if controller is None:
        return None
    s = controller.stats
    return {"steps_spec": int(s.steps_spec), "steps_plain": int(s.steps_plain),
            "probes": int(s.probes),
            "k_hist": {str(k): int(n) for k, n in sorted(s.k_hist.items())}}


def adaptive_delta(before: Optional[dict], after: Optional[dict]) -> Optional[dict]:
    """after - before (the measured batches only, like the counters); k values with no steps
    in between are left out."""
    if after is None:
        return None
    before = before or {"steps_spec": 0, "steps_plain": 0, "probes": 0, "k_hist": {}}
    hist = {k: n - before["k_hist"].get(k, 0) for k, n in after["k_hist"].items()}
    return {"steps_spec": after["steps_spec"] - before["steps_spec"],
            "steps_plain": after["steps_plain"] - before["steps_plain"],
            "probes": after["probes"] - before["probes"],
            "k_hist": {k: n for k, n in sorted(hist.items(), key=lambda kv: int(kv[0])) if n}}


def _prompt_pool(args, vocab_size: int) -> list:
    if args.prompts_file:
        return prompt_sets.load_file(args.prompts_file)
    if args.scenario == "synthetic":
        return prompt_sets.synthetic_prompts(max(args.requests * (args.warmup + args.batches), 1),
                                             vocab_size, seed=args.seed)
    return prompt_sets.text_prompts(args.scenario)


def max_tokens(args) -> int:
    return args.max_tokens or prompt_sets.DEFAULT_MAX_TOKENS[args.scenario]


def run_mode(args, models: dict, nwor: str, scv: str, progress: common.Progress,
             profile_measured: bool = False) -> dict:
    """One engine, warmup + measured batches; returns the per_mode entry."""
    import torch
    from vllm import LLM, SamplingParams
    t0 = time.perf_counter()
    llm = LLM(models["target_model"], speculative_config=speculative_config(args, models),
              nwor_mode=nwor, scv_mode=scv, max_model_len=args.max_model_len,
              tensor_parallel_size=models["tensor_parallel_size"], seed=args.seed,
              max_num_seqs=args.max_num_seqs or args.requests,
              gpu_memory_utilization=args.gpu_memory_utilization,
              enforce_eager=args.enforce_eager, load_format=args.load_format, dtype=args.dtype,
              block_size=args.block_size)
    try:
        init_s = time.perf_counter() - t0
        eng = llm.llm_engine
        pool = _prompt_pool(args, eng.config.model_config.vocab_size)
        all_batches = prompt_sets.batches(pool, args.warmup + args.batches, args.requests)
        mt = max_tokens(args)
        n_req = [0]

        def params(n: int):
            out = []
            for _ in range(n):
                seed = args.seed + n_req[0] if args.temperature > 0 else None
                n_req[0] += 1
                out.append(SamplingParams(temperature=args.temperature, max_tokens=mt,
                                          ignore_eos=True, seed=seed))
            return out

        label = f"nwor={nwor} scv={scv}"
        steps0 = eng.stats.num_steps
        t_w = time.perf_counter()
        for b in all_batches[:args.warmup]:
            llm.generate(b, params(len(b)), use_tqdm=False)
            progress.update(1, f"{label} warmup")
        _sync()
        warmup_s = time.perf_counter() - t_w
        steps_w = eng.stats.num_steps
        before = llm.get_metrics_dict()
        adaptive_before = adaptive_snapshot(_controller(eng))
        if profile_measured and torch.cuda.is_available():
            torch.cuda.profiler.start()          # cudaProfilerStart: ncu --profile-from-start off
        lat, toks = [], []
        for b in all_batches[args.warmup:]:
            ps = params(len(b))
            _sync()
            t = time.perf_counter()
            outs = llm.generate(b, ps, use_tqdm=False)
            _sync()
            lat.append(time.perf_counter() - t)
            toks.append(sum(len(o.outputs[0].token_ids) for o in outs))
            progress.update(1, f"{label} {lat[-1]:.2f}s")
        if profile_measured and torch.cuda.is_available():
            torch.cuda.profiler.stop()
        m = _delta(before, llm.get_metrics_dict())
        adaptive_stats = adaptive_delta(adaptive_before, adaptive_snapshot(_controller(eng)))
        engine_steps = {"warmup": steps_w - steps0, "measured": eng.stats.num_steps - steps_w}
        geometry = byte_model.geometry_from_config(eng.config.model_config,
                                                   models["tensor_parallel_size"])
        scv_effective = eng.stats.scv_mode
        # chained speculative steps (greedy / unseeded requests, async): the step is a
        # different engine path, so twins compare like with like only when both say the same
        chained = bool(getattr(eng, "_chain", False))
        del eng
    finally:
        llm.shutdown()
        del llm
    entry = per_mode_entry(args, nwor, scv, scv_effective, m, geometry, lat, toks, init_s,
                           warmup_s, spec=resolve_spec_config(args, models))
    entry["chained_steps"] = chained
    entry["engine_steps"] = engine_steps
    entry["adaptive_stats"] = adaptive_stats
    return entry


def per_mode_entry(args, nwor, scv, scv_effective, m: dict, geometry: dict, lat: list,
                   toks: list, init_s: float, warmup_s: float, spec=None) -> dict:
    """spec: the resolved SpeculativeConfig (None: taken from args, as passed)."""
    c = byte_model.counters_from_metrics(m)
    drafts, dtoks, acc = (c["spec_num_drafts"], c["spec_num_draft_tokens"],
                          c["spec_num_accepted_tokens"])
    staged, committed = c["nwor_tokens_staged"], c["nwor_tokens_committed"]
    per_pos = [int(v) for k, v in sorted(
        ((k, v) for k, v in m.items()
         if k.startswith("vllm:spec_decode_num_accepted_tokens_per_pos{")),
        key=lambda kv: int(kv[0].split("=")[1].rstrip("}")))]
    total_s = sum(lat)
    decode_steps = max(c["generation_tokens"] - c["finished_requests"] - acc, 0)
    adaptive = (spec.adaptive_draft_length if spec is not None
                else bool(args.adaptive_draft_length))
    threshold = (spec.confidence_threshold if spec is not None
                 else float(args.confidence_threshold or 0.0))
    return {
        "nwor_mode": nwor, "scv_mode": scv, "scv_mode_effective": scv_effective,
        "adaptive_draft_length": adaptive,
        "confidence_threshold": threshold,
        "acceptance": "controlled" if args.acceptance_rate is not None else "verified",
        "latency_avg_s": total_s / len(lat) if lat else None,
        "latency_p50_s": common.percentile(lat, 50),
        "latency_p99_s": common.percentile(lat, 99),
        "output_tokens_per_s": sum(toks) / total_s if total_s else None,
        "spec_num_drafts": drafts,
        "spec_num_draft_tokens": dtoks,
        "spec_num_accepted_tokens": acc,
        "spec_acceptance_ratio": acc / dtoks if dtoks else 0.0,
        "spec_mean_acceptance_length": 1.0 + acc / drafts if drafts else 0.0,
        "spec_accepted_per_position": per_pos,
        # decode steps (per request) x k - drafted: draft slots left unused, whether confidence
        # early exit or the adaptive length cut the draft (or dropped it: a step without
        # drafts), n-gram found no match, or max_tokens capped it near a request's end (the
        # last two the same in a run's threshold-0 / adaptive-0 twin). Each request's first
        # token comes from its prefill; each decode step emits 1 + its accepted drafts.
        "spec_decode_steps": decode_steps,
        "spec_draft_tokens_short_of_k": max(decode_steps * args.draft_tokens - dtoks, 0),
        # the engine's own count of drafts withheld by the confidence exit (caps minus drafts)
        "spec_num_draft_tokens_stopped": int(
            m.get("vllm:spec_decode_num_draft_tokens_stopped", 0) or 0),
        "nwor_tokens_staged": staged,
        "nwor_tokens_committed": committed,
        "nwor_writes_saved_pct": 100.0 * (staged - committed) / staged if staged else 0.0,
        "nwor_windows": int(m.get("vllm:nwor_windows", 0) or 0),
        "nwor_fallbacks": int(m.get("vllm:nwor_fallbacks", 0) or 0),
        "scv_mask_steps": {k.split("mode=")[1].rstrip("}"): int(v) for k, v in m.items()
                           if k.startswith("vllm:scv_mask_steps{")},
        "scv_fallbacks": int(m.get("vllm:scv_fallbacks", 0) or 0),
        "kv_bytes_written_model": byte_model.kv_bytes_written_model(c, geometry),
        "ncu_metrics": {},
        "num_requests": c["finished_requests"],
        "prompt_tokens": c["prompt_tokens"],
        "prefix_cache_hit_tokens": c["prefix_cache_hit_tokens"],
        "generation_tokens": c["generation_tokens"],
        "output_tokens": sum(toks),
        "batch_latencies_s": lat,
        "batch_output_tokens": toks,
        "engine_init_s": init_s,
        "warmup_s": warmup_s,
    }


# ---------------------------------------------------------------------------------------------
def _child_argv(args, models: dict, nwor: str, scv: str, out: str) -> list[str]:
    """The same workload, one mode, for the process ncu runs (models as resolved here)."""
    argv = ["-m", "tools.profiling.run_nwor_microbench"]
    for name in _WORKLOAD_FLAGS:
        v = models[name] if name in ("target_model", "draft_model", "spec_method",
                                     "tensor_parallel_size") else getattr(args, name)
        if v is not None:
            argv += ["--" + name.replace("_", "-"), str(v)]
    if args.enforce_eager:
        argv.append("--enforce-eager")
    return argv + ["--nwor-modes", nwor, "--scv-modes", scv, "--output", out, "--no-progress",
                   "--ncu-child"]


def ncu_preflight(args, models: dict):
    """Fail fast with a clear message before any benchmark runs."""
    import torch
    from tools.profiling import ncu
    path = ncu.find_ncu(args.ncu_path)
    version = ncu.ncu_version(path)
    if not torch.cuda.is_available():
        raise ncu.NcuError("--ncu needs a CUDA GPU (torch.cuda.is_available() is False)")
    passes = common.parse_list(args.ncu_passes)
    bad = set(passes) - {"steps", "kernels"}
    if bad or not passes:
        raise ncu.NcuError(f"--ncu-passes: unknown {sorted(bad)}; expected steps and/or kernels")
    return path, version, passes


def run_ncu_for_mode(args, models: dict, nwor: str, scv: str, ncu_path: str, passes: list,
                     ncu_dir: str) -> dict:
    import json
    from tools.profiling import ncu
    os.makedirs(ncu_dir, exist_ok=True)
    tag = f"{nwor}_{scv}"
    child_json = os.path.join(ncu_dir, f"{tag}_child.json")
    app = [sys.executable] + _child_argv(args, models, nwor, scv, child_json)
    from_start = args.ncu_profile_warmup or models["tensor_parallel_size"] > 1
    csvs: dict = {"steps": None, "kernels": None}
    info: dict = {"passes": passes, "profiled": (
        "all batches (warmup included)" if from_start else
        "kernels pass: measured batches only (cudaProfilerStart/Stop); steps pass: every step "
        "range (range replay ignores cudaProfilerStart), warm-up ranges dropped from the "
        "totals when the counts match (steps.covers says)")}
    # A failed pass does not lose the other: its error lands in pass_errors (ncu_stats says
    # which part is missing); only when every pass failed does the mode get the single `error`.
    errors: dict = {}
    for ps in passes:
        report = os.path.join(ncu_dir, f"{tag}_{ps}")
        if ps == "steps":
            cmd = ncu.steps_cmd(ncu_path, report, app, nvtx_include=args.ncu_nvtx_include,
                                profile_from_start=from_start,
                                launch_count=args.ncu_launch_count)
        else:
            cmd = ncu.kernels_cmd(ncu_path, report, app, kernel_regex=args.ncu_kernel_regex,
                                  profile_from_start=from_start,
                                  launch_count=args.ncu_launch_count)
        info[f"{ps}_command"] = " ".join(cmd)
        try:
            ncu.run(cmd, report + ".log", timeout=args.ncu_timeout, env=common.child_env())
            csvs[ps] = ncu.export_csv(ncu_path, report, report + ".csv", log_path=report + ".log")
        except ncu.NcuError as e:
            if "ERR_NVGPUCTRPERM" in str(e):
                raise                              # no pass can work
            errors[ps] = str(e)
            continue
        info[f"{ps}_csv"] = report + ".csv"
    if len(errors) == len(passes):
        raise ncu.NcuError("; ".join(f"{ps} pass: {e}" for ps, e in errors.items()))
    child = None
    if os.path.exists(child_json):                 # the profiled run's own counters
        with open(child_json) as f:
            child = json.load(f)["summary"]["per_mode"][0]
    steps = (child or {}).get("engine_steps") or {}
    # ncu_launch_count may cap the ranges: then the counts cannot match and nothing is dropped
    out = ncu.metrics_from_csv(csvs["steps"], csvs["kernels"],
                               steps_drop_first=steps.get("warmup", 0),
                               steps_expect=steps.get("measured"))
    out.update(info, nvtx_include=args.ncu_nvtx_include, kernel_regex=args.ncu_kernel_regex)
    if errors:
        out["pass_errors"] = errors
    if child is not None:
        out["profiled_run"] = ncu.profiled_run(child)
    return out


# ---------------------------------------------------------------------------------------------
def summary_table(per_mode: list[dict]) -> str:
    rows = []
    for e in per_mode:
        if "error" in e:
            rows.append([e["nwor_mode"], e["scv_mode"], "ERROR"] + [None] * 9)
            continue
        kv = e["kv_bytes_written_model"]
        ncu_w = e.get("ncu_metrics", {}).get("dram__bytes_write.sum")
        scv = e["scv_mode"] + ("" if e["scv_mode_effective"] == e["scv_mode"]
                               else f">{e['scv_mode_effective']}")
        rows.append([e["nwor_mode"], scv, e["latency_avg_s"], e["latency_p50_s"],
                     e["latency_p99_s"], e["output_tokens_per_s"], e["spec_num_draft_tokens"],
                     e["spec_acceptance_ratio"], e["nwor_tokens_staged"],
                     e["nwor_tokens_committed"], kv["total_bytes"] / 1e6,
                     None if ncu_w is None else ncu_w / 1e6])
    return common.format_table(
        ["nwor", "scv", "lat_avg_s", "p50_s", "p99_s", "tok/s", "drafts", "acc", "staged",
         "commit", "kv_MB(model)", "dram_w_MB(ncu)"], rows)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    nwor_modes = common.parse_list(args.nwor_modes)
    scv_modes = common.parse_list(args.scv_modes)
    for name, got, allowed in (("--nwor-modes", nwor_modes, NWOR_MODES),
                               ("--scv-modes", scv_modes, SCV_MODES)):
        bad = [x for x in got if x not in allowed]
        if bad or not got:
            print(f"error: {name}: {bad or 'empty'}; expected a subset of {allowed}",
                  file=sys.stderr)
            return 2
    if args.requests < 1 or args.batches < 1 or args.warmup < 0:
        print("error: --requests and --batches must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.cpu_threads:
        import torch
        torch.set_num_threads(args.cpu_threads)
    models = resolve_models(args)
    try:
        spec = resolve_spec_config(args, models)
    except ValueError as e:       # e.g. --confidence-threshold > 0 with ngram drafting
        print(f"error: speculative_config {speculative_config(args, models)} rejected by the "
              f"engine: {e}", file=sys.stderr)
        return 2
    if not args.ncu_child:
        print(f"microbench: {models['target_model']} | {spec.method} k={args.draft_tokens} | "
              f"adaptive_draft_length={int(spec.adaptive_draft_length)} "
              f"confidence_threshold={spec.confidence_threshold} | {args.scenario} "
              f"x{args.requests} req x{args.batches} batches | T={args.temperature} | "
              f"nwor={nwor_modes} scv={scv_modes}", file=sys.stderr, flush=True)
    ncu_state = None
    if args.ncu:
        from tools.profiling import ncu
        try:
            ncu_state = ncu_preflight(args, models)
        except ncu.NcuError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    modes = [(n, s) for n in nwor_modes for s in scv_modes]
    config = {**common.run_metadata(argv if argv is None else [__file__] + list(argv)),
              **models,
              "speculative_config": speculative_config(args, models),
              "adaptive_draft_length": spec.adaptive_draft_length,
              "confidence_threshold": spec.confidence_threshold,
              "acceptance": acceptance_label(args),
              "max_tokens": max_tokens(args),
              "modes": [{"nwor_mode": n, "scv_mode": s} for n, s in modes],
              "args": vars(args)}
    if ncu_state:
        config["ncu"] = {"path": ncu_state[0], "version": ncu_state[1], "passes": ncu_state[2]}
    progress = common.Progress(len(modes) * (args.warmup + args.batches), "microbench",
                               disable=args.no_progress)
    per_mode, failed = [], False
    for nwor, scv in modes:
        try:
            per_mode.append(run_mode(args, models, nwor, scv, progress,
                                     profile_measured=args.ncu_child))
        except Exception as e:  # record and go on: the other modes still say something
            failed = True
            progress.write(f"mode nwor={nwor} scv={scv} failed: {e!r}")
            per_mode.append({"nwor_mode": nwor, "scv_mode": scv, "error": repr(e),
                             "traceback": traceback.format_exc()})
        _free_device()        # the engine is unreachable now: give its memory back
    progress.close()
    result = {"config": config, "summary": {"per_mode": per_mode}}
    common.write_json(args.output, result)
    if ncu_state:
        from tools.profiling import ncu
        ncu_dir = args.ncu_dir or os.path.splitext(args.output)[0] + "_ncu"
        for entry in per_mode:
            if "error" in entry:
                continue
            try:
                entry["ncu_metrics"] = run_ncu_for_mode(
                    args, models, entry["nwor_mode"], entry["scv_mode"], ncu_state[0],
                    ncu_state[2], ncu_dir)
                for ps, err in entry["ncu_metrics"].get("pass_errors", {}).items():
                    failed = True
                    print(f"error: ncu {ps} pass, nwor={entry['nwor_mode']} "
                          f"scv={entry['scv_mode']}: {err}", file=sys.stderr)
            except ncu.NcuError as e:
                failed = True
                entry["ncu_metrics"] = {"error": str(e)}
                print(f"error: ncu, nwor={entry['nwor_mode']} scv={entry['scv_mode']}: {e}",
                      file=sys.stderr)
                if "ERR_NVGPUCTRPERM" in str(e):
                    break
            common.write_json(args.output, result)
    if not args.ncu_child:
        for e in per_mode:
            if "error" in e:
                continue
            # derived from the counters (spec_draft_tokens_short_of_k, per_mode_entry);
            # the first is the line the seed's `grep "Confidence early exit stats"` looks for
            slots = e["spec_decode_steps"] * args.draft_tokens
            where = f"nwor={e['nwor_mode']} scv={e['scv_mode']}"
            if spec.confidence_threshold > 0:
                print(f"Confidence early exit stats: {e['spec_num_draft_tokens_stopped']} tokens "
                      f"stopped ({e['spec_draft_tokens_short_of_k']} of {slots} draft slots "
                      f"unused: decode steps x k - drafted; threshold="
                      f"{spec.confidence_threshold}, adaptive="
                      f"{int(spec.adaptive_draft_length)}, {where})")
            elif spec.adaptive_draft_length:
                print(f"Adaptive draft length stats: {e['spec_draft_tokens_short_of_k']} of "
                      f"{slots} draft slots unused (decode steps x k - drafted, {where})")
            a = e.get("adaptive_stats")
            if a is not None:
                print(f"Adaptive decisions ({where}): {a['steps_spec']} speculative steps "
                      f"({a['probes']} probes), {a['steps_plain']} plain; batch k -> steps "
                      f"{a['k_hist']}")
        print(f"\n{config['target_model']} | {models['spec_method']} k={args.draft_tokens} | "
              f"{args.scenario} x{args.requests} req x{args.batches} batches | "
              f"T={args.temperature} | adaptive={int(spec.adaptive_draft_length)} "
              f"threshold={spec.confidence_threshold} | {config['device'].get('name')} | "
              f"acceptance: {'CONTROLLED' if args.acceptance_rate is not None else 'verified'}")
        print(summary_table(per_mode))
        print(f"\nwrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
