#!/usr/bin/env python3
"""Compare two microbench JSONs run with --ncu (NWOR off = baseline, NWOR stage) and print the
bandwidth comparison: DRAM writes / reads, L2 write sectors, throughput, GPU time, with the
byte model's prediction beside each KV number.

  python3 -m tools.profiling.ncu_stats sweeps/ncu_analysis/small_baseline_t0.7.json \
      sweeps/ncu_analysis/small_nwor_t0.7.json > sweeps/ncu_analysis/small_t0.7_stats.txt

How to read it: docs/profiling.md ("Reading the NCU stats").
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from tools import common

MB = 1e6
SECTOR = 32   # bytes per L2 sector


def _entry(doc: dict, nwor_mode: Optional[str]) -> dict:
    per_mode = [e for e in doc["summary"]["per_mode"] if "error" not in e]
    if nwor_mode is not None:
        per_mode = [e for e in per_mode if e["nwor_mode"] == nwor_mode] or per_mode
    if not per_mode:
        raise SystemExit("no successful mode in the JSON")
    return per_mode[0]


def _model(e: dict) -> dict:
    """The byte model of the run ncu profiled (its own counters), else of the latency run."""
    run = e.get("ncu_metrics", {}).get("profiled_run") or {}
    return run.get("kv_bytes_written_model") or e["kv_bytes_written_model"]


def predicted_kernel_bytes(model: dict, nwor_mode: str) -> dict[str, float]:
    """Bytes each KV kernel writes according to the byte model (all layers, all ranks)."""
    bpt, t = model["bytes_per_token"], model["tokens"]
    if nwor_mode == "stage":
        return {"write_kv": (t["cache"] - t["committed"] + t["staging"]) * bpt,
                "commit_staged": t["committed"] * bpt}
    return {"write_kv": t["cache"] * bpt, "commit_staged": 0.0}


def _pct(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not a:
        return None
    return 100.0 * (b - a) / a


def _sub(a, b):
    return None if a is None or b is None else b - a


def compare(base: dict, nwor: dict, base_label: str = "baseline",
            nwor_label: str = "nwor") -> str:
    bm, nm = base.get("ncu_metrics", {}), nwor.get("ncu_metrics", {})
    lines = [f"NCU bandwidth comparison: {base_label} (nwor={base['nwor_mode']} "
             f"scv={base['scv_mode']}) vs {nwor_label} (nwor={nwor['nwor_mode']} "
             f"scv={nwor['scv_mode']})"]
    for lab, m in ((base_label, bm), (nwor_label, nm)):
        if "error" in m:
            lines.append(f"  {lab}: ncu error: {m['error']}")
    lines.append(f"  profiled: {bm.get('profiled', '?')}; steps range: "
                 f"{bm.get('nvtx_include', '?')}; kernels: {bm.get('kernel_regex', '?')}")

    # --- whole decode steps -------------------------------------------------------------------
    bs, ns = bm.get("steps"), nm.get("steps")
    bmod, nmod = _model(base), _model(nwor)
    if bs and ns:
        lines += ["", f"Whole decode steps (NVTX ranges, app-range replay): {bs['count']} ranges "
                      f"vs {ns['count']}",
                  f"  {base_label} totals cover: {bs.get('covers', 'all profiled step ranges')}",
                  f"  {nwor_label} totals cover: {ns.get('covers', 'all profiled step ranges')}"]
        rows = []
        for metric, scale, unit in (("dram__bytes_write.sum", MB, "MB"),
                                    ("dram__bytes_read.sum", MB, "MB"),
                                    ("lts__t_sectors_op_write.sum", 1e3, "K sectors"),
                                    ("dram__throughput.avg.pct_of_peak_sustained_elapsed", 1, "%"),
                                    ("gpu__time_duration.sum", 1e6, "ms"),
                                    ("sm__warps_launched.sum", 1e3, "K warps")):
            a, b = bs["totals"].get(metric), ns["totals"].get(metric)
            rows.append([f"{metric} ({unit})", None if a is None else a / scale,
                         None if b is None else b / scale,
                         None if _sub(a, b) is None else _sub(a, b) / scale, _pct(a, b)])
        lines.append(common.format_table(["metric", base_label, nwor_label, "delta", "delta%"],
                                         rows))
        a, b = bs["totals"].get("dram__bytes_write.sum"), ns["totals"].get(
            "dram__bytes_write.sum")
        pred_cache = (nmod["cache_bytes"] - bmod["cache_bytes"]) / MB
        pred_total = (nmod["total_bytes"] - bmod["total_bytes"]) / MB
        lines += ["", "DRAM write delta vs the byte model:",
                  f"  measured                                   "
                  f"{'-' if _sub(a, b) is None else f'{_sub(a, b) / MB:+.3f} MB'}",
                  f"  model, staging stays in L2 (cache only)    {pred_cache:+.3f} MB",
                  f"  model, staging also reaches DRAM           {pred_total:+.3f} MB",
                  f"  baseline KV writes (model) / measured DRAM writes: "
                  f"{bmod['cache_bytes'] / MB:.3f} MB / "
                  f"{'-' if a is None else f'{a / MB:.3f} MB'} (DRAM writes beyond the KV: "
                  "activations, logits, sampler buffers; weights are only read)"]
    else:
        lines += ["", "Whole decode steps: not measured (steps pass missing or failed)"]

    # --- KV-write kernels ---------------------------------------------------------------------
    bk, nk = bm.get("kernels"), nm.get("kernels")
    if bk and nk:
        pb = predicted_kernel_bytes(bmod, base["nwor_mode"])
        pn = predicted_kernel_bytes(nmod, nwor["nwor_mode"])
        lines += ["", "KV-write kernels (kernel replay): L2 write sectors x 32 B, MB; "
                      "model beside each"]
        rows, sums = [], [0.0, 0.0, 0.0, 0.0]
        for label in ("write_kv", "commit_staged"):
            a = bk["kv_write_kernels"][label]["l2_write_bytes"]
            b = nk["kv_write_kernels"][label]["l2_write_bytes"]
            vals = [a, pb[label], b, pn[label]]
            for i, v in enumerate(vals):
                sums[i] += v or 0.0
            rows.append([label] + [None if v is None else v / MB for v in vals])
        rows.append(["sum"] + [v / MB for v in sums])
        lines.append(common.format_table(
            ["kernel", f"{base_label}", "model", f"{nwor_label}", "model"], rows))
        lines.append(f"  delta measured {(sums[2] - sums[0]) / MB:+.3f} MB, model "
                     f"{(sums[3] - sums[1]) / MB:+.3f} MB (sector rounding and partial sectors "
                     "make measured >= model)")
        rows = []
        for name in sorted(set(bk["by_name"]) | set(nk["by_name"])):
            a, b = bk["by_name"].get(name, {}), nk["by_name"].get(name, {})
            rows.append([name, a.get("count"), b.get("count"),
                         a.get("lts__t_sectors_op_write.sum"), b.get("lts__t_sectors_op_write.sum"),
                         a.get("dram__bytes_write.sum"), b.get("dram__bytes_write.sum")])
        lines += ["", "Per kernel (per-kernel DRAM writes miss dirty lines still in L2: the trap)",
                  common.format_table(["kernel", "n_base", "n_nwor", "l2_w_sect_base",
                                       "l2_w_sect_nwor", "dram_w_B_base", "dram_w_B_nwor"],
                                      rows)]
    else:
        lines += ["", "KV-write kernels: not measured (kernels pass missing or failed)"]

    # --- byte model ----------------------------------------------------------------------------
    t = nmod["tokens"]
    lines += ["", f"Byte model ({nmod['bytes_per_token']} B/token; drafts {t['drafts']}, "
                  f"accepted {t['accepted']}, rejected {t['rejected']}):",
              f"  {base_label}: cache {bmod['cache_bytes'] / MB:.3f} MB",
              f"  {nwor_label}: cache {nmod['cache_bytes'] / MB:.3f} MB + staging "
              f"{nmod['staging_bytes'] / MB:.3f} MB = {nmod['total_bytes'] / MB:.3f} MB "
              f"(floor {nmod['floor_bytes'] / MB:.3f} MB; rejected drafts kept out of the cache: "
              f"{nmod['cache_bytes_saved'] / MB:.3f} MB)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("baseline", help="microbench JSON with NWOR off (and ncu_metrics)")
    p.add_argument("nwor", help="microbench JSON with NWOR stage (and ncu_metrics)")
    p.add_argument("--output", default=None, help="also write the text here")
    args = p.parse_args(argv)
    with open(args.baseline) as f:
        bdoc = json.load(f)
    with open(args.nwor) as f:
        ndoc = json.load(f)
    text = compare(_entry(bdoc, "off"), _entry(ndoc, "stage"))
    meta = common.run_metadata(None if argv is None else [__file__] + list(argv))
    cfg = ndoc.get("config", {})
    header = (f"# {meta['date']} git {meta['git']['sha']} | model {cfg.get('target_model')} "
              f"{cfg.get('spec_method')} | device {cfg.get('device', {}).get('name')} | "
              f"acceptance {cfg.get('acceptance')}\n# baseline: {args.baseline}\n"
              f"# nwor:     {args.nwor}\n# command:  {meta['command']}\n")
    print(header + text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
