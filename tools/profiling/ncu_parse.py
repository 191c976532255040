"""Parse Nsight Compute CSV (``ncu --csv --page raw``) into per-kernel / per-range metric sums.

Layout (ncu 2025.x): a header row starting with "ID" ("ID","Process ID","Process Name",
"Host Name","Kernel Name",...,<metric columns>), then usually a units row (the ID cell empty,
one unit per metric column: "byte", "Mbyte", "sector", "%", "nsecond", ...), then one row per
profiled result: a kernel (kernel replay) or an NVTX range (range / app-range replay, where the
name column carries the range name). Lines before the header (==PROF== messages, the
application's own output when ncu's stdout was captured) are skipped. Numbers may carry
thousands separators ("1,234,567"); "n/a" and empty cells are missing values.

Values are converted to base units (bytes, nanoseconds, ...) so files printed with
``--print-units auto`` and ``--print-units base`` give the same numbers.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

# The metrics the tools request (docs/profiling.md says how to read each).
METRICS = (
    "dram__bytes_write.sum",
    "dram__bytes_read.sum",
    "lts__t_sectors_op_write.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "gpu__time_duration.sum",
    "sm__warps_launched.sum",
)
TIME_METRIC = "gpu__time_duration.sum"
NAME_COLUMNS = ("Kernel Name", "Range Name", "Name", "Function Name")

_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 1024.0, "Mi": 1024.0 ** 2, "Gi": 1024.0 ** 3, "Ti": 1024.0 ** 4}
_TIME = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9,
         "ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
_COUNTABLE = ("byte", "sector", "warp", "cycle", "inst", "request", "hz", "block", "thread")


class NcuParseError(ValueError):
    pass


def _scale_simple(unit: str) -> tuple[float, str]:
    """'Mbyte' -> (1e6, 'byte'); 'usecond' -> (1e3, 'nsecond'); unknown -> (1, unit)."""
    u = unit.strip()
    if u in _TIME:
        return _TIME[u], "nsecond"
    for base in _COUNTABLE:
        if u.lower().endswith(base) and len(u) > len(base) - 1:
            prefix = u[: len(u) - len(base)]
            if prefix in _BIN:
                return _BIN[prefix], base
            if prefix in _SI or prefix.upper() in _SI:
                return _SI.get(prefix, _SI.get(prefix.upper(), 1.0)), base
    return 1.0, u


def unit_scale(unit: str) -> tuple[float, str]:
    """Factor to base units and the base unit, for simple and rate units ('Gbyte/second')."""
    if not unit:
        return 1.0, ""
    if "/" in unit:
        num, den = unit.split("/", 1)
        fn, bn = _scale_simple(num)
        fd, bd = _scale_simple(den)
        if bd == "nsecond":                       # rates per second, not per nanosecond
            fd, bd = fd / 1e9, "second"
        return fn / fd, f"{bn}/{bd}"
    return _scale_simple(unit)


_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_number(cell: str) -> Optional[float]:
    """'1,234,567.5' -> 1234567.5; 'n/a', '', '-' -> None. Raises on other text."""
    s = (cell or "").strip().strip('"')
    if s in ("", "n/a", "N/A", "-", "nan"):
        return None
    s = s.replace(",", "").replace("\u202f", "").replace(" ", "")
    if not _NUM.match(s):
        raise NcuParseError(f"not a number: {cell!r}")
    return float(s)


@dataclass
class NcuResult:
    """One profiled kernel launch or NVTX range instance."""
    id: str
    name: str
    process: str
    metrics: dict[str, Optional[float]]       # base units
    raw: dict[str, str] = field(default_factory=dict)


@dataclass
class NcuTable:
    results: list[NcuResult]
    units: dict[str, str]                     # metric -> base unit after conversion
    source_units: dict[str, str]              # metric -> unit as printed
    metric_names: list[str]


def _is_metric_column(name: str) -> bool:
    # ncu metric names look like unit__counter.rollup (e.g. dram__bytes_write.sum)
    return "__" in name


def parse_csv(text: str) -> NcuTable:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines)
                  if ln.startswith('"ID"') or ln.startswith("ID,")), None)
    if start is None:
        raise NcuParseError("no ncu CSV header (a row starting with \"ID\") found")
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header = [h.strip() for h in rows[0]]
    name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    if name_col is None:
        raise NcuParseError(f"no name column ({', '.join(NAME_COLUMNS)}) in header")
    pid_col = header.index("Process ID") if "Process ID" in header else None
    pname_col = header.index("Process Name") if "Process Name" in header else None
    metric_cols = [i for i, h in enumerate(header) if _is_metric_column(h)]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    source_units: dict[str, str] = {}
    if body and not body[0][0].strip():          # the units row
        for i in metric_cols:
            source_units[header[i]] = body[0][i].strip() if i < len(body[0]) else ""
        body = body[1:]
    scales = {header[i]: unit_scale(source_units.get(header[i], "")) for i in metric_cols}
    results = []
    for r in body:
        if len(r) < len(header):
            r = r + [""] * (len(header) - len(r))
        if r[0].startswith("=="):                # a stray ==PROF== / ==WARNING== line
            continue
        metrics: dict[str, Optional[float]] = {}
        for i in metric_cols:
            name = header[i]
            try:
                v = parse_number(r[i])
            except NcuParseError as e:
                if name not in METRICS:
                    # real ncu output carries text-valued device attributes
                    # (device__attribute_display_name, ..._confidential_computing_mode: 'No-CC')
                    continue
                raise NcuParseError(f"result {r[0]!r}, column {name!r}: {e}") from None
            metrics[name] = None if v is None else v * scales[name][0]
        process = r[pname_col].strip() if pname_col is not None else ""
        if pid_col is not None and r[pid_col].strip():
            process = f"{process}[{r[pid_col].strip()}]"
        results.append(NcuResult(id=r[0].strip(), name=r[name_col].strip(), process=process,
                                 metrics=metrics,
                                 raw={h: c for h, c in zip(header, r)}))
    return NcuTable(results=results, units={m: s[1] for m, s in scales.items()},
                    source_units=source_units, metric_names=[header[i] for i in metric_cols])


def parse_file(path: str) -> NcuTable:
    with open(path, newline="") as f:
        return parse_csv(f.read())


def is_average_metric(name: str) -> bool:
    """Percentages and averages are not additive: aggregate them as time-weighted means."""
    return "pct" in name or ".avg" in name or ".ratio" in name or name.endswith(".max") \
        or name.endswith(".min")


def aggregate(results: Iterable[NcuResult], metrics: Optional[Iterable[str]] = None
              ) -> dict[str, Optional[float]]:
    """Sums of additive metrics; gpu__time_duration-weighted means of percentages/averages
    (plain means when durations are missing). Missing values are skipped; None if all are."""
    results = list(results)
    names = list(metrics) if metrics is not None else sorted(
        {m for r in results for m in r.metrics})
    out: dict[str, Optional[float]] = {}
    for m in names:
        vals = [(r.metrics.get(m), r.metrics.get(TIME_METRIC)) for r in results]
        vals = [(v, t) for v, t in vals if v is not None]
        if not vals:
            out[m] = None
        elif is_average_metric(m):
            wsum = sum(t for _, t in vals if t)
            if wsum and all(t for _, t in vals):
                out[m] = sum(v * t for v, t in vals) / wsum
            else:
                out[m] = sum(v for v, _ in vals) / len(vals)
        else:
            out[m] = sum(v for v, _ in vals)
    return out


def summarize(table: NcuTable, metrics: Optional[Iterable[str]] = None,
              name_filter: Optional[str] = None) -> dict:
    """{"count", "totals": {metric: agg}, "by_name": {name: {"count", metric: agg}}, "units"}.

    name_filter: a regex; only results whose name matches it (re.search) are counted."""
    rx = re.compile(name_filter) if name_filter else None
    res = [r for r in table.results if rx is None or rx.search(r.name)]
    metrics = list(metrics) if metrics is not None else table.metric_names
    by_name: dict[str, list[NcuResult]] = {}
    for r in res:
        by_name.setdefault(r.name, []).append(r)
    return {"count": len(res),
            "totals": aggregate(res, metrics),
            "by_name": {n: {"count": len(rs), **aggregate(rs, metrics)}
                        for n, rs in sorted(by_name.items())},
            "units": {m: table.units.get(m, "") for m in metrics}}


def short_kernel_name(name: str) -> str:
    """'_write_kv_kernel(...)' / 'void foo<...>(...)' -> '_write_kv_kernel' / 'foo'."""
    s = name.strip()
    if s.startswith("void "):
        s = s[5:]
    for ch in "(<":
        i = s.find(ch)
        if i > 0:
            s = s[:i]
    return s.strip()
