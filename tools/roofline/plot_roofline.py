#!/usr/bin/env python3
"""Roofline plot of the three stages (V0 prefill, V1 prefill, V1 decode) from the metrics JSON
that parse_ncu_results.py writes: x = arithmetic intensity (FLOP per DRAM byte), y = achieved
FLOP/s, under the GPU's roof min(peak FLOP/s, intensity x DRAM bandwidth).

Roofs: the datasheet's dense peaks for --gpu / --dtype, and, with --peaks-json (from
measure_peaks.py on the device), the measured ones beside them (dashed). Each point is labelled
with its FLOP/s, its efficiency (achieved / the roof at its intensity, against the measured roof
when given, else the datasheet's) and its bottleneck (left of the ridge point: memory-bound).
A footer names the hardware and the run. 300 dpi, serif; PNG, PDF and/or SVG.

  python3 tools/roofline/plot_roofline.py --v0_prefill m/v0_prefill_metrics.json \\
      --v1_prefill m/v1_prefill_metrics.json --v1_decode m/v1_decode_metrics.json \\
      --gpu H200 --dtype float16 --model gpt2-medium --batch-size 1 --seq-length 512 \\
      --peaks-json m/peaks.json --formats png pdf --output results/roofline
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Datasheet peaks: dense (no sparsity) tensor-core FLOP/s for 16-bit types, plain (CUDA core,
# no TF32) FLOP/s for float32, and DRAM bandwidth. SXM parts for H100 / H200.
GPUS = {
    "A6000": {"name": "NVIDIA RTX A6000", "bandwidth": 768e9,
              "flops": {"float16": 154.8e12, "bfloat16": 154.8e12, "float32": 38.7e12}},
    "A100-40GB": {"name": "NVIDIA A100 40GB", "bandwidth": 1555e9,
                  "flops": {"float16": 312e12, "bfloat16": 312e12, "float32": 19.5e12}},
    "A100-80GB": {"name": "NVIDIA A100 80GB", "bandwidth": 2039e9,
                  "flops": {"float16": 312e12, "bfloat16": 312e12, "float32": 19.5e12}},
    "H100-80GB": {"name": "NVIDIA H100 80GB (SXM)", "bandwidth": 3.35e12,
                  "flops": {"float16": 989.4e12, "bfloat16": 989.4e12, "float32": 66.9e12}},
    "H200": {"name": "NVIDIA H200 141GB (SXM)", "bandwidth": 4.8e12,
             "flops": {"float16": 989.4e12, "bfloat16": 989.4e12, "float32": 66.9e12}},
}
DTYPES = ("float16", "float32", "bfloat16")
STAGES = (("v0_prefill", "V0 Prefill", "o", "#1f77b4"),
          ("v1_prefill", "V1 Prefill", "s", "#2ca02c"),
          ("v1_decode", "V1 Decode", "D", "#d62728"))
# label offsets (points) and alignment per stage: the two prefills sit close together
LABEL_AT = {"v0_prefill": ((-12, 22), "right"), "v1_prefill": ((-12, -50), "right"),
            "v1_decode": ((12, 8), "left")}


def load_peaks(path: str, dtype: str) -> dict:
    """measure_peaks.py JSON -> {'flops', 'bandwidth', 'label'}; missing dtype -> ValueError."""
    with open(path) as f:
        d = json.load(f)
    bw = d.get("bandwidth_bytes_per_s")
    fl = (d.get("flops_per_s") or {}).get(dtype)
    if not bw or not fl:
        raise ValueError(f"--peaks-json {path}: needs bandwidth_bytes_per_s and flops_per_s."
                         f"{dtype} (has {sorted((d.get('flops_per_s') or {}))})")
    return {"flops": float(fl), "bandwidth": float(bw),
            "label": f"measured on {d.get('device', '?')} ({str(d.get('date', ''))[:10]})"}


def roof(ai: float, peak: float, bw: float) -> float:
    return min(peak, ai * bw)


def classify(point: dict, peak: float, bw: float) -> dict:
    ai, perf = point["arithmetic_intensity"], point["flops_per_s"]
    attainable = roof(ai, peak, bw)
    return {"attainable_flops_per_s": attainable,
            "efficiency_pct": 100.0 * perf / attainable if attainable else None,
            "bottleneck": "memory-bound" if ai < peak / bw else "compute-bound",
            "ridge_point": peak / bw}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--v0_prefill", default=None, help="metrics JSON of V0 prefill (no cache)")
    p.add_argument("--v1_prefill", default=None, help="metrics JSON of V1 prefill (cache built)")
    p.add_argument("--v1_decode", default=None, help="metrics JSON of V1 decode (from cache)")
    p.add_argument("--gpu", default="H200", choices=tuple(GPUS),
                   help="GPU whose datasheet roof is drawn")
    p.add_argument("--dtype", default="float16", choices=DTYPES, help="data type of the peak")
    p.add_argument("--model", default=None, help="model name for the title")
    p.add_argument("--batch-size", type=int, default=None, help="batch size for the footer")
    p.add_argument("--seq-length", type=int, default=None,
                   help="sequence (prompt) length for the footer")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=("png", "pdf", "svg"),
                   help="output formats")
    p.add_argument("--peaks-json", default=None,
                   help="measured peaks (measure_peaks.py): drawn beside the datasheet roof, "
                        "and the efficiencies are computed against them")
    p.add_argument("--output", default="roofline",
                   help="output path without extension (writes <output>.<fmt> and "
                        "<output>_summary.json)")
    p.add_argument("--title", default=None)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    points = []
    for key, label, marker, color in STAGES:
        path = getattr(args, key)
        if not path:
            continue
        with open(path) as f:
            m = json.load(f)
        for k in ("flops", "bytes", "time_s"):
            if not m.get(k) and m.get(k) != 0:
                raise SystemExit(f"error: --{key} {path}: no {k!r} (a parse_ncu_results.py "
                                 "metrics JSON is expected)")
        if not m["bytes"] or not m["time_s"]:
            raise SystemExit(f"error: --{key} {path}: bytes and time must be > 0")
        m.setdefault("arithmetic_intensity", m["flops"] / m["bytes"])
        m.setdefault("flops_per_s", m["flops"] / m["time_s"])
        points.append((key, label, marker, color, m))
    if not points:
        raise SystemExit("error: give at least one of --v0_prefill, --v1_prefill, --v1_decode")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = GPUS[args.gpu]
    ds_peak, ds_bw = gpu["flops"][args.dtype], gpu["bandwidth"]
    measured = None
    if args.peaks_json:
        try:
            measured = load_peaks(args.peaks_json, args.dtype)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
    ref_peak, ref_bw = (measured["flops"], measured["bandwidth"]) if measured else (ds_peak, ds_bw)

    plt.rcParams.update({"font.family": "serif", "font.size": 9, "axes.titlesize": 11,
                         "axes.labelsize": 10, "legend.fontsize": 8, "savefig.dpi": 300})
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    ais = [m["arithmetic_intensity"] for *_, m in points]
    perfs = [m["flops_per_s"] for *_, m in points]
    for *_, m in points:          # the analytic (hollow) points must fit too
        mo = m.get("model") or {}
        if mo.get("flops_model") and mo.get("bytes_model_min"):
            ais.append(mo["flops_model"] / mo["bytes_model_min"])
            perfs.append(mo["flops_model"] / m["time_s"])
    x_lo = min(min(ais) / 4, 0.1)
    x_hi = max(max(ais) * 4, 4 * ds_peak / ds_bw)
    xs = [x_lo * (x_hi / x_lo) ** (i / 400) for i in range(401)]
    ax.plot(xs, [roof(x, ds_peak, ds_bw) for x in xs], color="black", lw=1.6,
            label=f"datasheet roof: {ds_peak / 1e12:.0f} TFLOP/s, {ds_bw / 1e12:.2f} TB/s")
    ax.axvline(ds_peak / ds_bw, color="black", lw=0.6, ls=":")
    if measured:
        ax.plot(xs, [roof(x, measured["flops"], measured["bandwidth"]) for x in xs],
                color="0.35", lw=1.3, ls="--",
                label=f"measured roof: {measured['flops'] / 1e12:.0f} TFLOP/s, "
                      f"{measured['bandwidth'] / 1e12:.2f} TB/s")
    summary = {"gpu": args.gpu, "gpu_name": gpu["name"], "dtype": args.dtype,
               "datasheet": {"flops_per_s": ds_peak, "bandwidth_bytes_per_s": ds_bw},
               "measured": measured, "efficiency_against": "measured" if measured else
               "datasheet", "points": {}}
    for key, label, marker, color, m in points:
        c = classify(m, ref_peak, ref_bw)
        ai, perf = m["arithmetic_intensity"], m["flops_per_s"]
        ax.scatter([ai], [perf], marker=marker, s=55, color=color, zorder=5,
                   edgecolor="black", linewidth=0.6, label=f"{label} (ncu counters)")
        model = m.get("model") or {}
        if model.get("flops_model") and model.get("bytes_model_min"):
            # useful FLOPs / fewest bytes over the same measured time: hollow marker
            m_ai = model["flops_model"] / model["bytes_model_min"]
            ax.scatter([m_ai], [model["flops_model"] / m["time_s"]], marker=marker, s=45,
                       facecolor="none", edgecolor=color, linewidth=1.0, zorder=4)
        txt = (f"{label}\n{perf / 1e12:.3g} TFLOP/s, AI {ai:.3g}\n"
               f"{c['efficiency_pct']:.1f}% of roof, {c['bottleneck']}")
        (dx, dy), ha = LABEL_AT[key]
        ax.annotate(txt, (ai, perf), xytext=(dx, dy), textcoords="offset points", ha=ha,
                    fontsize=7.5, color=color, arrowprops=dict(arrowstyle="-", color=color,
                                                               lw=0.5),
                    bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=color, lw=0.5, alpha=0.9))
        summary["points"][key] = {"label": label, "arithmetic_intensity": ai,
                                  "flops_per_s": perf, "flops": m["flops"],
                                  "bytes": m["bytes"], "time_s": m["time_s"], **c,
                                  "model": model or None}
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(min(min(perfs) / 5, ds_bw * x_lo), ds_peak * 3)
    ax.set_xlabel("Arithmetic intensity (FLOP / DRAM byte)")
    ax.set_ylabel("Performance (FLOP/s)")
    title = args.title or ("Roofline: KV cache effect" + (f", {args.model}" if args.model else ""))
    ax.set_title(title)
    ax.grid(True, which="major", ls="-", lw=0.4, alpha=0.5)
    ax.grid(True, which="minor", ls=":", lw=0.3, alpha=0.4)
    if any((m.get("model") or {}).get("flops_model") for *_, m in points):
        ax.scatter([], [], marker="o", facecolor="none", edgecolor="0.3",
                   label="hollow: useful FLOPs / fewest bytes (analytic)")
    ax.legend(loc="lower right", frameon=True)
    foot = [f"GPU: {gpu['name']}", f"dtype: {args.dtype}"]
    if args.batch_size is not None:
        foot.append(f"batch: {args.batch_size}")
    if args.seq_length is not None:
        foot.append(f"seq length: {args.seq_length}")
    foot2 = [f"efficiency vs {'measured' if measured else 'datasheet'} roof"]
    if measured:
        foot2.append(f"roof {measured['label']}")
    fig.text(0.5, 0.01, " | ".join(foot) + "\n" + " | ".join(foot2), ha="center", va="bottom",
             fontsize=7, color="0.25", linespacing=1.4)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for fmt in args.formats:
        path = f"{args.output}.{fmt}"
        meta = {"Title": title, "Creator": "tools/roofline/plot_roofline.py"}
        if fmt == "svg":
            meta = {"Title": title}
        fig.savefig(path, dpi=300, format=fmt, metadata=meta)
        written.append(path)
    plt.close(fig)
    summary["files"] = written
    with open(f"{args.output}_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    for key, p in summary["points"].items():
        print(f"{p['label']:11s} AI={p['arithmetic_intensity']:8.3g} "
              f"{p['flops_per_s'] / 1e12:8.3f} TFLOP/s  {p['efficiency_pct']:5.1f}% of roof  "
              f"{p['bottleneck']}")
    print("wrote " + ", ".join(written + [f"{args.output}_summary.json"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
