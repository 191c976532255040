#!/usr/bin/env python3
"""SCV benefit analysis: the acceptance-mask computation in isolation, per SCV mode.

For each mode (off = per-request host loop, vectorized = one kernel, graph = that kernel
replayed from a CUDA graph, adaptive = graph where captured) and each shape (batch x k), on
random ragged inputs shaped like real verify steps (k_r in [1, k], accepted prefixes drawn
with --acceptance, a recovered/bonus token after them, -1 padding):
  host_us_per_call     time for ScvVerifier.compute() to return (the CPU's cost per step;
                       'off' includes its device->host copy and sync)
  e2e_us_per_call      until the result is on the device and the stream is idle
  from a torch.profiler trace (Chrome trace JSON per mode; open it in https://ui.perfetto.dev):
  kernel_launches      cudaLaunchKernel / cuLaunchKernel(+Ex) calls per compute()
  graph_launches       cudaGraphLaunch calls per compute()
  syncs                cudaStreamSynchronize / cudaDeviceSynchronize / cudaEventSynchronize /
                       blocking cudaMemcpy per compute()
  memcpy_dtoh          device-to-host copies per compute()
  cuda_api_us          time inside CUDA runtime + driver API calls per compute()
  gpu_kernel_us        GPU time of the kernels those calls launched, per compute()
  scv_host_us          CPU time of the `scv_compute_mask` annotation per compute()
Optionally (--e2e) end-to-end tokens/s per SCV mode from the microbench on the real model, and
(--nsys) one Nsight Systems report per mode where nsys works. On the CPU only CPU activities are
profiled (counts of CUDA calls are 0). See docs/profiling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional

from tools import common

MODES = ("off", "vectorized", "graph", "adaptive")
LAUNCH_CALLS = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchKernelEx",
                "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchCooperativeKernel"}
GRAPH_CALLS = {"cudaGraphLaunch", "cuGraphLaunch"}
SYNC_CALLS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cudaMemcpy",
              "cuMemcpyDtoH", "cuMemcpyDtoH_v2"}
API_CATS = {"cuda_runtime", "cuda_driver"}
SHAPE_PREFIX = "scv_shape/"
CALL_NAME = "scv_compute_mask"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--batch-sizes", default="1,8,64,256")
    p.add_argument("--draft-tokens", default="4,10", help="k values")
    p.add_argument("--iters", type=int, default=200, help="timed calls per shape")
    p.add_argument("--profile-iters", type=int, default=20, help="profiled calls per shape (0: no torch.profiler session)")
    p.add_argument("--warmup", type=int, default=10,
                   help="calls per shape first (graph capture; adaptive captures a shape after "
                        "it has been seen 4 times)")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--acceptance", type=float, default=0.7,
                   help="probability that each draft matches (inputs only)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=os.path.join("sweeps", "scv_benefit_analysis"))
    p.add_argument("--e2e", action="store_true",
                   help="also run the microbench (NWOR off) once per SCV mode on the real model")
    p.add_argument("--e2e-args", default="--scenario short --requests 8 --batches 4",
                   help="extra microbench flags for --e2e")
    p.add_argument("--nsys", action="store_true",
                   help="also record one Nsight Systems report per mode (where nsys works)")
    p.add_argument("--nsys-path", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


# ---------------------------------------------------------------------------------------------
def make_inputs(batch: int, k: int, vocab: int, acceptance: float, rng: random.Random, device):
    """One verify step: (draft [T], cu [R] int32, sampled [R, k + 1] int64, num_draft list)."""
    import torch
    num_draft = [k if rng.random() < 0.7 else rng.randint(1, k) for _ in range(batch)]
    drafts, rows = [], []
    for kr in num_draft:
        d = [rng.randrange(3, vocab) for _ in range(kr)]
        a = 0
        while a < kr and rng.random() < acceptance:
            a += 1
        nxt = rng.randrange(3, vocab)
        if a < kr and nxt == d[a]:
            nxt = 3 + (nxt - 2) % (vocab - 3)       # a recovered token differs from its draft
        rows.append(d[:a] + [nxt] + [-1] * (k - a))
        drafts += d
    cu, acc = [], 0
    for kr in num_draft:
        acc += kr
        cu.append(acc)
    return (torch.tensor(drafts, dtype=torch.int64, device=device),
            torch.tensor(cu, dtype=torch.int32, device=device),
            torch.tensor(rows, dtype=torch.int64, device=device), num_draft)


def _sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bench_mode(mode: str, shapes: list[tuple[int, int]], args, device, trace_path: str,
               progress: common.Progress) -> list[dict]:
    import torch
    from vllm.v1.spec_decode.scv import ScvVerifier
    max_b = max(b for b, _ in shapes)
    max_k = max(k for _, k in shapes)
    ver = ScvVerifier(mode, device, max_num_reqs=max_b, max_spec_len=max_k)
    rng = random.Random(args.seed)
    inputs = {s: make_inputs(s[0], s[1], args.vocab_size, args.acceptance, rng, device)
              for s in shapes}
    rows = []
    for (b, k) in shapes:
        draft, cu, sampled, nd = inputs[(b, k)]
        call = lambda: ver.compute(draft, cu, sampled, num_draft_tokens=nd,  # noqa: E731
                                   max_spec_len=k)
        for _ in range(args.warmup):
            call()
        _sync(device)
        before = dict(ver.mode_counts)
        host, e2e = [], []
        for _ in range(args.iters):
            _sync(device)
            t = time.perf_counter()
            call()
            host.append(time.perf_counter() - t)
            _sync(device)
            e2e.append(time.perf_counter() - t)
        ran = {m: ver.mode_counts[m] - before.get(m, 0) for m in ver.mode_counts}
        rows.append({"mode": mode, "mode_effective": ver.mode,
                     "ran_as": max(ran, key=ran.get) if any(ran.values()) else None,
                     "batch": b, "k": k, "total_draft_tokens": sum(nd),
                     "host_us_per_call": 1e6 * sum(host) / len(host),
                     "host_us_p50": 1e6 * common.percentile(host, 50),
                     "e2e_us_per_call": 1e6 * sum(e2e) / len(e2e),
                     "e2e_us_p50": 1e6 * common.percentile(e2e, 50)})
        progress.update(1, f"{mode} b{b} k{k}")
    if args.profile_iters <= 0:
        # no torch.profiler session (under Nsight Systems: two CUPTI subscribers fail)
        return rows
    # one profiled session per mode: a shape range around profile_iters calls of each shape
    from torch.profiler import ProfilerActivity, profile, record_function
    acts = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts) as prof:
        for (b, k) in shapes:
            draft, cu, sampled, nd = inputs[(b, k)]
            _sync(device)
            with record_function(f"{SHAPE_PREFIX}b{b}_k{k}"):
                for _ in range(args.profile_iters):
                    with record_function(CALL_NAME):
                        ver.compute(draft, cu, sampled, num_draft_tokens=nd, max_spec_len=k)
            _sync(device)
    prof.export_chrome_trace(trace_path)
    with open(trace_path) as f:
        per_shape = summarize_trace(json.load(f), args.profile_iters)
    for r in rows:
        r.update(per_shape.get(f"{SHAPE_PREFIX}b{r['batch']}_k{r['k']}", {}))
    ver_info = {"num_graphs": ver.num_graphs, "fallbacks": ver.fallbacks}
    for r in rows:
        r.update(verifier=ver_info)
    return rows


# ---------------------------------------------------------------------------------------------
def _events(trace: dict) -> list[dict]:
    evs = trace.get("traceEvents", trace if isinstance(trace, list) else [])
    return [e for e in evs if isinstance(e, dict) and e.get("ph") == "X"]


def _corr(e: dict):
    a = e.get("args") or {}
    return a.get("correlation", a.get("correlation id"))


def summarize_trace(trace: dict, calls_per_shape: int) -> dict[str, dict]:
    """Per shape range (user annotations named SHAPE_PREFIX...): CUDA API calls issued inside it
    (launches, graph launches, syncs, API time), GPU work they caused (matched by correlation
    id, else by time), and the CPU time of the CALL_NAME annotations. Values are per call."""
    evs = _events(trace)
    shapes = sorted((e for e in evs if str(e.get("name", "")).startswith(SHAPE_PREFIX)),
                    key=lambda e: float(e["ts"]))
    gpu = [e for e in evs if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    api_corrs = {_corr(e) for e in evs if e.get("cat") in API_CATS} - {None}
    gpu_by_corr: dict = {}
    for g in gpu:
        gpu_by_corr.setdefault(_corr(g), []).append(g)
    # GPU work whose launch was not recorded (no API event with its correlation id) is
    # attributed by time: to the shape range it starts in, or after (until the next range).
    orphans = [g for g in gpu if _corr(g) not in api_corrs]
    out = {}
    n = max(1, calls_per_shape)
    for i, s in enumerate(shapes):
        t0, t1 = float(s["ts"]), float(s["ts"]) + float(s.get("dur", 0))
        t_next = float(shapes[i + 1]["ts"]) if i + 1 < len(shapes) else float("inf")
        inside = [e for e in evs if e is not s and e.get("pid") == s.get("pid")
                  and t0 <= float(e["ts"]) <= t1 and e.get("cat") not in
                  ("kernel", "gpu_memcpy", "gpu_memset")]
        api = [e for e in inside if e.get("cat") in API_CATS]
        names = [e.get("name", "") for e in api]
        corrs = {_corr(e) for e in api} - {None}
        caused = [g for c in corrs for g in gpu_by_corr.get(c, [])]
        caused += [g for g in orphans if t0 <= float(g["ts"]) < t_next]
        kern = [g for g in caused if g.get("cat") == "kernel"]
        memcpy = [g for g in caused if g.get("cat") == "gpu_memcpy"]
        calls = [e for e in inside if e.get("name") == CALL_NAME]
        out[s["name"]] = {
            "profiled_calls": len(calls) or n,
            "kernel_launches": sum(nm in LAUNCH_CALLS for nm in names) / n,
            "graph_launches": sum(nm in GRAPH_CALLS for nm in names) / n,
            "syncs": sum(nm in SYNC_CALLS for nm in names) / n,
            "memcpy_dtoh": sum("DtoH" in g.get("name", "") or "Device -> Pageable"
                               in g.get("name", "") or "Device -> Pinned" in g.get("name", "")
                               for g in memcpy) / n,
            "cpu_ops": sum(e.get("cat") == "cpu_op" for e in inside) / n,
            "cuda_api_calls": len(api) / n,
            "cuda_api_us": sum(float(e.get("dur", 0)) for e in api) / n,
            "gpu_kernels": len(kern) / n,
            "gpu_kernel_us": sum(float(g.get("dur", 0)) for g in kern) / n,
            "gpu_memcpy_us": sum(float(g.get("dur", 0)) for g in memcpy) / n,
            "scv_host_us": sum(float(e.get("dur", 0)) for e in calls) / max(1, len(calls)),
        }
    return out


# ---------------------------------------------------------------------------------------------
def run_e2e(args, modes: list[str], out_dir: str) -> dict:
    out = os.path.join(out_dir, "e2e_microbench.json")
    cmd = [*common.python_module_cmd("tools.profiling.run_nwor_microbench"),
           *shlex.split(args.e2e_args), "--nwor-modes", "off", "--scv-modes", ",".join(modes),
           "--output", out]
    p = subprocess.run(cmd, env=common.child_env())
    res = {"command": " ".join(shlex.quote(c) for c in cmd), "json": out, "rc": p.returncode}
    if os.path.exists(out):
        with open(out) as f:
            d = json.load(f)
        res["per_mode"] = [{k: e.get(k) for k in (
            "scv_mode", "scv_mode_effective", "output_tokens_per_s", "latency_avg_s",
            "latency_p50_s", "latency_p99_s", "scv_mask_steps", "spec_acceptance_ratio",
            "error")} for e in d["summary"]["per_mode"]]
    return res


def find_nsys(explicit: Optional[str]) -> Optional[str]:
    for c in [explicit, shutil.which("nsys"), "/usr/local/cuda/bin/nsys"]:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def run_nsys(args, modes: list[str], out_dir: str) -> dict:
    """One nsys report per mode (this script on that mode alone). nsys may record but fail to
    produce a report on some machines: the status says what happened, nothing here is fatal."""
    nsys = find_nsys(args.nsys_path)
    if nsys is None:
        return {"status": "nsys not found (PATH, /usr/local/cuda/bin, --nsys-path)"}
    res: dict = {"path": nsys, "reports": {}}
    for mode in modes:
        rep = os.path.join(out_dir, f"scv_{mode}_nsys")
        tmp = os.path.join(out_dir, f"nsys_run_{mode}")
        cmd = [nsys, "profile", "--trace", "cuda,nvtx,osrt", "--force-overwrite", "true",
               "-o", rep, *common.python_module_cmd("tools.profiling.scv_benefit"), "--modes", mode,
               "--batch-sizes", args.batch_sizes, "--draft-tokens", args.draft_tokens,
               "--iters", str(min(args.iters, 50)), "--profile-iters", "5",
               "--output-dir", tmp, "--no-progress"]
        entry: dict = {"command": " ".join(shlex.quote(c) for c in cmd)}
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                               env=common.child_env())
            entry["rc"] = p.returncode
            entry["log_tail"] = (p.stdout + p.stderr)[-1500:]
            if os.path.exists(rep + ".nsys-rep"):
                st = subprocess.run([nsys, "stats", "--report", "cuda_api_sum,cuda_gpu_kern_sum,"
                                     "nvtx_sum", "--format", "csv", "--output", rep,
                                     rep + ".nsys-rep"], capture_output=True, text=True,
                                    timeout=600)
                entry["report"] = rep + ".nsys-rep"
                entry["stats_rc"] = st.returncode
                entry["stats_tail"] = (st.stdout + st.stderr)[-1500:]
                entry["status"] = "ok" if st.returncode == 0 else "report written, stats failed"
            else:
                entry["status"] = "no report produced"
        except Exception as e:
            entry["status"] = f"failed: {e!r}"
        res["reports"][mode] = entry
    return res


def table(rows: list[dict]) -> str:
    return common.format_table(
        ["mode", "ran_as", "batch", "k", "host_us", "e2e_us", "launch", "graph", "sync",
         "api_us", "gpu_us"],
        [[r["mode"], r.get("ran_as"), r["batch"], r["k"], r["host_us_per_call"],
          r["e2e_us_per_call"], r.get("kernel_launches"), r.get("graph_launches"),
          r.get("syncs"), r.get("cuda_api_us"), r.get("gpu_kernel_us")] for r in rows])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    modes = common.parse_list(args.modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"error: --modes: {bad or 'empty'}; expected a subset of {MODES}", file=sys.stderr)
        return 2
    shapes = [(b, k) for b in common.parse_list(args.batch_sizes, int)
              for k in common.parse_list(args.draft_tokens, int)]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(args.output_dir, exist_ok=True)
    progress = common.Progress(len(modes) * len(shapes), "scv", disable=args.no_progress)
    rows, traces = [], {}
    for mode in modes:
        trace = os.path.join(args.output_dir, f"scv_{mode}_trace.json")
        rows += bench_mode(mode, shapes, args, device, trace, progress)
        traces[mode] = trace
    progress.close()
    summary = {"config": {**common.run_metadata(None if argv is None
                                                else [__file__] + list(argv)),
                          "args": vars(args), "device_used": str(device),
                          "profiled_activities": "CPU+CUDA" if device.type == "cuda" else "CPU"},
               "per_shape": rows, "traces": traces}
    path = os.path.join(args.output_dir, "scv_benefit_summary.json")
    common.write_json(path, summary)
    if args.e2e:
        summary["e2e"] = run_e2e(args, modes, args.output_dir)
        common.write_json(path, summary)
    if args.nsys:
        summary["nsys"] = run_nsys(args, modes, args.output_dir)
        common.write_json(path, summary)
    print(table(rows))
    if "e2e" in summary and "per_mode" in summary["e2e"]:
        print(common.format_table(
            ["scv_mode", "effective", "tok/s", "lat_avg_s", "lat_p99_s"],
            [[e["scv_mode"], e["scv_mode_effective"], e["output_tokens_per_s"],
              e["latency_avg_s"], e["latency_p99_s"]] for e in summary["e2e"]["per_mode"]]))
    print(f"\nwrote {path} and traces {', '.join(traces.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
