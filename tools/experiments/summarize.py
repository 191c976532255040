#!/usr/bin/env python3
"""One table per experiment folder (the seed-004 grids): per run, tokens/s, latency,
acceptance, draft tokens, stopped tokens and DRAM writes, and each variant's ratio to its twin
in the same folder: the run of the same workload with adaptive draft length off and
confidence threshold 0. Writes <folder>/summary.csv and <folder>/summary.json.

  python3 -m tools.experiments.summarize sweeps/adaptive_grid sweeps/early_exit_grid

Columns <x>_vs_twin are variant / twin: tokens_per_s_vs_twin > 1 and latency_avg_s_vs_twin
< 1 mean the variant is faster; draft_tokens_vs_twin < 1 means it drafted less. A run that is
its own twin (a baseline) has no ratios; a variant without a twin in the folder has none
either (the twin column says so).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from typing import Any, Optional

from tools import common

# What makes two runs the same workload (everything but the two features under test).
_WORKLOAD_ARGS = ("scenario", "prompts_file", "requests", "batches", "warmup", "max_tokens",
                  "temperature", "draft_tokens", "acceptance_rate", "seed", "max_model_len")
# (column, per_mode field): the compared quantities; each gets a <column>_vs_twin
_COMPARED = (("tokens_per_s", "output_tokens_per_s"), ("latency_avg_s", "latency_avg_s"),
             ("acceptance", "spec_acceptance_ratio"), ("draft_tokens", "spec_num_draft_tokens"),
             ("dram_write_bytes", None))
COLUMNS = (["file", "scenario", "requests", "max_tokens", "temperature", "k", "method",
            "adaptive", "threshold", "nwor", "scv", "tokens_per_s", "latency_avg_s",
            "acceptance", "draft_tokens", "stopped_tokens", "dram_write_bytes", "twin"]
           + [c + "_vs_twin" for c, _ in _COMPARED] + ["error"])


def load_runs(folder: str) -> list[tuple[str, dict]]:
    """(file name, document) of every microbench JSON directly in folder, sorted by name
    (ncu child JSONs live in *_ncu/ subfolders and are not read; summary.json is skipped)."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("summary"), dict) \
                and isinstance(doc["summary"].get("per_mode"), list) and "config" in doc:
            out.append((os.path.basename(path), doc))
    return out


def _features(cfg: dict, entry: dict) -> tuple[bool, float]:
    """(adaptive, threshold) of one mode: its own fields, else the config's, else the args."""
    args = cfg.get("args", {})
    a = entry.get("adaptive_draft_length", cfg.get("adaptive_draft_length",
                                                   args.get("adaptive_draft_length")))
    t = entry.get("confidence_threshold", cfg.get("confidence_threshold",
                                                  args.get("confidence_threshold")))
    return bool(a), float(t or 0.0)


def _row(name: str, doc: dict, entry: dict) -> dict[str, Any]:
    cfg = doc["config"]
    args = cfg.get("args", {})
    adaptive, threshold = _features(cfg, entry)
    ncu = entry.get("ncu_metrics") or {}
    return {
        "file": name, "scenario": args.get("scenario"), "requests": args.get("requests"),
        "max_tokens": cfg.get("max_tokens", args.get("max_tokens")),
        "temperature": args.get("temperature"), "k": args.get("draft_tokens"),
        "method": cfg.get("spec_method"), "adaptive": int(adaptive), "threshold": threshold,
        "nwor": entry.get("nwor_mode"), "scv": entry.get("scv_mode"),
        "tokens_per_s": entry.get("output_tokens_per_s"),
        "latency_avg_s": entry.get("latency_avg_s"),
        "acceptance": entry.get("spec_acceptance_ratio"),
        "draft_tokens": entry.get("spec_num_draft_tokens"),
        "stopped_tokens": entry.get("spec_draft_tokens_short_of_k"),
        "dram_write_bytes": ncu.get("dram__bytes_write.sum"),
        "twin": None, "error": entry.get("error"),
    }


def _key(doc: dict, entry: dict) -> tuple:
    cfg = doc["config"]
    args = cfg.get("args", {})
    return (tuple(args.get(a) for a in _WORKLOAD_ARGS) + (
        cfg.get("target_model"), cfg.get("draft_model"), cfg.get("spec_method"),
        entry.get("nwor_mode"), entry.get("scv_mode")))


def _ratio(x: Optional[float], base: Optional[float]) -> Optional[float]:
    if x is None or base is None or base == 0:
        return None
    return x / base


def summarize_runs(runs: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """One row per (file, mode), with ratios to the twin (adaptive off, threshold 0)."""
    rows, keys = [], []
    for name, doc in runs:
        for entry in doc["summary"]["per_mode"]:
            rows.append(_row(name, doc, entry))
            keys.append(_key(doc, entry))
    twins: dict[tuple, dict] = {}
    for row, key in zip(rows, keys):
        if not row["adaptive"] and row["threshold"] == 0.0 and not row["error"]:
            twins.setdefault(key, row)          # the first by file name if several
    for row, key in zip(rows, keys):
        for col, _ in _COMPARED:
            row[col + "_vs_twin"] = None
        base = twins.get(key)
        if base is row:
            row["twin"] = "(baseline)"
            continue
        if base is None:
            row["twin"] = "(none)"
            continue
        row["twin"] = base["file"]
        for col, _ in _COMPARED:
            row[col + "_vs_twin"] = _ratio(row[col], base[col])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["file", "tokens_per_s", "latency_avg_s", "acceptance", "draft_tokens",
            "stopped_tokens", "dram_write_bytes", "tokens_per_s_vs_twin",
            "latency_avg_s_vs_twin", "draft_tokens_vs_twin", "dram_write_bytes_vs_twin"]
    heads = ["run", "tok/s", "lat_s", "acc", "drafted", "stopped", "dram_w", "tok/s_x",
             "lat_x", "drafted_x", "dram_w_x"]
    return common.format_table(heads, [["ERROR: " + r["file"]] + [None] * (len(cols) - 1)
                                       if r["error"] else [r[c] for c in cols] for r in rows])


def write(folder: str, rows: list[dict[str, Any]], files: int) -> tuple[str, str]:
    csv_path = os.path.join(folder, "summary.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    json_path = common.write_json(os.path.join(folder, "summary.json"), {
        "meta": common.run_metadata(), "folder": folder, "files": files,
        "ratios": "variant / twin (same workload, adaptive 0, threshold 0.0)", "rows": rows})
    return csv_path, json_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("folders", nargs="+", help="experiment folders (e.g. sweeps/adaptive_grid)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    rc = 0
    for folder in args.folders:
        runs = load_runs(folder)
        if not runs:
            print(f"{folder}: no microbench JSONs", file=sys.stderr)
            rc = 1
            continue
        rows = summarize_runs(runs)
        print(f"\n{folder} ({len(runs)} runs; x = ratio to the adaptive-0 / threshold-0 twin)")
        print(table(rows))
        if not args.no_write:
            csv_path, _ = write(folder, rows, len(runs))
            print(f"wrote {csv_path}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
