#!/usr/bin/env python3
"""One table from several microbench JSONs (run_benchmark_sweep.sh): per point and mode, the
latencies, tokens/s and acceptance, and stage's latency relative to off at the same point.

  python3 -m tools.profiling.sweep_summary sweeps/latency_b*_k*_t*.json
"""
from __future__ import annotations

import argparse
import json
import sys

from tools import common


def rows_from(paths: list[str]) -> list[list]:
    rows = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        a = doc["config"]["args"]
        per = doc["summary"]["per_mode"]
        off = {e["scv_mode"]: e.get("latency_avg_s") for e in per if e.get("nwor_mode") == "off"}
        for e in per:
            if "error" in e:
                rows.append([a["requests"], a["draft_tokens"], a["temperature"], e["nwor_mode"],
                             e["scv_mode"], "ERROR", None, None, None, None, None])
                continue
            base = off.get(e["scv_mode"])
            rel = (100.0 * (e["latency_avg_s"] / base - 1)
                   if base and e["nwor_mode"] != "off" else None)
            rows.append([a["requests"], a["draft_tokens"], a["temperature"], e["nwor_mode"],
                         e["scv_mode"], e["latency_avg_s"], e["latency_p50_s"],
                         e["latency_p99_s"], e["output_tokens_per_s"],
                         e["spec_acceptance_ratio"], rel])
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[4]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsons", nargs="+")
    args = p.parse_args(argv)
    print(common.format_table(["batch", "k", "T", "nwor", "scv", "lat_avg_s", "p50_s", "p99_s",
                               "tok/s", "acc", "vs_off_%"], rows_from(args.jsons)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
