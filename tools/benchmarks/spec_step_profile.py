"""Where a speculative step's time goes: host milliseconds per phase of an engine step
(schedule, launch, wait for the tokens, apply, draft), GPU busy time and kernels per step, and
tokens per second, for no-spec and each proposer, side by side in one process.

SmolLM2-135M shapes with dummy weights by default (pass --model for the real GGUF); drafts are
accepted at a controlled rate (speculative_config.acceptance_rate) so dummy weights still give
a realistic number of tokens per step. Example (H200):
  python3 -m tools.benchmarks.spec_step_profile --batches 1,32 --output $OUT/spec_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict

import torch

from tools.benchmarks import gpu_busy
from tools.common import run_metadata, smollm2_folder, write_json
from vllm import LLM, SamplingParams
from vllm.v1.spec_decode import shipped


def _configs(k: int, rate: float, methods: list[str], eagle_head: str, draft: str) -> list:
    """-> [(label, speculative_config or None)]"""
    out = []
    rate = None if rate < 0 else rate
    for m in methods:
        label_suffix, m = ("-nochain", m.removesuffix("-nochain")) if m.endswith("-nochain") \
            else ("", m)
        n0 = len(out)
        if m == "none":
            out.append(("none", None))
        elif m == "ngram":
            out.append((f"ngram-k{k}", {"method": "ngram", "num_speculative_tokens": k,
                                        "acceptance_rate": rate}))
        elif m == "eagle":
            spec = {"method": "eagle", "num_speculative_tokens": k, "acceptance_rate": rate}
            if eagle_head:
                spec["model"] = eagle_head
            out.append((f"eagle-k{k}", spec))
        elif m == "draft_model":
            out.append((f"draft_model-k{k}", {"method": "draft_model", "model": draft,
                                              "num_speculative_tokens": k,
                                              "acceptance_rate": rate}))
        else:
            raise ValueError(f"unknown method {m!r}")
        if label_suffix:
            label, spec = out[n0]
            out[n0] = (label + label_suffix, dict(spec, _nochain=True))
    return out


class PhaseTimer:
    """Wraps bound methods of live objects; accumulates seconds and calls per phase."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo = []

    def wrap(self, obj, name: str, phase: str) -> None:
        fn = getattr(obj, name, None)
        if fn is None:
            return

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[phase] += time.perf_counter() - t0
                self.calls[phase] += 1
        setattr(obj, name, timed)
        self._undo.append((obj, name))

    def reset(self):
        self.seconds.clear()
        self.calls.clear()


def _instrument(eng) -> PhaseTimer:
    t = PhaseTimer()
    runner = eng.executor.driver_runner
    t.wrap(eng.scheduler, "schedule", "schedule")
    t.wrap(runner, "_launch", "launch (prepare + forward + sample + verify, host)")
    t.wrap(runner, "_finish", "wait for tokens + to host")
    t.wrap(eng.scheduler, "update_from_output", "scheduler update")
    t.wrap(eng, "_process", "detokenize + outputs")
    t.wrap(eng.executor, "propose", "draft (propose, incl. its sync)")
    if runner.proposer is not None:
        t.wrap(runner.proposer, "observe_target", "proposer.observe_target")
    return t


def _host_ops(step, n_steps: int) -> dict:
    """torch.profiler over n_steps: CPU-side ops by self host time per step (top 30), and the
    CUDA runtime calls that block the host (synchronizations, blocking copies) per step."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available()
                                     else [])
    with profile(activities=acts) as prof:
        for _ in range(n_steps):
            step()
    rows = []
    for e in prof.key_averages():
        if e.self_cpu_time_total <= 0:
            continue
        rows.append((e.key, e.count / n_steps, e.self_cpu_time_total / n_steps))
    rows.sort(key=lambda r: -r[2])
    blocking = {k: c for k, c, _ in rows if any(s in k for s in (
        "Synchronize", "cudaMemcpy", "cudaStreamWaitEvent", "cudaHostAlloc", "cudaMalloc"))}
    return {"top_self_cpu_us_per_step": [{"op": k, "calls": c, "us": t} for k, c, t in rows[:30]],
            "runtime_calls_per_step": blocking}


def _cprofile(step, n_steps: int) -> str:
    """cProfile of n_steps: the top functions by own time and by cumulative time."""
    import cProfile
    import io
    import pstats
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n_steps):
        step()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(25)
    st.sort_stats("cumulative").print_stats(45)
    return s.getvalue()


def _sync_sites(step, n_steps: int) -> dict:
    """Source lines (file:line) of the operations that synchronized the host with the GPU
    during n_steps, with counts per step (torch.cuda.set_sync_debug_mode("warn"))."""
    if not torch.cuda.is_available():
        return {}
    import traceback
    import warnings
    sites: dict[str, float] = defaultdict(float)

    def record(message, category, filename, lineno, file=None, line=None):
        stack = [f for f in traceback.extract_stack()[:-1] if "/vllm/" in f.filename]
        where = " <- ".join(f"{f.filename.split('/vllm/')[-1]}:{f.lineno}"
                            for f in stack[-3:][::-1])
        sites[where or f"{filename}:{lineno}"] += 1 / n_steps

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            for _ in range(n_steps):
                step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return dict(sorted(sites.items(), key=lambda kv: -kv[1]))


def run_one(label: str, spec, model: str, kw: dict, batch: int, steps: int,
            max_model_len: int, torch_profile: bool = False, texts=None) -> dict:
    spec = dict(spec) if spec else None
    nochain = spec is not None and spec.pop("_nochain", False)
    if spec is not None and spec.get("acceptance_rate", 0) is None:
        spec.pop("acceptance_rate")
    saved = os.environ.get("VLLM_SPEC_CHAIN")
    if nochain:
        os.environ["VLLM_SPEC_CHAIN"] = "0"
    try:
        llm = LLM(model, max_model_len=max_model_len, gpu_memory_utilization=0.3,
                  max_num_seqs=max(batch, 1), speculative_config=spec, **kw)
    finally:
        if saved is None:
            os.environ.pop("VLLM_SPEC_CHAIN", None)
        else:
            os.environ["VLLM_SPEC_CHAIN"] = saved
    eng = llm.llm_engine
    timer = _instrument(eng)
    sp = SamplingParams(temperature=0, max_tokens=max_model_len - 300, ignore_eos=True)
    for i in range(batch):
        prompt = texts[i % len(texts)] if texts else {
            "prompt_token_ids": [100 + (i * 7 + j) % 1000 for j in range(32)]}
        eng.add_request(f"r{i}", prompt, sp)
    for _ in range(8):      # prefill and warm-up
        eng.step()
    timer.reset()
    toks0 = eng.stats.generation_tokens
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        eng.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    toks = eng.stats.generation_tokens - toks0
    phases = {p: {"ms_per_step": s * 1e3 / steps, "calls_per_step": timer.calls[p] / steps}
              for p, s in sorted(timer.seconds.items(), key=lambda kv: -kv[1])}
    busy = gpu_busy.measure(eng.step, 10)
    ops = _host_ops(eng.step, 10) if torch_profile else None
    syncs = _sync_sites(eng.step, 3) if torch_profile else None
    cprof = _cprofile(eng.step, 20) if torch_profile else None
    sp_stats = eng.stats.spec
    res = {"label": label, "batch": batch, "steps": steps, "async": eng.async_scheduling,
           "chained": eng._chain,
           "ms_per_step": wall * 1e3 / steps, "tokens_per_s": toks / wall,
           "tokens_per_step": toks / steps, "phases": phases, "gpu": busy,
           "host_ops": ops, "sync_sites": syncs, "cprofile": cprof, "mean_acceptance_length": (sp_stats.mean_acceptance_length
                                      if sp_stats is not None and sp_stats.num_drafts else None)}
    eng.abort_request([f"r{i}" for i in range(batch)])
    llm.shutdown() if hasattr(llm, "shutdown") else None
    del llm, eng
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: SmolLM2 shapes, dummy weights")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--methods", default="none,ngram,eagle,draft_model")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--acceptance-rate", type=float, default=0.7)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--torch-profile", action="store_true",
                    help="also list host ops and blocking CUDA runtime calls per step")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    model = args.model or smollm2_folder(tempfile.mkdtemp())
    kw = {"load_format": "dummy"} if args.model is None else {}
    # dummy SmolLM2 shapes: the shipped head by path; the real model: its shipped-head lookup
    head = None if args.model else os.path.join(shipped.DATA_ROOT, "eagle",
                                                 "smollm2-135m-instruct")
    texts = None
    if args.model:     # real weights: real text (the code prompts need no chat template)
        from tools.benchmarks.prompts.spec_prompts import render
        texts = render(None, "code")
    configs = _configs(args.k, args.acceptance_rate, args.methods.split(","), head, model)
    out = {"config": {**run_metadata(), **vars(args)}, "runs": []}
    for b in [int(x) for x in args.batches.split(",")]:
        for label, spec in configs:
            r = run_one(label, spec, model, kw, b, args.steps, args.max_model_len,
                        args.torch_profile, texts)
            out["runs"].append(r)
            ph = "; ".join(f"{p} {v['ms_per_step']:.3f}" for p, v in r["phases"].items())
            g = r["gpu"]
            print(f"b{b} {label}: {r['ms_per_step']:.3f} ms/step, {r['tokens_per_s']:.0f} tok/s,"
                  f" {r['tokens_per_step']:.2f} tok/step; GPU busy "
                  f"{g.get('gpu_busy_ms_per_step', float('nan')):.3f} ms/step, "
                  f"{g.get('kernels_per_step', float('nan')):.0f} kernels/step | {ph}",
                  flush=True)
            if r["host_ops"]:
                print("   blocking runtime calls/step:", {k: round(v, 2) for k, v in
                                                         r["host_ops"]["runtime_calls_per_step"].items()})
                for site, n in (r["sync_sites"] or {}).items():
                    print(f"   sync {n:5.1f}x/step at {site}")
                for o in r["host_ops"]["top_self_cpu_us_per_step"][:12]:
                    print(f"   {o['us']:8.1f} us {o['calls']:6.1f}x {o['op'][:70]}")
            if args.output:
                write_json(args.output, out)
    if args.output:
        write_json(args.output, out)
    print(json.dumps([{k: r[k] for k in ("label", "batch", "tokens_per_s")}
                      for r in out["runs"]]))


if __name__ == "__main__":
    main()
