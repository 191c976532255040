"""Summary of a serve_bench.sh run: one row per (speculation, concurrency) from the result
JSONs in the folder given, plus the spec/no-spec throughput ratio at each concurrency."""
from __future__ import annotations

import glob
import json
import os
import sys

KEYS = ("completed", "failed", "duration_s", "output_throughput", "request_throughput",
        "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "median_tpot_ms",
        "p99_tpot_ms")


def main(folder: str) -> None:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*_c*.json"))):
        with open(path) as f:
            r = json.load(f)
        row = {"spec": r.get("spec"), "max_concurrency": r.get("max_concurrency"),
               "date": r.get("date"), "device": r.get("device"), "command": r.get("command")}
        row.update({k: r.get(k) for k in KEYS})
        if "probe" in r:
            row["probe"] = {k: r["probe"].get(k) for k in ("num_probes", "median_itl_ms",
                                                            "p99_itl_ms", "p99_ttft_ms")}
        rows.append(row)
    by = {(r["spec"], r["max_concurrency"]): r for r in rows}
    ratios = {}
    for (spec, c), r in by.items():
        base = by.get(("spec_off", c))
        if spec != "spec_off" and base and base.get("output_throughput"):
            ratios[f"{spec}/spec_off c={c}"] = r["output_throughput"] / base["output_throughput"]
    print(json.dumps({"runs": rows, "throughput_ratios": ratios}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
