#!/usr/bin/env python3
"""Compare two microbench JSONs run with --ncu (NWOR off = baseline, NWOR stage) and print the
bandwidth comparison: DRAM writes / reads, L2 write sectors, throughput, GPU time, with the
byte model's prediction beside each KV number.

  python3 -m tools.profiling.ncu_stats sweeps/ncu_analysis/small_baseline_t0.7.json \
      sweeps/ncu_analysis/small_nwor_t0.7.json > sweeps/ncu_analysis/small_t0.7_stats.txt

--from-csv re-derives the comparison from the CSVs a run left beside its JSONs (after a parser
fix, or when one pass's error cost the JSON the other pass). Each part (whole steps, KV-write
kernels) is reported from the passes that succeeded; a missing one is named with its reason.

How to read it: docs/profiling.md ("Reading the NCU stats").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from tools import common
from tools.profiling import ncu

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


def _missing(m: dict, part: str) -> str:
    """Why a mode's `part` pass ('steps' / 'kernels') has no result, in words (an error is
    quoted in full in the header lines)."""
    if (m.get("pass_errors") or {}).get(part) or m.get("error"):
        return f"the {part} pass failed (error above)"
    if m.get("passes") and part not in m["passes"]:
        return f"the {part} pass was not run"
    return f"no {part} pass result (no ncu_metrics.{part})"


_STEP_METRICS = (("dram__bytes_write.sum", MB, "MB"),
                 ("dram__bytes_read.sum", MB, "MB"),
                 ("lts__t_sectors_op_write.sum", 1e3, "K sectors"),
                 ("dram__throughput.avg.pct_of_peak_sustained_elapsed", 1, "%"),
                 ("gpu__time_duration.sum", 1e6, "ms"),
                 ("sm__warps_launched.sum", 1e3, "K warps"))


def _steps_section(base: dict, nwor: dict, base_label: str, nwor_label: str) -> list[str]:
    bm, nm = base.get("ncu_metrics", {}), nwor.get("ncu_metrics", {})
    bs, ns = bm.get("steps"), nm.get("steps")
    bmod, nmod = _model(base), _model(nwor)
    if not bs and not ns:
        return ["", "Whole decode steps: not measured",
                f"  {base_label}: {_missing(bm, 'steps')}",
                f"  {nwor_label}: {_missing(nm, 'steps')}"]
    lines = ["", f"Whole decode steps (NVTX ranges, app-range replay): "
                 f"{bs['count'] if bs else '-'} ranges vs {ns['count'] if ns else '-'}"]
    for lab, m, st in ((base_label, bm, bs), (nwor_label, nm, ns)):
        lines.append(f"  {lab} totals cover: {st.get('covers', 'all profiled step ranges')}"
                     if st else f"  {lab}: NOT MEASURED, {_missing(m, 'steps')}")
    rows = []
    for metric, scale, unit in _STEP_METRICS:
        a = bs["totals"].get(metric) if bs else None
        b = ns["totals"].get(metric) if ns else None
        rows.append([f"{metric} ({unit})", None if a is None else a / scale,
                     None if b is None else b / scale,
                     None if _sub(a, b) is None else _sub(a, b) / scale, _pct(a, b)])
    lines.append(common.format_table(["metric", base_label, nwor_label, "delta", "delta%"], rows))
    a = bs["totals"].get("dram__bytes_write.sum") if bs else None
    b = ns["totals"].get("dram__bytes_write.sum") if ns else None
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
    return lines


def _kv_measured(k: Optional[dict], label: str) -> Optional[float]:
    """A KV kernel's L2 write bytes; None when the pass is missing or matched no such kernel
    (commit_staged with NWOR off legitimately has none: 0)."""
    if not k:
        return None
    e = k["kv_write_kernels"][label]
    if not e["count"]:
        return None if label == "write_kv" else 0.0
    return e["l2_write_bytes"]


def _kernels_section(base: dict, nwor: dict, base_label: str, nwor_label: str) -> list[str]:
    bm, nm = base.get("ncu_metrics", {}), nwor.get("ncu_metrics", {})
    bk, nk = bm.get("kernels"), nm.get("kernels")
    if not bk and not nk:
        return ["", "KV-write kernels: not measured",
                f"  {base_label}: {_missing(bm, 'kernels')}",
                f"  {nwor_label}: {_missing(nm, 'kernels')}"]
    pb = predicted_kernel_bytes(_model(base), base["nwor_mode"])
    pn = predicted_kernel_bytes(_model(nwor), nwor["nwor_mode"])
    lines = ["", "KV-write kernels (kernel replay): L2 write sectors x 32 B, MB; "
                 "model beside each"]
    rows, sums = [], [0.0, 0.0, 0.0, 0.0]
    for label in ("write_kv", "commit_staged"):
        vals = [_kv_measured(bk, label), pb[label], _kv_measured(nk, label), pn[label]]
        sums = [None if s is None or v is None else s + v for s, v in zip(sums, vals)]
        rows.append([label] + [None if v is None else v / MB for v in vals])
    rows.append(["sum"] + [None if v is None else v / MB for v in sums])
    lines.append(common.format_table(
        ["kernel", f"{base_label}", "model", f"{nwor_label}", "model"], rows))
    if sums[0] is not None and sums[2] is not None:
        lines.append(f"  delta measured {(sums[2] - sums[0]) / MB:+.3f} MB, model "
                     f"{(sums[3] - sums[1]) / MB:+.3f} MB (sector rounding and partial sectors "
                     "make measured >= model)")
    fused = False
    for lab, m, k in ((base_label, bm, bk), (nwor_label, nm, nk)):
        if not k:
            lines.append(f"  {lab}: NOT MEASURED, {_missing(m, 'kernels')}")
            continue
        wk = k["kv_write_kernels"]["write_kv"]
        if not wk["count"]:
            lines.append(f"  {lab}: write_kv NOT MEASURED: the kernels pass matched no KV-write "
                         f"kernel (regex {m.get('kernel_regex', '?')!r}; profiled: "
                         f"{', '.join(sorted(k['by_name'])) or 'nothing'})")
        fused |= any(n.startswith("_rope_kv_write") for n in wk.get("kernels", []))
    if fused:
        lines.append("  write_kv is the fused rotary + KV write: its L2 writes also hold q and k "
                     "rotated in place ((q heads + kv heads) x head_dim per token and layer), "
                     "which the byte model (cache + staging) does not count")
    rows = []
    for name in sorted(set((bk or {}).get("by_name", {})) | set((nk or {}).get("by_name", {}))):
        a, b = (bk or {}).get("by_name", {}).get(name, {}), (nk or {}).get(
            "by_name", {}).get(name, {})
        rows.append([name, a.get("count"), b.get("count"),
                     a.get("lts__t_sectors_op_write.sum"), b.get("lts__t_sectors_op_write.sum"),
                     a.get("dram__bytes_write.sum"), b.get("dram__bytes_write.sum")])
    lines += ["", "Per kernel (per-kernel DRAM writes miss dirty lines still in L2: the trap)",
              common.format_table(["kernel", "n_base", "n_nwor", "l2_w_sect_base",
                                   "l2_w_sect_nwor", "dram_w_B_base", "dram_w_B_nwor"], rows)]
    return lines


def compare(base: dict, nwor: dict, base_label: str = "baseline",
            nwor_label: str = "nwor") -> str:
    """The comparison text. Each part (whole steps, KV kernels) is reported from whatever
    passes succeeded; a missing side or pass is named with its reason."""
    bm, nm = base.get("ncu_metrics", {}), nwor.get("ncu_metrics", {})
    lines = [f"NCU bandwidth comparison: {base_label} (nwor={base['nwor_mode']} "
             f"scv={base['scv_mode']}) vs {nwor_label} (nwor={nwor['nwor_mode']} "
             f"scv={nwor['scv_mode']})"]
    for lab, m in ((base_label, bm), (nwor_label, nm)):
        if "error" in m:
            lines.append(f"  {lab}: ncu error: {m['error']}")
        for ps, err in (m.get("pass_errors") or {}).items():
            if "error" not in m:
                lines.append(f"  {lab}: {ps} pass failed: {err}")
        if m.get("rebuilt_from"):
            lines.append(f"  {lab}: ncu_metrics rebuilt from the CSVs in {m['rebuilt_from']}")
    for lab, m in ((base_label, bm), (nwor_label, nm)):
        lines.append(f"  {lab} profiled: {m.get('profiled', '?')}; steps range: "
                     f"{m.get('nvtx_include', '?')}; kernels: {m.get('kernel_regex', '?')}")
    lines += _steps_section(base, nwor, base_label, nwor_label)
    lines += _kernels_section(base, nwor, base_label, nwor_label)

    # --- byte model ----------------------------------------------------------------------------
    bmod, nmod = _model(base), _model(nwor)
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
    p.add_argument("--from-csv", action="store_true",
                   help="rebuild each mode's ncu_metrics from the CSVs the run left beside its "
                        "JSON (<json without .json>_ncu/<nwor>_<scv>_{steps,kernels}.csv) with "
                        "the current parser, instead of the JSON's: re-derives a past run, and "
                        "recovers a pass the JSON lost to the other pass's error")
    args = p.parse_args(argv)
    entries = []
    for path, mode in ((args.baseline, "off"), (args.nwor, "stage")):
        with open(path) as f:
            doc = json.load(f)
        e = _entry(doc, mode)
        if args.from_csv:
            e = dict(e, ncu_metrics=ncu.metrics_from_dir(
                os.path.splitext(path)[0] + "_ncu", f"{e['nwor_mode']}_{e['scv_mode']}",
                prior=e.get("ncu_metrics")))
        entries.append(e)
    ndoc = doc
    text = compare(*entries)
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
