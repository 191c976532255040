"""Where a decode step's host time goes: cProfile of engine steps on a SmolLM2-shaped model
(dummy weights, or the real GGUF), plus kernel launches per step from torch.profiler."""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time

import torch

from tools.common import run_metadata, smollm2_folder, write_json
from vllm import LLM, SamplingParams


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: SmolLM2 shapes, dummy weights")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--spec", default=None, help="speculative_config JSON")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    model = args.model or smollm2_folder(tempfile.mkdtemp())
    kw = {"load_format": "dummy"} if args.model is None else {}
    import json
    spec = json.loads(args.spec) if args.spec else None
    llm = LLM(model, max_model_len=1024, gpu_memory_utilization=0.4, speculative_config=spec,
              **kw)
    eng = llm.llm_engine
    res = {"config": {**run_metadata(), **vars(args)}, "runs": []}
    for b in [int(x) for x in args.batches.split(",")]:
        sp = SamplingParams(temperature=0, max_tokens=args.steps + 20, ignore_eos=True)
        for i in range(b):
            eng.add_request(f"p{b}-{i}", {"prompt_token_ids": [100 + (i * 7 + j) % 1000
                                                              for j in range(32)]}, sp)
        for _ in range(10):
            eng.step()
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        for _ in range(args.steps):
            eng.step()
        pr.disable()
        dt = (time.perf_counter() - t0) / args.steps
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
        # kernel launches per step
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available()
                                         else [])
        with profile(activities=acts) as prof:
            for _ in range(5):
                eng.step()
        names = [e.name for e in prof.events()]
        launches = sum(n in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                             "cudaLaunchKernelExC") for n in names) / 5
        graphs = sum(n == "cudaGraphLaunch" for n in names) / 5
        memcpy = sum(n.startswith("cudaMemcpy") for n in names) / 5
        eng.abort_request([f"p{b}-{i}" for i in range(b)])
        while eng.has_unfinished_requests():
            eng.step()
        run = {"batch": b, "ms_per_step_profiled": dt * 1e3, "launches_per_step": launches,
               "graph_launches_per_step": graphs, "memcpy_per_step": memcpy,
               "cprofile_top": s.getvalue()}
        print(f"batch {b}: {dt * 1e3:.3f} ms/step under cProfile; {launches:.0f} kernel launches,"
              f" {graphs:.0f} graph launches, {memcpy:.0f} memcpy per step")
        print(s.getvalue()[:6000])
        res["runs"].append(run)
    if args.output:
        write_json(args.output, res)


if __name__ == "__main__":
    main()
