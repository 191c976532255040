#!/usr/bin/env python3
"""One table per experiment folder (the seed-004 grids): per run, tokens/s, latency,
acceptance, draft tokens, stopped tokens and DRAM writes, and each variant's ratio to its twin
in the same folder: the run of the same workload with adaptive draft length off and
confidence threshold 0. Writes <folder>/summary.md (the tables, the adaptive controller's
decisions, links to the plots), summary.csv, summary.json and plots/*.png (latency vs k of the
fixed-k runs, adaptive vs its fixed twin, latency and ncu DRAM writes vs threshold; each
only when the folder has runs for it).

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
import io
import json
import os
import sys
from typing import Any, Callable, Optional

from tools import common

# What makes two runs the same workload (everything but the two features under test).
_WORKLOAD_ARGS = ("scenario", "prompts_file", "requests", "batches", "warmup", "max_tokens",
                  "temperature", "draft_tokens", "acceptance_rate", "seed", "max_model_len")
# (column, per_mode field): the compared quantities; each gets a <column>_vs_twin
_COMPARED = (("tokens_per_s", "output_tokens_per_s"), ("latency_avg_s", "latency_avg_s"),
             ("acceptance", "spec_acceptance_ratio"), ("draft_tokens", "spec_num_draft_tokens"),
             ("dram_write_bytes", None))
COLUMNS = (["file", "scenario", "requests", "max_tokens", "temperature", "k", "method",
            "adaptive", "threshold", "chained", "nwor", "scv", "tokens_per_s", "latency_avg_s",
            "acceptance", "draft_tokens", "stopped_tokens", "dram_write_bytes", "twin"]
           + [c + "_vs_twin" for c, _ in _COMPARED]
           + ["controlled_acceptance", "adaptive_spec_steps", "adaptive_plain_steps",
              "adaptive_probes", "adaptive_k_hist", "error"])


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
    ad = entry.get("adaptive_stats") or {}
    return {
        "file": name, "scenario": args.get("scenario"), "requests": args.get("requests"),
        "max_tokens": cfg.get("max_tokens", args.get("max_tokens")),
        "temperature": args.get("temperature"), "k": args.get("draft_tokens"),
        "method": cfg.get("spec_method"), "adaptive": int(adaptive), "threshold": threshold,
        # chained speculative steps (None: the run predates the field)
        "chained": entry.get("chained_steps"),
        "nwor": entry.get("nwor_mode"), "scv": entry.get("scv_mode"),
        "tokens_per_s": entry.get("output_tokens_per_s"),
        "latency_avg_s": entry.get("latency_avg_s"),
        "acceptance": entry.get("spec_acceptance_ratio"),
        "draft_tokens": entry.get("spec_num_draft_tokens"),
        # the engine's counter where the run has it, else the slots left unused
        "stopped_tokens": entry.get("spec_num_draft_tokens_stopped",
                                    entry.get("spec_draft_tokens_short_of_k")),
        "dram_write_bytes": ncu.get("dram__bytes_write.sum"),
        "twin": None, "error": entry.get("error"),
        # the rate drafts were accepted with instead of verified (dummy weights; None: verified)
        "controlled_acceptance": args.get("acceptance_rate"),
        # the adaptive controller's decisions over the measured batches (microbench
        # adaptive_stats; None when adaptive was off or the run predates the field)
        "adaptive_spec_steps": ad.get("steps_spec"),
        "adaptive_plain_steps": ad.get("steps_plain"),
        "adaptive_probes": ad.get("probes"),
        "adaptive_k_hist": (" ".join(f"{k}:{n}" for k, n in ad["k_hist"].items())
                            if ad.get("k_hist") is not None else None),
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


# --- markdown ---------------------------------------------------------------------------------
def _md_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def _md_table(heads: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    return out + ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows]


def _mb(x: Optional[float]) -> Optional[float]:
    return None if x is None else x / 1e6


def markdown(folder: str, rows: list[dict[str, Any]], plots: list[str]) -> str:
    """summary.md: every run, the adaptive controller's decisions, the plots."""
    lines = [f"# {os.path.basename(os.path.normpath(folder))}", "",
             f"{len({r['file'] for r in rows})} runs. x = ratio to the twin (same workload, "
             "adaptive 0, threshold 0.0): tok/s x > 1 and latency x < 1 mean faster."]
    if any(r["controlled_acceptance"] is not None for r in rows):
        lines += ["", "**CONTROLLED acceptance** (runs with a value in `ctrl acc`): drafts "
                  "accepted at random with that rate instead of verified, on dummy weights: the "
                  "engine's shapes and kernels, not a real model's acceptance."]
    lines += [""] + _md_table(
        ["run", "T", "k", "adaptive", "threshold", "chained", "ctrl acc", "tok/s", "latency s",
         "acceptance", "drafted", "stopped", "DRAM writes MB", "tok/s x", "latency x",
         "drafted x", "DRAM x", "twin"],
        [[r["file"], r["temperature"], r["k"], r["adaptive"], r["threshold"],
          r["chained"], r["controlled_acceptance"]]
         + ([f"ERROR: {r['error']}"] + [None] * 10 if r["error"] else
            [r["tokens_per_s"], r["latency_avg_s"], r["acceptance"], r["draft_tokens"],
             r["stopped_tokens"], _mb(r["dram_write_bytes"]), r["tokens_per_s_vs_twin"],
             r["latency_avg_s_vs_twin"], r["draft_tokens_vs_twin"],
             r["dram_write_bytes_vs_twin"], r["twin"]]) for r in rows])
    decided = [r for r in rows if r["adaptive_spec_steps"] is not None]
    if decided:
        lines += ["", "## Adaptive draft length: the controller's decisions", "",
                  "Over the measured batches: speculative steps (probes included), steps run "
                  "without drafts, probes, and how many steps ran at each batch k (k 0 = "
                  "plain)."] + [""] + _md_table(
            ["run", "spec steps", "plain steps", "probes", "k: steps"],
            [[r["file"], r["adaptive_spec_steps"], r["adaptive_plain_steps"],
              r["adaptive_probes"], r["adaptive_k_hist"]] for r in decided])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})"
                                         for p in plots]
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------
def _workload(r: dict) -> str:
    """A legend label: everything of the workload but k and the two features."""
    label = f"r{r['requests']} t{r['max_tokens']} T{r['temperature']}"
    if r["controlled_acceptance"] is not None:
        label += f" acc{r['controlled_acceptance']} (controlled)"
    return f"{r['scenario']} {label}" if r["scenario"] else label


def _lines(ax, rows: list[dict], x: str, y: str, scale: float = 1.0) -> int:
    """One line per workload through (x, y) of rows, sorted by x; returns the lines drawn."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r[x] is not None and r[y] is not None:
            groups.setdefault(_workload(r), []).append((float(r[x]), r[y] / scale))
    for label, pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    return len(groups)


def _save(fig, path: str) -> str:
    """Atomically, like every result: a killed summary never leaves half a PNG."""
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plots(folder: str, rows: list[dict[str, Any]]) -> list[str]:
    """The PNGs under folder/plots/ that the rows have data for; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if not r["error"]]
    fixed = [r for r in ok if not r["adaptive"] and r["threshold"] == 0.0]
    out_dir = os.path.join(folder, "plots")
    written: list[str] = []

    def figure(name: str, title: str, xlabel: str, ylabel: str,
               draw: Callable[[Any], int]) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        try:
            if draw(ax):
                ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
                os.makedirs(out_dir, exist_ok=True)
                written.append(_save(fig, os.path.join(out_dir, name)))
        finally:
            plt.close(fig)

    if len({r["k"] for r in fixed}) > 1:
        figure("latency_vs_k.png", "Fixed k: latency per batch", "k (draft tokens)",
               "latency per batch (s)", lambda ax: _lines(ax, fixed, "k", "latency_avg_s"))
    pairs = [r for r in ok if r["adaptive"] and r["latency_avg_s_vs_twin"] is not None]
    if pairs:
        def bars(ax) -> int:
            by_file = {r["file"]: r for r in ok}
            xs = range(len(pairs))
            ax.bar([i - 0.2 for i in xs], [by_file[r["twin"]]["latency_avg_s"] for r in pairs],
                   0.4, label="fixed k (adaptive 0)")
            ax.bar([i + 0.2 for i in xs], [r["latency_avg_s"] for r in pairs], 0.4,
                   label="adaptive (k = max)")
            ax.set_xticks(list(xs))
            ax.set_xticklabels([f"{_workload(r)} k{r['k']}" for r in pairs], rotation=30,
                               ha="right", fontsize=7)
            return len(pairs)
        figure("adaptive_vs_fixed.png", "Adaptive draft length vs its fixed-k twin", "",
               "latency per batch (s)", bars)
    thresh = [r for r in ok if not r["adaptive"]]
    if len({r["threshold"] for r in thresh}) > 1:
        figure("latency_vs_threshold.png", "Confidence early exit: latency", "threshold",
               "latency per batch (s)",
               lambda ax: _lines(ax, thresh, "threshold", "latency_avg_s"))
        figure("bytes_vs_threshold.png", "Confidence early exit: DRAM writes (ncu)", "threshold",
               "DRAM bytes written (MB, dram__bytes_write.sum)",
               lambda ax: _lines(ax, thresh, "threshold", "dram_write_bytes", 1e6))
    return written


# --- files ------------------------------------------------------------------------------------
def _write_text(path: str, text: str) -> str:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write(folder: str, rows: list[dict[str, Any]], files: int) -> tuple[str, str]:
    """summary.csv, summary.json, plots/*.png and summary.md, each written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    csv_path = _write_text(os.path.join(folder, "summary.csv"), buf.getvalue())
    _write_text(os.path.join(folder, "summary.md"), markdown(folder, rows, plots(folder, rows)))
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
            print(f"wrote {csv_path}, summary.md, plots/", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
