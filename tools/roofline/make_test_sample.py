#!/usr/bin/env python3
"""Cut a real ncu roofline CSV down to a test sample: the lines before the header, the header,
the units row and the first --rows kernel rows, unchanged; plus <out>.roofline.json with FLOPs,
bytes and time summed here with the csv module alone (independently of ncu_parse.py), which
tests/tools/test_roofline.py compares the parser with.

  python3 tools/roofline/make_test_sample.py ncu_reports/.../v1_decode.csv \\
      tests/tools/data/ncu_sample_h200_roofline.csv --rows 40 --note "H200, ncu 2025.3, ..."
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys

SASS = {"fp32": ("fadd", "fmul", "ffma"), "fp16": ("hadd", "hmul", "hfma"),
        "fp64": ("dadd", "dmul", "dfma")}
TENSOR_OP_PREFIX = "sm__ops_path_tensor_op_"


def _num(cell: str) -> float:
    c = (cell or "").strip().replace(",", "")
    return 0.0 if c in ("", "n/a", "N/A", "-") else float(c)


def independent_sums(text: str) -> dict:
    """Sums over kernel rows; expects base units (byte, ns) as --print-units base writes."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith('"ID"') or ln.startswith("ID,"))
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    units = rows[0] if rows and not rows[0]["ID"].strip() else {}
    body = rows[1:] if units else rows
    for m, want in (("dram__bytes_read.sum", ("byte",)),
                    ("gpu__time_duration.sum", ("ns", "nsecond"))):
        u = units.get(m, "")
        if u and u not in want:
            raise SystemExit(f"{m} is in {u!r}: export with --print-units base")

    def s(m):
        return sum(_num(r.get(m, "")) for r in body)
    out = {}
    for prec, (add, mul, fma) in SASS.items():
        p = "sm__sass_thread_inst_executed_op_{}_pred_on.sum"
        out[f"flops_{prec}"] = s(p.format(add)) + s(p.format(mul)) + 2 * s(p.format(fma))
    tensor_cols = [m for m in (body[0] if body else {}) if m.startswith(TENSOR_OP_PREFIX)
                   and m.endswith(".sum")]
    out["flops_tensor"] = sum(s(m) for m in tensor_cols)
    out["flops"] = out["flops_tensor"] + sum(out[f"flops_{p}"] for p in SASS)
    out["dram_bytes_read"] = s("dram__bytes_read.sum")
    out["dram_bytes_write"] = s("dram__bytes_write.sum")
    out["bytes"] = out["dram_bytes_read"] + out["dram_bytes_write"]
    out["time_s"] = s("gpu__time_duration.sum") * 1e-9
    out["kernels"] = len(body)
    out["tensor_family"] = "op" if tensor_cols else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output", help="sample CSV to write (tests/tools/data/ncu_sample_*.csv)")
    ap.add_argument("--rows", type=int, default=40, help="kernel rows to keep")
    ap.add_argument("--note", default="", help="what the sample is (device, date, command)")
    args = ap.parse_args(argv)
    with open(args.input, newline="", errors="replace") as f:
        lines = f.read().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith('"ID"') or ln.startswith("ID,"))
    # rows may not span lines in ncu's CSV (kernel names carry no newline): cut by line
    keep = lines[:start + 2 + args.rows]
    text = "\n".join(keep) + "\n"
    with open(args.output, "w", newline="") as f:
        f.write(text)
    exp = {"_comment": args.note or f"first {args.rows} kernel rows of {args.input}",
           **independent_sums(text)}
    side = args.output[:-4] + ".roofline.json"
    with open(side, "w") as f:
        json.dump(exp, f, indent=1)
        f.write("\n")
    print(f"wrote {args.output} ({exp['kernels']} kernels) and {side}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
