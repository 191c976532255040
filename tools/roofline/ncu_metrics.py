#!/usr/bin/env python3
"""The Nsight Compute metrics of the roofline, and which of them this GPU's ncu offers.

FLOPs (what ncu's own roofline sections count, docs/roofline.md says why):
  CUDA cores  SASS thread-instruction counters, predicated-on lanes only:
                fp32 = fadd + fmul + 2 ffma, fp64 = dadd + dmul + 2 dfma,
                fp16 = hadd + hmul + 2 hfma (one per thread instruction, as ncu counts them)
  tensor      the tensor path's operation counters sm__ops_path_tensor_*, which count math
              operations (2 per multiply-add) whatever the instruction shape. On Hopper the
              matrix work of cuBLAS and Triton runs as warpgroup MMA (HGMMA, 64 x N x 16 with
              N from 8 to 256), so an instruction count (sm__inst_executed_pipe_tensor...) has
              no fixed FLOPs per instruction; the operation counters do not have that problem.
              Two families exist: per instruction kind (op_hmma / op_hgmma, disjoint) and
              per source type (src_*, which may sum over kinds). FLOPs use the per-kind family
              when ncu has it, else the per-type one, never both (no double counting).
Bytes: dram__bytes_read.sum + dram__bytes_write.sum. Time: gpu__time_duration.sum.

  python3 tools/roofline/ncu_metrics.py --available query.txt   # comma list for --metrics
where query.txt is `ncu --query-metrics` output (absent: the Hopper defaults below).
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Iterable, Optional

TIME = "gpu__time_duration.sum"
DRAM_READ = "dram__bytes_read.sum"
DRAM_WRITE = "dram__bytes_write.sum"

# (metric, FLOPs per count, precision)
SASS_FLOPS = tuple(
    (f"sm__sass_thread_inst_executed_op_{op}_pred_on.sum", w, prec)
    for prec, ops in (("fp32", ("fadd", "fmul", "ffma")), ("fp16", ("hadd", "hmul", "hfma")),
                      ("fp64", ("dadd", "dmul", "dfma")))
    for op, w in zip(ops, (1, 1, 2)))

# Tensor-path operation counters, dense (sparsity_off) only: the engine runs no sparse MMA.
TENSOR_OP_FAMILY = (      # per instruction kind; disjoint
    "sm__ops_path_tensor_op_hgmma_src_fp16_sparsity_off.sum",
    "sm__ops_path_tensor_op_hgmma_src_bf16_dst_fp32_sparsity_off.sum",
    "sm__ops_path_tensor_op_hgmma_src_tf32_dst_fp32_sparsity_off.sum",
    "sm__ops_path_tensor_op_hmma_src_fp16_dst_fp16_sparsity_off.sum",
    "sm__ops_path_tensor_op_hmma_src_fp16_dst_fp32_sparsity_off.sum",
    "sm__ops_path_tensor_op_hmma_src_bf16_dst_fp32_sparsity_off.sum",
    "sm__ops_path_tensor_op_hmma_src_tf32_dst_fp32_sparsity_off.sum",
)
TENSOR_SRC_FAMILY = (     # per source type (Ampere-style names); a fallback
    "sm__ops_path_tensor_src_fp16.sum",
    "sm__ops_path_tensor_src_fp16_dst_fp16.sum",
    "sm__ops_path_tensor_src_fp16_dst_fp32.sum",
    "sm__ops_path_tensor_src_bf16_dst_fp32.sum",
    "sm__ops_path_tensor_src_tf32_dst_fp32.sum",
)
# Recorded for context only (instruction counts; no FLOPs derived from them).
CONTEXT = ("sm__inst_executed_pipe_tensor.sum", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
           "dram__throughput.avg.pct_of_peak_sustained_elapsed")

BASE = (TIME, DRAM_READ, DRAM_WRITE) + tuple(m for m, _, _ in SASS_FLOPS)


def base_name(metric: str) -> str:
    """'sm__ops_path_tensor_src_fp16.sum' -> 'sm__ops_path_tensor_src_fp16' (query lists
    counters without their roll-up)."""
    return re.sub(r"\.(sum|avg|max|min)(\..*)?$", "", metric)


def parse_query(text: str) -> set[str]:
    """Metric base names from `ncu --query-metrics` output (first word of each row)."""
    names = set()
    for line in text.splitlines():
        w = line.strip().split()
        if w and "__" in w[0] and re.match(r"^[a-z0-9_]+__[a-z0-9_]+$", w[0]):
            names.add(w[0])
    return names


def _src_family_subset(avail: set[str]) -> list[str]:
    """The per-type counters without overlap: src_fp16 covers src_fp16_dst_* when present."""
    have = [m for m in TENSOR_SRC_FAMILY if base_name(m) in avail]
    if "sm__ops_path_tensor_src_fp16.sum" in have:
        have = [m for m in have if not m.startswith("sm__ops_path_tensor_src_fp16_dst")]
    return have


def select(available: Optional[Iterable[str]]) -> dict:
    """{'metrics': [...], 'tensor_family': 'op'|'src'|None, 'tensor': [...]}. available: the
    base names ncu offers; None = unknown (Hopper per-kind defaults, as seen in ncu 2025.x)."""
    if available is None:
        tensor, fam = list(TENSOR_OP_FAMILY), "op"
        ctx: list[str] = []
        base = list(BASE)
    else:
        avail = set(available)
        tensor = [m for m in TENSOR_OP_FAMILY if base_name(m) in avail]
        fam = "op" if tensor else None
        if not tensor:
            tensor = _src_family_subset(avail)
            fam = "src" if tensor else None
        if not tensor:      # the query lists neither (a partial list?): try the defaults;
            tensor, fam = list(TENSOR_OP_FAMILY), "op"   # run_ncu.sh drops what ncu rejects
        base = list(BASE)       # documented on every architecture: never filtered
        ctx = [m for m in CONTEXT if base_name(m) in avail]
        if fam == "op":         # the per-type sums too, as a cross-check of the per-kind ones
            ctx += _src_family_subset(avail)
    return {"metrics": base + tensor + ctx, "tensor_family": fam, "tensor": tensor}


def flops_from_totals(totals: dict) -> dict:
    """FLOPs from summed metric values {metric: value or None}. Tensor: the per-kind family if
    any of its counters was collected, else the per-type family."""
    by_prec: dict[str, float] = {"fp32": 0.0, "fp16": 0.0, "fp64": 0.0}
    sass_seen = []
    for m, w, prec in SASS_FLOPS:
        v = totals.get(m)
        if v is not None:
            by_prec[prec] += w * v
            sass_seen.append(m)
    op = [m for m in TENSOR_OP_FAMILY if totals.get(m) is not None]
    src = [m for m in _src_family_subset({base_name(m) for m in totals
                                          if totals.get(m) is not None})]
    used, fam = (op, "op") if op else (src, "src") if src else ([], None)
    tensor = float(sum(totals[m] for m in used))
    out = {"flops": tensor + sum(by_prec.values()), "flops_tensor": tensor,
           **{f"flops_{p}": v for p, v in by_prec.items()},
           "tensor_family": fam, "tensor_metrics_used": used, "sass_metrics_used": sass_seen}
    if op and src:          # both collected: the other family's sum, as a cross-check
        out["flops_tensor_src_family"] = float(sum(totals[m] for m in src))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--available", default=None,
                    help="`ncu --query-metrics` output; absent or empty: Hopper defaults")
    ap.add_argument("--no-tensor", action="store_true",
                    help="leave the tensor counters out (a fallback if ncu rejects them)")
    args = ap.parse_args(argv)
    avail = None
    if args.available:
        try:
            with open(args.available, errors="replace") as f:
                avail = parse_query(f.read()) or None
        except OSError:
            avail = None
    sel = select(avail)
    metrics = [m for m in sel["metrics"] if not (args.no_tensor and m in sel["tensor"])]
    print(",".join(metrics))
    print(f"tensor family: {sel['tensor_family']} ({'query' if avail else 'defaults'})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
