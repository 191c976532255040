#!/usr/bin/env python3
"""Nsight Systems around the SCV mask computation, per SCV mode: a timeline (.nsys-rep) with the
`scv_compute_mask` NVTX range, and `nsys stats` (NVTX ranges, CUDA API, kernels) for the
comparison of modes. nsys is looked for on PATH, in the CUDA folders, in Nsight Systems' and
in Nsight Compute's folders (which carry an nsys under host/target-linux-x64); when nsys leaves
a .qdstrm without a report, a QdstrmImporter found next to it is tried on it.

Every attempt is recorded, command, exit code, log tail and files made, in
<out-dir>/nsys_attempt.json, so a failure says exactly what failed. Where no report can be
made, the torch.profiler trace of scv_benefit.py (Chrome JSON, Perfetto) is the documented
equivalent (docs/profiling.md).

  python3 tools/profiling/nsys_scv.py --out-dir /tmp/nsys --modes off,vectorized
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import io
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCV_SCRIPT = os.path.join(HERE, "scv_benefit.py")
RANGE = "scv_compute_mask"


def candidates(explicit, name: str, patterns: list[str]) -> list[str]:
    out = []
    for c in [explicit, shutil.which(name)] + [p for pat in patterns
                                               for p in sorted(glob.glob(pat), reverse=True)]:
        if c and os.path.isfile(c) and os.access(c, os.X_OK) and c not in out:
            out.append(c)
    return out


def find_nsys(explicit=None) -> list[str]:
    return candidates(explicit, "nsys", [
        "/usr/local/cuda/bin/nsys", "/usr/local/cuda*/bin/nsys",
        "/opt/nvidia/nsight-systems/*/bin/nsys", "/opt/nvidia/nsight-systems*/bin/nsys",
        "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
        "/opt/nvidia/nsight-compute/*/host/*/nsys"])


def find_importers(nsys: str | None) -> list[str]:
    pats = ["/opt/nvidia/nsight-systems/*/host-linux-x64/QdstrmImporter",
            "/opt/nvidia/nsight-compute/*/host/*/QdstrmImporter",
            "/usr/local/cuda*/nsight-systems*/host-linux-x64/QdstrmImporter"]
    if nsys:
        d = os.path.dirname(os.path.realpath(nsys))
        pats = [os.path.join(d, "QdstrmImporter"), os.path.join(d, "..", "*", "QdstrmImporter")
                ] + pats
    return candidates(None, "QdstrmImporter", pats)


def run(cmd: list[str], timeout: float, env=None) -> dict:
    rec: dict = {"command": " ".join(cmd)}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rec.update(rc=p.returncode, log_tail=(p.stdout + p.stderr)[-2500:])
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        rec.update(rc=None, error=f"timed out after {timeout} s",
                   log_tail=out.decode(errors="replace")[-2500:] if isinstance(out, bytes)
                   else str(out)[-2500:])
    except OSError as e:
        rec.update(rc=None, error=repr(e))
    return rec


def nvtx_row(stats_csv_text: str, name: str = RANGE) -> dict | None:
    """The row of `name` in an `nsys stats --report nvtx_sum --format csv` output."""
    lines = stats_csv_text.splitlines()
    start = next((i for i, ln in enumerate(lines) if "Range" in ln and "," in ln), None)
    if start is None:
        return None
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        rng = (row.get("Range") or "").strip().lstrip(":")
        if rng == name or rng.endswith(name):
            return {k: v for k, v in row.items() if k}
    return None


def profile_mode(nsys: str, importers: list[str], mode: str, args, out_dir: str) -> dict:
    base = os.path.join(out_dir, f"scv_{mode}")
    app = [sys.executable, SCV_SCRIPT, "--modes", mode, "--batch-sizes", args.batch_sizes,
           "--draft-tokens", args.draft_tokens, "--iters", "20", "--profile-iters", "0",
           "--output-dir", os.path.join(out_dir, f"app_{mode}"), "--no-progress"]
    entry: dict = {"mode": mode, "attempts": []}
    # On the H200 (2026-11-29) nsys outlived the app by > 40 s and left no report, with the
    # app's own torch.profiler failing on CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED: so
    # the app runs no torch.profiler here (--profile-iters 0), and nsys waits for the app
    # alone, not for helper processes it may leave behind (--wait primary).
    prof = run([nsys, "profile", "--trace", "cuda,nvtx,osrt", "--wait", "primary",
                "--force-overwrite", "true", "-o", base] + app, args.timeout)
    entry["attempts"].append({"step": "nsys profile", **prof})
    rep = base + ".nsys-rep"
    qd = sorted(glob.glob(base + "*.qdstrm")) + sorted(glob.glob(os.path.join(out_dir, "*.qdstrm")))
    entry["files"] = sorted(os.path.basename(f) for f in glob.glob(base + "*"))
    if not os.path.exists(rep) and qd:
        for imp in importers:
            for flag in ("--input-file", "-i"):
                r = run([imp, flag, qd[0]], args.timeout)
                entry["attempts"].append({"step": f"QdstrmImporter {flag}", **r})
                if os.path.exists(rep) or glob.glob(base + "*.nsys-rep"):
                    break
            if os.path.exists(rep):
                break
        entry["files"] = sorted(os.path.basename(f) for f in glob.glob(base + "*"))
    reps = [rep] if os.path.exists(rep) else sorted(glob.glob(base + "*.nsys-rep"))
    if not reps:
        entry["status"] = ("no report: nsys wrote a .qdstrm but no .nsys-rep" if qd else
                           "no report: nsys wrote neither .nsys-rep nor .qdstrm")
        if qd and not importers:
            entry["status"] += "; no QdstrmImporter found to convert it"
        return entry
    entry["report"] = reps[0]
    st = run([nsys, "stats", "--report", "nvtx_sum,cuda_api_sum,cuda_gpu_kern_sum",
              "--format", "csv", "--output", base, "--force-overwrite", "true", reps[0]],
             args.timeout)
    entry["attempts"].append({"step": "nsys stats", **st})
    nv = sorted(glob.glob(base + "*nvtx_sum*.csv"))
    if nv:
        with open(nv[0]) as f:
            entry["scv_compute_mask"] = nvtx_row(f.read())
    entry["status"] = ("ok" if entry.get("scv_compute_mask") else
                       f"report written; no {RANGE} row in the NVTX summary")
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out-dir", default=os.path.join("sweeps", "nsys_scv"))
    ap.add_argument("--modes", default="off,vectorized", help="SCV modes, one report each")
    ap.add_argument("--batch-sizes", default="64")
    ap.add_argument("--draft-tokens", default="4")
    ap.add_argument("--nsys", default=None, help="nsys binary (default: searched)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per command")
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    found = find_nsys(args.nsys)
    nsys = found[0] if found else None
    importers = find_importers(nsys)
    res: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds"),
                 "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                 "nsys_candidates": found, "nsys": nsys, "qdstrm_importers": importers,
                 "modes": {}}
    if nsys:
        res["nsys_version"] = run([nsys, "--version"], 60)
        for mode in [m for m in args.modes.split(",") if m]:
            res["modes"][mode] = profile_mode(nsys, importers, mode, args, args.out_dir)
        ok = [m for m, e in res["modes"].items() if e.get("status") == "ok"]
        res["status"] = ("ok" if ok and len(ok) == len(res["modes"]) else
                         "partial" if ok else "failed")
    else:
        res["status"] = ("failed: nsys not found (PATH, /usr/local/cuda*/bin, "
                         "/opt/nvidia/nsight-systems, /opt/nvidia/nsight-compute/*/host)")
    res["equivalent"] = ("torch.profiler Chrome trace of scv_benefit.py (scv_<mode>_trace.json, "
                         "open in Perfetto): the same scv_compute_mask ranges, launches and syncs")
    path = os.path.join(args.out_dir, "nsys_attempt.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(f"nsys: {res['status']}")
    for m, e in res["modes"].items():
        print(f"  {m}: {e.get('status')}; scv_compute_mask: {e.get('scv_compute_mask')}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
