"""What the benchmark and profiling tools share: run metadata (device, date, git sha, command),
JSON output, percentiles and tables, timing on the device, the Llama-3-8B shapes, and the
tools' own environment variables (the engine's live in vllm/envs.py; these are read only here).

Run the tools as modules from the repository root, e.g.
``python3 -m tools.benchmarks.bench_decode``: ``tools`` is a package, and nothing edits
sys.path (``pip install -e .`` installs it too, so the scripts also run as files)."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (default, parser, doc): environment variables only the tools read
_TOOL_ENV: dict[str, tuple[Any, Callable[[str], Any], str]] = {
    "TARGET_MODEL": (None, str, "target model of the profiling tools (default: the default "
                     "model)"),
    "DRAFT_MODEL": (None, str, "draft model for draft_model / eagle drafting"),
    "TENSOR_PARALLEL_SIZE": (None, int, "tensor-parallel size of the profiling tools"),
}


def tool_env(name: str) -> Any:
    """One of the tools' environment variables, parsed (ValueError naming it if malformed)."""
    default, parse, _ = _TOOL_ENV[name]
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is invalid ({_TOOL_ENV[name][2]})") from None


def python_module_cmd(module: str) -> list[str]:
    """How one tool starts another: [python, -m, module] (``tools`` is a package)."""
    return [sys.executable, "-m", module]


def child_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH: a child process started from
    any working directory imports this checkout's ``tools`` and ``vllm``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


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
    """Atomically (a killed run never leaves half a file), JSON-safe; says where on stderr."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)
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


def sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    def __enter__(self):
        sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        sync()
        self.s = time.perf_counter() - self.t0


def llama3_8b_folder(root: str) -> str:
    """A config-only folder with Llama-3-8B's shapes (weights come from load_format='dummy')."""
    from transformers import LlamaConfig
    path = os.path.join(root, "llama3-8b-shapes")
    if not os.path.exists(os.path.join(path, "config.json")):
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                          max_position_embeddings=8192, rope_theta=500000.0,
                          rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
                          eos_token_id=128001)
        cfg.architectures = ["LlamaForCausalLM"]
        cfg.save_pretrained(path)
    return path


def smollm2_folder(root: str) -> str:
    """A config-only folder with SmolLM2-135M's shapes (weights from load_format='dummy')."""
    from transformers import LlamaConfig
    path = os.path.join(root, "smollm2-shapes")
    if not os.path.exists(os.path.join(path, "config.json")):
        cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                          max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                          tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
        cfg.architectures = ["LlamaForCausalLM"]
        cfg.save_pretrained(path)
    return path


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
