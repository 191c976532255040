#!/usr/bin/env python3
"""Measure the two roofs on this device: DRAM bandwidth from a large device-to-device copy
(bytes read + bytes written over the copy's time) and matrix FLOP/s from a large bf16 / fp16
matrix product on random data (2 N^3 over its time). Each: warm-ups, then the median of
--repeats runs timed with CUDA events (the CPU: a wall clock, for tests only).

  python3 tools/roofline/measure_peaks.py --output peaks.json     # 2 GiB copy, N = 8192

The JSON is what plot_roofline.py --peaks-json reads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def copy_bandwidth(nbytes: int, device, warmup: int, repeats: int) -> dict:
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ts = _timed(lambda: dst.copy_(src), device, warmup, repeats)
    if not torch.equal(dst[:4096], src[:4096]) or not torch.equal(dst[-4096:], src[-4096:]):
        raise RuntimeError("device copy wrote wrong bytes")
    t = statistics.median(ts)
    return {"bytes_moved": 2 * nbytes, "time_s_median": t, "time_s_all": ts,
            "bandwidth_bytes_per_s": 2 * nbytes / t}


def matmul_rate(n: int, dtype, device, warmup: int, repeats: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), dtype=dtype, device=device, generator=g)
    b = torch.randn((n, n), dtype=dtype, device=device, generator=g)
    c = torch.empty((n, n), dtype=dtype, device=device)
    ts = _timed(lambda: torch.mm(a, b, out=c), device, warmup, repeats)
    # spot-check one row against a float64 product (random data: a wrong kernel shows)
    ref = (a[:1].double() @ b.double())
    err = float((c[:1].double() - ref).norm() / ref.norm())
    if not err < 2e-2:
        raise RuntimeError(f"matmul {dtype}: relative error {err:.2e}")
    t = statistics.median(ts)
    return {"n": n, "flops": 2 * n ** 3, "time_s_median": t, "time_s_all": ts,
            "flops_per_s": 2 * n ** 3 / t, "rel_err_row0": err}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--copy-mib", type=int, default=2048, help="size of the copied buffer")
    ap.add_argument("--n", type=int, default=8192, help="matrix size N (N x N x N product)")
    ap.add_argument("--dtypes", default="bfloat16,float16", help="matmul dtypes")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dts = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dts if d not in DTYPES]
    if bad:
        raise SystemExit(f"error: --dtypes: unknown {bad}; expected {sorted(DTYPES)}")
    cp = copy_bandwidth(args.copy_mib << 20, device, args.warmup, args.repeats)
    mm = {d: matmul_rate(args.n, DTYPES[d], device, args.warmup, args.repeats) for d in dts}
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "torch": torch.__version__,
           "bandwidth_bytes_per_s": cp["bandwidth_bytes_per_s"],
           "flops_per_s": {d: r["flops_per_s"] for d, r in mm.items()},
           "copy": cp, "matmul": mm}
    print(f"{out['device']}: copy {cp['bandwidth_bytes_per_s'] / 1e12:.3f} TB/s "
          f"(read + write, {args.copy_mib} MiB); " + ", ".join(
              f"{d} mm {r['flops_per_s'] / 1e12:.1f} TFLOP/s (N={args.n})" for d, r in mm.items()))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
