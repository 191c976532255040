"""Kernels, GPU time and wall time per decode step of the engine, as JSON.

For each fusion setting (VLLM_DISABLE_KERNEL_FUSION off / on), mode (graph: CUDA graphs; eager:
enforce_eager) and batch size: B requests are prefilled, warmed up, then
  - wall ms per step: engine.step() timed with the device synchronised around the loop;
  - kernels per step and GPU ms per step: torch.profiler (CUDA activity) over a few steps, the
    sum of kernel durations and the kernel count (graph replays included), top kernels by time;
  - host syncs per step (CUDA): torch.cuda.set_sync_debug_mode("warn") over a few steps, with
    the source lines that synchronised;
  - eager mode: a cProfile of a few steps (the host functions that cost the most).
On the CPU only the wall time (and cProfile) mean anything; the script runs there end to end.

Examples:
  python tools/benchmarks/kernels_per_step.py --model .gguf/smol.gguf --batches 1,64 \\
      --output sweeps/kernels_per_step_smollm2.json
  python tools/benchmarks/kernels_per_step.py --shapes llama3-8b --batches 1,64
  python tools/benchmarks/kernels_per_step.py --shapes smollm2 --batches 1 --modes eager \\
      --fusion on --steps 3 --dtype float32          # CPU smoke run
"""
from __future__ import annotations

import argparse
import cProfile
import collections
import gc
import io
import json
import os
import pstats
import statistics
import tempfile
import time
import warnings

import torch

from tools.common import (llama3_8b_folder, run_metadata as run_meta, smollm2_folder,  # noqa: E402
                          sync, write_json)

from vllm import LLM, SamplingParams  # noqa: E402

_CUDA = torch.cuda.is_available()


def _add_requests(eng, tag: str, batch: int, prompt_len: int, max_tokens: int) -> list[str]:
    vocab = eng.config.model_config.vocab_size
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = []
    for i in range(batch):
        rid = f"{tag}-{i}"
        eng.add_request(rid, {"prompt_token_ids": [100 + (i * 7 + j) % (vocab - 200)
                                                   for j in range(prompt_len)]}, sp)
        ids.append(rid)
    return ids


def _profile_kernels(eng, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if _CUDA else [])
    sync()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            eng.step()
        sync()
    names: collections.Counter = collections.Counter()
    times: collections.Counter = collections.Counter()
    n = 0
    total_us = 0.0
    launches = graph_launches = 0
    for e in prof.events():
        dev = getattr(e, "device_type", None)
        if _CUDA and dev is not None and "CUDA" in str(dev) and e.name and \
                not e.name.startswith(("Memcpy", "Memset", "cudaMemcpy")) and \
                e.device_time_total is not None:
            # Device-side events are kernels (plus memcpy/memset, excluded above).
            n += 1
            dur = float(getattr(e, "device_time", 0.0) or e.device_time_total)
            total_us += dur
            names[e.name] += 1
            times[e.name] += dur
        elif e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                        "cudaLaunchKernelExC"):
            launches += 1
        elif e.name == "cudaGraphLaunch":
            graph_launches += 1
    top = [{"name": k[:120], "per_step": names[k] / steps, "us_per_step": times[k] / steps}
           for k, _ in times.most_common(15)]
    return {"kernels_per_step": n / steps if _CUDA else None,
            "gpu_ms_per_step": total_us / steps / 1e3 if _CUDA else None,
            "host_kernel_launches_per_step": launches / steps,
            "graph_launches_per_step": graph_launches / steps,
            "top_kernels": top}


def _sync_sites(eng, steps: int) -> dict:
    if not _CUDA:
        return {}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                eng.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = collections.Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in rec
                                if "synchroniz" in str(w.message))
    return {"host_syncs_per_step": sum(sites.values()) / steps,
            "sync_sites": {k: v / steps for k, v in sites.most_common(12)}}


def _cprofile(eng, steps: int) -> str:
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        eng.step()
    sync()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
    return s.getvalue()


def measure(llm: LLM, batch: int, args, mode: str) -> dict:
    eng = llm.llm_engine
    n_prof, n_sync = min(5, args.steps), min(3, args.steps)
    total = args.warmup + args.steps + n_prof + n_sync + (args.steps if mode == "eager" else 0)
    rids = _add_requests(eng, f"b{batch}-{mode}", batch, args.prompt_len, total + 8)
    eng.step()                                      # prefill
    for _ in range(args.warmup):
        eng.step()
    gen0 = eng.stats.generation_tokens
    sync()
    step_s = []
    t_all = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        eng.step()
        step_s.append(time.perf_counter() - t0)
    sync()
    wall = time.perf_counter() - t_all
    gen = eng.stats.generation_tokens - gen0
    res = {"batch": batch, "mode": mode, "steps": args.steps,
           "wall_ms_per_step": 1e3 * wall / args.steps,
           "wall_ms_per_step_median": 1e3 * statistics.median(step_s),
           "tokens_per_s": gen / wall if wall else 0.0}
    res.update(_profile_kernels(eng, n_prof))
    res.update(_sync_sites(eng, n_sync))
    if mode == "eager" and args.cprofile:
        res["cprofile_top"] = _cprofile(eng, max(1, min(args.steps, 5)))
    if res["gpu_ms_per_step"]:
        res["gpu_busy_fraction"] = res["gpu_ms_per_step"] / res["wall_ms_per_step"]
    eng.abort_request(rids)
    while eng.has_unfinished_requests():
        eng.step()
    return res


def launch_overhead(reps: int = 200) -> dict:
    """Host microseconds per call of each kernel wrapper a SmolLM2 decode layer launches (batch
    1, bf16 on CUDA), with no sync inside the loop: the eager path's floor per launch. On the
    CPU these time the torch reference paths instead (labelled so)."""
    import torch.nn.functional as F

    from vllm.model_executor.layers.fused_act import silu_and_mul
    from vllm.model_executor.layers.fused_norm import rms_norm
    from vllm.model_executor.layers.fused_rotary import rotary_embedding
    from vllm.v1.attention.kv_write import write_kv
    from vllm.v1.attention.paged_attention import paged_attention
    from vllm.v1.attention.rope_kv_write import rope_write_kv
    dev = "cuda" if _CUDA else "cpu"
    dt = torch.bfloat16 if _CUDA else torch.float32
    H, I, hq, hkv, d, page, R, nb = 576, 1536, 9, 3, 64, 16, 256, 64
    x = torch.randn(1, H, device=dev, dtype=dt)
    w = torch.ones(H, device=dev, dtype=dt)
    wqkv = torch.randn((hq + 2 * hkv) * d, H, device=dev, dtype=dt)
    gu = torch.randn(1, 2 * I, device=dev, dtype=dt)
    qkv = torch.randn(1, (hq + 2 * hkv) * d, device=dev, dtype=dt)
    q = qkv[:, :hq * d].view(1, hq, d)
    k = qkv[:, hq * d:(hq + hkv) * d].view(1, hkv, d)
    v = qkv[:, (hq + hkv) * d:].view(1, hkv, d)
    pos = torch.zeros(1, dtype=torch.int64, device=dev)
    cs = torch.randn(1024, d, device=dev)
    cache = torch.zeros(2, nb, page, hkv, d, device=dev, dtype=dt)
    slots = torch.zeros(1, dtype=torch.int64, device=dev)
    bt = torch.zeros(R, 64, dtype=torch.int32, device=dev)
    ctx = torch.zeros(R, dtype=torch.int32, device=dev)
    ctx[0] = 100
    qsl = torch.ones(R + 1, dtype=torch.int32, device=dev)
    qsl[0] = 0
    tri = torch.zeros(1, dtype=torch.int32, device=dev)
    calls = {
        "torch_add": lambda: x + x,
        "F.linear_qkv": lambda: F.linear(x, wqkv),
        "rms_norm": lambda: rms_norm(x, w, 1e-5),
        "rms_norm_residual": lambda: rms_norm(x, w, 1e-5, x),
        "rotary_embedding": lambda: rotary_embedding(pos, q, k, cs, d),
        "write_kv": lambda: write_kv(k, v, cache, slots),
        "rope_write_kv": lambda: rope_write_kv(pos, q, k, v, cs, d, cache, slots),
        "paged_attention": lambda: paged_attention(q, k, v, cache, bt, ctx, qsl, tri, 0.125),
        "silu_and_mul": lambda: silu_and_mul(gu),
    }
    res = {"device_path": "triton" if _CUDA else "torch reference (cpu)", "us_per_call": {}}
    for name, fn in calls.items():
        try:
            for _ in range(3):
                fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            host = time.perf_counter() - t0
            sync()
            res["us_per_call"][name] = 1e6 * host / reps
        except Exception as e:  # one broken wrapper must not hide the others
            res["us_per_call"][name] = f"error: {type(e).__name__}: {e}"
    try:
        import triton
        res["triton"] = triton.__version__
    except Exception:
        res["triton"] = None
    return res


def _free(llm) -> None:
    llm.shutdown()
    del llm
    gc.collect()
    if _CUDA:
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None,
                    help="model path / name (default: the default model unless --shapes)")
    ap.add_argument("--shapes", choices=["smollm2", "llama3-8b"], default=None,
                    help="dummy weights at these shapes instead of --model")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--modes", default="graph,eager")
    ap.add_argument("--fusion", choices=["both", "on", "off"], default="both",
                    help="VLLM_DISABLE_KERNEL_FUSION=0 (on), =1 (off), or both, in one process")
    ap.add_argument("--draft-graphs", choices=["both", "on", "off"], default="on",
                    help="VLLM_DRAFT_CUDA_GRAPHS for --spec runs")
    ap.add_argument("--spec", default=None, help="speculative_config JSON (e.g. a draft model)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    ap.add_argument("--no-cprofile", dest="cprofile", action="store_false")
    ap.add_argument("--launch-overhead", action="store_true",
                    help="also time the host cost of each kernel wrapper (no sync per call)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()

    kw: dict = {}
    if args.shapes is not None:
        root = tempfile.mkdtemp()
        model = smollm2_folder(root) if args.shapes == "smollm2" else llama3_8b_folder(root)
        kw["load_format"] = "dummy"
    else:
        model = args.model or "SmolLM2-135M-Instruct"
    if args.dtype != "auto":
        kw["dtype"] = args.dtype
    if not _CUDA:
        kw.pop("gpu_memory_utilization", None)
    else:
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    spec = json.loads(args.spec) if args.spec else None
    batches = [int(b) for b in args.batches.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("graph", "eager"):
            raise ValueError(f"--modes: {m!r} is not graph or eager")
    if args.launch_overhead:
        lo = launch_overhead()
        print("host us per call:", json.dumps(lo["us_per_call"]), flush=True)
    fusions = {"both": ["on", "off"], "on": ["on"], "off": ["off"]}[args.fusion]
    dgraphs = {"both": ["on", "off"], "on": ["on"], "off": ["off"]}[args.draft_graphs] \
        if spec else ["on"]

    out = {"config": {**run_meta(), **vars(args), "model_resolved": model,
                      "cuda": _CUDA}, "runs": []}
    if args.launch_overhead:
        out["launch_overhead"] = lo
    for fusion in fusions:
        for dg in dgraphs:
            os.environ["VLLM_DISABLE_KERNEL_FUSION"] = "0" if fusion == "on" else "1"
            os.environ["VLLM_DRAFT_CUDA_GRAPHS"] = "1" if dg == "on" else "0"
            for mode in modes:
                t0 = time.perf_counter()
                llm = LLM(model, enforce_eager=mode == "eager", max_model_len=args.max_model_len,
                          max_num_seqs=max(batches), speculative_config=spec, **kw)
                build_s = time.perf_counter() - t0
                for b in batches:
                    r = measure(llm, b, args, mode)
                    r.update(fusion=fusion, draft_graphs=dg if spec else None,
                             engine_build_s=build_s)
                    out["runs"].append(r)
                    k = r["kernels_per_step"]
                    g = r["gpu_ms_per_step"]
                    print(f"fusion={fusion} mode={mode} batch={b}"
                          + (f" draft_graphs={dg}" if spec else "")
                          + f": wall {r['wall_ms_per_step']:.3f} ms/step, "
                          + (f"{k:.1f} kernels, GPU {g:.3f} ms/step, " if k is not None else "")
                          + f"{r['tokens_per_s']:.1f} tok/s", flush=True)
                    if args.output:       # partial results survive a time box
                        write_json(args.output, out)
                _free(llm)
    # Fusion on vs off in this run, as ratios.
    ratios = []
    for r in out["runs"]:
        if r["fusion"] != "on":
            continue
        for o in out["runs"]:
            if (o["fusion"], o["mode"], o["batch"], o["draft_graphs"]) == \
                    ("off", r["mode"], r["batch"], r["draft_graphs"]):
                ratios.append({"mode": r["mode"], "batch": r["batch"],
                               "wall_on_over_off": r["wall_ms_per_step"] / o["wall_ms_per_step"],
                               "kernels_on_minus_off": (None if r["kernels_per_step"] is None
                                                        else r["kernels_per_step"]
                                                        - o["kernels_per_step"]),
                               "gpu_on_over_off": (None if not o["gpu_ms_per_step"]
                                                   else r["gpu_ms_per_step"]
                                                   / o["gpu_ms_per_step"])})
    out["fusion_ratios"] = ratios
    if args.output:
        write_json(args.output, out)
    else:
        print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
