#!/usr/bin/env python3
"""One stage's Nsight Compute results -> the roofline metrics JSON that plot_roofline.py reads.

Input: the stage's kernel-replay CSV (`ncu --import r.ncu-rep --csv --page raw`, any units) or
the .ncu-rep itself (exported through ncu). Every profiled kernel is summed:
  FLOPs = SASS floating-point lanes (fp32/fp16/fp64; FMA = 2) + tensor-path operations
  bytes = dram__bytes_read.sum + dram__bytes_write.sum
  time  = gpu__time_duration.sum (kernels back to back: launch gaps are not in it)
ncu_metrics.py says which counters and why. The CSV is read by tools/profiling/ncu_parse.py.

  python3 tools/roofline/parse_ncu_results.py --input ncu_reports/v1_decode.csv \\
      --stage v1_decode --profile-json stages.json --output metrics/v1_decode_metrics.json
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod             # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


try:                                    # repo root on sys.path (PYTHONPATH=$PWD, pytest)
    from tools.profiling import ncu_parse
except ImportError:                     # run as a file without it: by its path
    ncu_parse = _load("ncu_parse", os.path.join(_HERE, "..", "profiling", "ncu_parse.py"))
try:
    from tools.roofline import ncu_metrics
except ImportError:
    import ncu_metrics                  # this script's own folder is sys.path[0]

STAGE_LABELS = {"v0_prefill": "V0 Prefill", "v1_prefill": "V1 Prefill",
                "v1_decode": "V1 Decode"}


def read_csv_text(path: str, ncu: str = "ncu") -> str:
    if path.endswith(".ncu-rep"):
        p = subprocess.run([ncu, "--import", path, "--csv", "--page", "raw", "--print-units",
                            "base"], capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"error: {ncu} --import {path} failed: {p.stderr[-1500:]}")
        return p.stdout
    with open(path, newline="", errors="replace") as f:
        return f.read()


def metrics_from_table(table, stage: str, top: int = 12) -> dict:
    """Totals over every profiled kernel, FLOPs, bytes, time, and the top kernels by time."""
    names = table.metric_names
    totals = ncu_parse.aggregate(table.results, names)
    fl = ncu_metrics.flops_from_totals(totals)
    rd, wr = totals.get(ncu_metrics.DRAM_READ), totals.get(ncu_metrics.DRAM_WRITE)
    t_ns = totals.get(ncu_metrics.TIME)
    if rd is None or wr is None or not t_ns:
        raise SystemExit(f"error: {stage}: the CSV lacks DRAM bytes or kernel time "
                         f"({ncu_metrics.DRAM_READ}, {ncu_metrics.DRAM_WRITE}, "
                         f"{ncu_metrics.TIME}); was it profiled with run_ncu.sh's metrics?")
    nbytes, t = rd + wr, t_ns * 1e-9
    per: dict[str, list] = {}
    for r in table.results:
        per.setdefault(ncu_parse.short_kernel_name(r.name), []).append(r)
    kernels = []
    for name, rs in per.items():
        agg = ncu_parse.aggregate(rs, names)
        kfl = ncu_metrics.flops_from_totals(agg)["flops"]
        kb = (agg.get(ncu_metrics.DRAM_READ) or 0) + (agg.get(ncu_metrics.DRAM_WRITE) or 0)
        kernels.append({"name": name, "count": len(rs),
                        "time_s": (agg.get(ncu_metrics.TIME) or 0) * 1e-9,
                        "flops": kfl, "bytes": kb})
    kernels.sort(key=lambda k: -k["time_s"])
    return {
        "stage": stage, "label": STAGE_LABELS.get(stage, stage),
        "flops": fl["flops"], "bytes": nbytes, "time_s": t,
        "arithmetic_intensity": fl["flops"] / nbytes if nbytes else None,
        "flops_per_s": fl["flops"] / t, "bytes_per_s": nbytes / t,
        "dram_bytes_read": rd, "dram_bytes_write": wr,
        **{k: v for k, v in fl.items() if k != "flops"},
        "kernels": len(table.results), "distinct_kernels": len(per),
        "top_kernels": kernels[:top],
        "totals": totals, "units": table.units,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="the stage's ncu CSV (or .ncu-rep)")
    p.add_argument("--stage", required=True, help="v0_prefill, v1_prefill or v1_decode")
    p.add_argument("--profile-json", default=None,
                   help="profile_decode_step.py --output JSON: adds the analytic FLOPs / bytes "
                        "and the CUDA-event time of the stage")
    p.add_argument("--ncu", default="ncu", help="ncu binary (only to read a .ncu-rep)")
    p.add_argument("--output", required=True, help="metrics JSON to write")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    text = read_csv_text(args.input, args.ncu)
    try:
        table = ncu_parse.parse_csv(text)
    except ncu_parse.NcuParseError as e:
        raise SystemExit(f"error: {args.input}: {e}") from None
    if not table.results:
        raise SystemExit(f"error: {args.input}: no profiled kernels")
    out = metrics_from_table(table, args.stage)
    out["source"] = {"input": os.path.abspath(args.input),
                     "parsed": datetime.datetime.now(datetime.timezone.utc).isoformat(
                         timespec="seconds"),
                     "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    if args.profile_json:
        with open(args.profile_json) as f:
            prof = json.load(f)
        st = prof.get("stages", {}).get(args.stage)
        if st is None:
            raise SystemExit(f"error: {args.profile_json} has no stage {args.stage!r}")
        out["model"] = {k: st.get(k) for k in (
            "tokens", "flops_model", "flops_model_linear", "flops_model_attention",
            "flops_model_lm_head", "bytes_model_min", "bytes_model_weights",
            "bytes_model_kv_read", "bytes_model_kv_write", "arithmetic_intensity_model",
            "time_s_median")}
        out["model"]["measured_over_model_flops"] = (out["flops"] / st["flops_model"]
                                                     if st.get("flops_model") else None)
        out["model"]["measured_over_model_bytes"] = (out["bytes"] / st["bytes_model_min"]
                                                     if st.get("bytes_model_min") else None)
        cfg = prof.get("config", {})
        out["config"] = {k: cfg.get(k) for k in ("model", "dtype", "batch", "P", "device",
                                                  "date", "command")}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"{out['label']:11s} kernels={out['kernels']:5d} FLOPs={out['flops']:.4e} "
          f"(tensor {out['flops_tensor']:.3e}, {out['tensor_family']}) bytes={out['bytes']:.4e} "
          f"time={1e3 * out['time_s']:.3f} ms AI={out['arithmetic_intensity']:.2f} "
          f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
