"""Shared helpers of the profiling tools: run metadata, percentiles, JSON output, progress bar."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from typing import Any, Iterable, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ensure_repo_on_path() -> None:
    """Scripts run as files (python tools/profiling/x.py): make `vllm` and `tools` importable."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)


def git_sha() -> dict[str, Any]:
    def git(*args: str) -> Optional[str]:
        try:
            return subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        except Exception:
            return None
    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def device_info() -> dict[str, Any]:
    """What ran the benchmark, in words and numbers (no device is started beyond torch's own)."""
    info: dict[str, Any] = {"host": platform.node(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            names = [torch.cuda.get_device_name(i) for i in range(n)]
            info.update(type="cuda", name=names[0], count=n, names=names,
                        cuda=torch.version.cuda,
                        capability=".".join(map(str, torch.cuda.get_device_capability(0))))
        else:
            info.update(type="cpu", name=platform.processor() or platform.machine(), count=1)
    except Exception as e:  # metadata must never fail a run
        info["error"] = repr(e)
    return info


def run_metadata(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Device, date, git sha and the exact command line: recorded in every JSON we write."""
    argv = list(sys.argv if argv is None else argv)
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git_sha(), "device": device_info(),
            "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + argv),
            "cwd": os.getcwd()}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def _clean(obj: Any) -> Any:
    """JSON-safe: nan/inf -> None, tuples -> lists, unknown objects -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json(path: str, obj: Any) -> str:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def parse_list(text: str, cast=str) -> list:
    """'a,b, c' -> ['a', 'b', 'c'] (also accepts spaces as separators)."""
    return [cast(x) for x in text.replace(",", " ").split() if x]


class Progress:
    """tqdm when installed, else one line per update on stderr."""

    def __init__(self, total: int, desc: str, disable: bool = False):
        self.total, self.n, self.desc, self.disable = total, 0, desc, disable
        self._bar = None
        if not disable:
            try:
                from tqdm.auto import tqdm
                self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True)
            except Exception:
                self._bar = None

    def update(self, n: int = 1, status: str = "") -> None:
        self.n += n
        if self.disable:
            return
        if self._bar is not None:
            if status:
                self._bar.set_postfix_str(status, refresh=False)
            self._bar.update(n)
        else:
            print(f"[{self.desc}] {self.n}/{self.total} {status}", file=sys.stderr, flush=True)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width table (one screen: keep columns few and short)."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if not math.isfinite(v):
                return "-"
            a = abs(v)
            if a and (a < 0.01 or a >= 1e5):
                return f"{v:.4g}"
            return f"{v:.3f}".rstrip("0").rstrip(".")
        return str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)
