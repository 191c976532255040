"""Running a command under Nsight Compute and turning its report into `ncu_metrics`.

Two passes per mode (docs/profiling.md, "the trap with per-kernel DRAM writes"):
  steps    --replay-mode app-range --nvtx --nvtx-include 'step/': one result per NVTX range
           instance, the whole application re-run once per metric pass. DRAM bytes over whole
           steps, including write-backs of dirty L2 lines that a per-kernel count misses.
  kernels  kernel replay of the KV-write / commit / attention kernels only
           (--kernel-name regex:...): L2 write sectors (lts__t_sectors_op_write.sum) per
           kernel, i.e. the KV traffic itself whether or not it has reached DRAM yet.
Both use --profile-from-start off: the microbench calls cudaProfilerStart after its warmup
batches and cudaProfilerStop after the measured ones, so only measured batches are counted.
Reports are exported as .ncu-rep and read back with `ncu --import ... --csv --page raw`.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from typing import Optional, Sequence

from tools.profiling import ncu_parse

DEFAULT_NVTX_INCLUDE = "step/"
# The KV-cache writes by their Triton kernel names (a kernel counts when its name starts with one
# of the prefixes). write_kv: the fused rotary + KV write `_rope_kv_write_kernel`
# (v1/attention/rope_kv_write.py, the default) or the unfused `_write_kv_kernel`
# (v1/attention/kv_write.py, VLLM_DISABLE_KERNEL_FUSION=1); commit_staged: NWOR's
# `_commit_staged_kv_kernel` (v1/spec_decode/nwor_commit.py). tests/tools/test_ncu_parse.py
# checks these names against the kernels in vllm/.
KV_WRITE_KERNELS = {"write_kv": ("_rope_kv_write", "_write_kv"),
                    "commit_staged": ("_commit_staged",)}
KV_KERNEL_REGEX = "|".join(p for ps in KV_WRITE_KERNELS.values() for p in ps)
DEFAULT_KERNEL_REGEX = KV_KERNEL_REGEX + "|paged_attention"

_PERM_MARKERS = ("ERR_NVGPUCTRPERM", "does not have permission to access NVIDIA GPU Performance "
                 "Counters")


class NcuError(RuntimeError):
    pass


def find_ncu(explicit: Optional[str] = None) -> str:
    """Path of the ncu binary: --ncu-path, then PATH, then the usual CUDA / Nsight folders."""
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise NcuError(f"ncu not found at --ncu-path {explicit!r}")
    found = shutil.which("ncu")
    if found:
        return found
    cands = ["/usr/local/cuda/bin/ncu"] + sorted(glob.glob("/usr/local/cuda*/bin/ncu")) \
        + sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"), reverse=True)
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise NcuError("Nsight Compute (ncu) not found: it is not on PATH nor in /usr/local/cuda/bin "
                   "or /opt/nvidia/nsight-compute. Install Nsight Compute (it ships with the "
                   "CUDA toolkit) or pass --ncu-path /path/to/ncu.")


def ncu_version(ncu: str) -> str:
    try:
        out = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=60)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "unknown"
    except Exception as e:
        raise NcuError(f"{ncu} --version failed: {e}") from None


def check_output_for_errors(text: str) -> None:
    if any(m in text for m in _PERM_MARKERS):
        raise NcuError(
            "ncu lacks permission to read the GPU performance counters (ERR_NVGPUCTRPERM). "
            "Run as root (sudo -E env PATH=$PATH ...), or let non-admin users profile: load "
            "the nvidia module with NVreg_RestrictProfilingToAdminUsers=0 (see "
            "https://developer.nvidia.com/ERR_NVGPUCTRPERM). In a container, start it with "
            "--cap-add=SYS_ADMIN.")


def _common(ncu: str, report: str, metrics: Sequence[str], profile_from_start: bool) -> list[str]:
    cmd = [ncu, "--target-processes", "all", "--metrics", ",".join(metrics),
           "--export", report, "--force-overwrite"]
    if not profile_from_start:
        cmd += ["--profile-from-start", "off"]
    return cmd


def steps_cmd(ncu: str, report: str, app: Sequence[str], nvtx_include: str = DEFAULT_NVTX_INCLUDE,
              metrics: Sequence[str] = ncu_parse.METRICS, profile_from_start: bool = False,
              launch_count: Optional[int] = None) -> list[str]:
    # ncu 2025.3 refuses --profile-from-start off with range replay ("not supported during
    # range replay", seen on the H100): the NVTX filter alone selects the step ranges, so run
    # the microbench with --warmup 0 when whole-step totals must match the measured steps.
    cmd = _common(ncu, report, metrics, profile_from_start=True)
    cmd += ["--replay-mode", "app-range", "--nvtx", "--nvtx-include", nvtx_include]
    if launch_count:
        cmd += ["--launch-count", str(launch_count)]
    return cmd + list(app)


def kernels_cmd(ncu: str, report: str, app: Sequence[str],
                kernel_regex: str = DEFAULT_KERNEL_REGEX,
                metrics: Sequence[str] = ncu_parse.METRICS, profile_from_start: bool = False,
                launch_count: Optional[int] = None) -> list[str]:
    cmd = _common(ncu, report, metrics, profile_from_start)
    cmd += ["--replay-mode", "kernel", "--kernel-name", f"regex:{kernel_regex}"]
    if launch_count:
        cmd += ["--launch-count", str(launch_count)]
    return cmd + list(app)


def run(cmd: Sequence[str], log_path: str, timeout: Optional[float] = None,
        env: Optional[dict] = None) -> None:
    """Run ncu (the profiled app's output goes to the same log); raise NcuError on failure."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            p = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                               env=env)
        except FileNotFoundError:
            raise NcuError(f"cannot execute {cmd[0]!r}") from None
        except subprocess.TimeoutExpired:
            raise NcuError(f"ncu timed out after {timeout} s (log: {log_path})") from None
    with open(log_path, errors="replace") as f:
        text = f.read()
    check_output_for_errors(text)
    if p.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise NcuError(f"ncu exited with {p.returncode} (log: {log_path}):\n{tail}")


def unprofiled_reason(log_text: str) -> str:
    """What ncu's log says about an empty pass: with --kernel-name it lists the kernels the app
    launched ("No kernels were profiled. Available Kernels: 1. name ..."), the list to fix a
    regex against. "" when the log says nothing of the kind."""
    if "No kernels were profiled" not in log_text:
        return ""
    names = re.findall(r"^\s*\d+\.\s+(\S+)\s*$", log_text.split("No kernels were profiled", 1)[1],
                       re.M)
    return ("ncu: no kernels were profiled" +
            (f"; the app launched: {', '.join(names)}" if names else ""))


def export_csv(ncu: str, report: str, csv_path: str, log_path: Optional[str] = None) -> str:
    """`ncu --import report --csv --page raw` (base units) -> csv_path; returns the text."""
    rep = report if report.endswith(".ncu-rep") else report + ".ncu-rep"
    if not os.path.exists(rep):
        why = ""
        if log_path and os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                why = unprofiled_reason(f.read())
        raise NcuError(f"ncu wrote no report {rep!r}: nothing was profiled (no NVTX range / "
                       "kernel matched, or cudaProfilerStart was never called)"
                       + (f". {why}" if why else ""))
    base = [ncu, "--import", rep, "--csv", "--page", "raw"]
    for cmd in (base + ["--print-units", "base"], base):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode == 0 and ('"ID"' in p.stdout or p.stdout.startswith("ID,")):
            with open(csv_path, "w") as f:
                f.write(p.stdout)
            return p.stdout
    check_output_for_errors(p.stdout + p.stderr)
    raise NcuError(f"ncu --import failed ({p.returncode}): {(p.stderr or p.stdout)[-2000:]}")


def _result_order(r: ncu_parse.NcuResult):
    try:
        return (0, int(r.id))
    except ValueError:
        return (1, r.id)


def summarize_steps(table: ncu_parse.NcuTable, drop_first: int = 0,
                    expect: Optional[int] = None) -> dict:
    """Totals over the step ranges. Range replay cannot start at cudaProfilerStart (ncu 2025.3
    refuses --profile-from-start off there), so the child's warm-up steps are profiled too:
    drop_first drops that many ranges (results in profiling order, by ID) so the totals cover
    the measured batches only; expect is how many measured steps the engine counted. `covers`
    says in words what the totals are over, and whether the counts matched."""
    res = sorted(table.results, key=_result_order)
    n = len(res)
    if expect is not None and n == drop_first + expect:
        kept = res[drop_first:]
        covers = (f"measured batches only: {expect} step ranges (the first {drop_first} "
                  "profiled ranges, the warm-up batches' steps, dropped)")
    elif expect is not None:
        kept = res
        covers = (f"ALL {n} profiled step ranges, warm-up included: they did not match the "
                  f"engine's {drop_first} warm-up + {expect} measured steps, so none was dropped")
    else:
        kept = res
        covers = f"all {n} profiled step ranges (warm-up batches included, if any ran)"
    sub = ncu_parse.NcuTable(results=kept, units=table.units, source_units=table.source_units,
                             metric_names=table.metric_names)
    s = ncu_parse.summarize(sub, ncu_parse.METRICS)
    s.update(covers=covers, profiled_ranges=n, dropped_ranges=n - len(kept))
    return s


def summarize_kernels(table: ncu_parse.NcuTable) -> dict:
    """Per kernel (short names) plus the KV-write kernels' L2 write sectors and bytes; each
    label's `kernels` says which names it counted (count 0: none matched, nothing measured)."""
    for r in table.results:
        r.name = ncu_parse.short_kernel_name(r.name)
    s = ncu_parse.summarize(table, ncu_parse.METRICS)
    kv = {}
    for label, prefixes in KV_WRITE_KERNELS.items():
        rows = [r for r in table.results if r.name.startswith(prefixes)]
        agg = ncu_parse.aggregate(rows, ["lts__t_sectors_op_write.sum", "dram__bytes_write.sum"])
        sectors = agg["lts__t_sectors_op_write.sum"]
        kv[label] = {"count": len(rows), "kernels": sorted({r.name for r in rows}),
                     "l2_write_sectors": sectors,
                     "l2_write_bytes": None if sectors is None else sectors * 32,
                     "dram_write_bytes": agg["dram__bytes_write.sum"]}
    s["kv_write_kernels"] = kv
    return s


def metrics_from_csv(steps_csv: Optional[str], kernels_csv: Optional[str],
                     steps_drop_first: int = 0, steps_expect: Optional[int] = None) -> dict:
    """Build a mode's `ncu_metrics` from the two CSV texts (either may be None).

    Top-level metric keys (the seed's `ncu_metrics['dram__bytes_write.sum']`) are the totals
    over whole steps (NVTX ranges) when that pass ran, else over the profiled kernels;
    `totals_cover` says over what exactly (summarize_steps)."""
    out: dict = {}
    if steps_csv is not None:
        out["steps"] = summarize_steps(ncu_parse.parse_csv(steps_csv), steps_drop_first,
                                       steps_expect)
    if kernels_csv is not None:
        out["kernels"] = summarize_kernels(ncu_parse.parse_csv(kernels_csv))
    top = out.get("steps") or out.get("kernels")
    if top is not None:
        for m in ncu_parse.METRICS:
            out[m] = top["totals"].get(m)
        out["totals_from"] = "steps" if "steps" in out else "kernels"
        out["totals_cover"] = (out["steps"]["covers"] if "steps" in out else
                               "the profiled KV kernels of the measured batches")
    return out


def profiled_run(child: dict) -> dict:
    """The profiled child's own counters (its per-mode entry): the byte model of the run ncu saw."""
    return {k: child.get(k) for k in (
        "spec_num_drafts", "spec_num_draft_tokens", "spec_num_accepted_tokens",
        "nwor_tokens_staged", "nwor_tokens_committed", "kv_bytes_written_model", "output_tokens")}


def _flag(cmd_line: str, flag: str) -> Optional[str]:
    m = re.search(re.escape(flag) + r"\s+(\S+)", cmd_line)
    return m.group(1) if m else None


def metrics_from_dir(ncu_dir: str, tag: str, prior: Optional[dict] = None,
                     passes: Sequence[str] = ("steps", "kernels")) -> dict:
    """Rebuild a mode's `ncu_metrics` from what its run left in ncu_dir ({tag}_{pass}.csv and
    .log, {tag}_child.json; tag = '<nwor>_<scv>'): re-parse with the current code, or recover
    the passes that succeeded when the JSON recorded only the first error. prior: the JSON's
    ncu_metrics, for the errors it recorded. A pass without a CSV lands in pass_errors."""
    prior = prior or {}
    csvs: dict = {"steps": None, "kernels": None}
    errors: dict = {}
    info: dict = {}
    for ps in passes:
        csv_path, log_path = (os.path.join(ncu_dir, f"{tag}_{ps}.{ext}") for ext in ("csv", "log"))
        log = ""
        if os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                log = f.read()
            cmd = log.splitlines()[0][2:] if log.startswith("$ ") else ""
            if ps == "steps" and _flag(cmd, "--nvtx-include"):
                info["nvtx_include"] = _flag(cmd, "--nvtx-include")
            if ps == "kernels" and _flag(cmd, "--kernel-name"):
                info["kernel_regex"] = _flag(cmd, "--kernel-name").removeprefix("regex:")
        if os.path.exists(csv_path):
            with open(csv_path) as f:
                csvs[ps] = f.read()
            continue
        recorded = (prior.get("pass_errors") or {}).get(ps) or prior.get("error")
        errors[ps] = "; ".join(x for x in (
            f"no {tag}_{ps}.csv in {ncu_dir}", unprofiled_reason(log),
            recorded and f"the run recorded: {recorded}") if x)
    child, steps = None, {}
    child_json = os.path.join(ncu_dir, f"{tag}_child.json")
    if os.path.exists(child_json):
        with open(child_json) as f:
            child = json.load(f)["summary"]["per_mode"][0]
        steps = child.get("engine_steps") or {}
    out = metrics_from_csv(csvs["steps"], csvs["kernels"],
                           steps_drop_first=steps.get("warmup", 0),
                           steps_expect=steps.get("measured"))
    out.update(info, passes=list(passes), rebuilt_from=ncu_dir)
    if errors:
        out["pass_errors"] = errors
        if len(errors) == len(passes):            # nothing measured: the JSON's `error` key
            out["error"] = "; ".join(f"{ps} pass: {e}" for ps, e in errors.items())
    if child is not None:
        out["profiled_run"] = profiled_run(child)
    return out
