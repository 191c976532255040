"""Data parallelism through `vllm serve`: throughput at N concurrent streams, DP=1 vs DP=2.

For each data-parallel size, starts `vllm serve` (a subprocess on 127.0.0.1), then keeps
--streams streaming completion requests in flight (each a fixed random token-id prompt and
--max-tokens output tokens, ignore_eos) until --requests have finished; reports output
tokens/s, requests/s, time to first token percentiles, the requests each replica served (from
/metrics, label engine="<i>") and how long SIGINT took to stop the server. Ratios are within
one run.

  2 GPUs:  python tools/benchmarks/dp_serve_bench.py --model smollm2-dummy --dp-sizes 1,2 \\
               --output sweeps/dp_serve_smollm2.json
  CPU:     python tools/benchmarks/dp_serve_bench.py --model /path/tiny --device cpu \\
               --streams 8 --requests 16 --max-tokens 8 --extra=--enforce-eager
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from tools.common import (llama3_8b_folder, run_metadata as run_meta,  # noqa: E402
                          smollm2_folder, write_json)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, dp: int, log_path: str):
    port = _port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli", "serve", args.model_path,
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "bench",
           "--data-parallel-size", str(dp), "--max-model-len", str(args.max_model_len),
           "--max-num-seqs", str(args.max_num_seqs), "--disable-uvicorn-access-log",
           "--uvicorn-log-level", "warning", *args.server_args]
    if args.device:
        cmd += ["--device", args.device]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, log, f"http://127.0.0.1:{port}"


def _wait_ready(proc, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready within {timeout:.0f} s")


async def _load(url: str, args, vocab: int) -> dict:
    rng = random.Random(0)
    prompts = [[rng.randrange(10, vocab - 1) for _ in range(args.prompt_len)]
               for _ in range(args.requests)]
    body = {"model": "bench", "max_tokens": args.max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    next_i, ttfts, tokens, errors = 0, [], 0, 0
    limits = httpx.Limits(max_connections=args.streams + 8,
                          max_keepalive_connections=args.streams + 8)

    async def worker(client):
        nonlocal next_i, tokens, errors
        while next_i < len(prompts):
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            first = None
            try:
                async with client.stream("POST", url + "/v1/completions",
                                         json={**body, "prompt": prompts[i]}) as r:
                    if r.status_code != 200:
                        errors += 1
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            errors += 1
                            break
                        if first is None and chunk.get("choices"):
                            first = time.perf_counter() - t0
                        if chunk.get("usage") and not chunk.get("choices"):
                            tokens += chunk["usage"]["completion_tokens"]
            except httpx.HTTPError:
                errors += 1
            if first is not None:
                ttfts.append(first)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(args.streams)])
        wall = time.perf_counter() - t0
    ttfts.sort()
    pct = (lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] if ttfts else None)
    return {"wall_s": wall, "output_tokens": tokens, "tokens_per_s": tokens / wall,
            "requests_per_s": args.requests / wall, "errors": errors,
            "ttft_p50_s": pct(0.5), "ttft_p99_s": pct(0.99)}


def _per_replica(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    out: dict = {}
    text = httpx.get(url + "/metrics", timeout=30).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "vllm:request_success_total":
                e = s.labels.get("engine", "")
                out[e] = out.get(e, 0) + s.value
    return out


def run_dp(args, dp: int, vocab: int, log_dir: str) -> dict:
    proc, log, url = _start(args, dp, os.path.join(log_dir, f"server_dp{dp}.log"))
    res: dict = {"dp": dp}
    try:
        t0 = time.monotonic()
        _wait_ready(proc, url, args.ready_timeout)
        res["startup_s"] = time.monotonic() - t0
        warm = argparse.Namespace(**{**vars(args), "requests": args.streams, "max_tokens": 4})
        asyncio.run(_load(url, warm, vocab))                 # warm-up (graphs, allocator)
        res.update(asyncio.run(_load(url, args, vocab)))
        res["requests_by_engine"] = _per_replica(url)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        res["sigint_stop_s"] = time.monotonic() - t0
        res["exit_code"] = proc.returncode
        print(f"DP={dp}: {res['tokens_per_s']:.0f} tok/s, {res['requests_per_s']:.1f} req/s, "
              f"errors {res['errors']}, by engine {res['requests_by_engine']}, "
              f"stop {res['sigint_stop_s']:.1f} s", flush=True)
    except Exception as e:  # noqa: BLE001 - keep the other sizes' results
        res["error"] = f"{type(e).__name__}: {e}"
        print(f"DP={dp}: {res['error']}", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-dummy",
                    help="a folder / .gguf, or smollm2-dummy / llama3-8b-dummy (shapes only)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dp-sizes", default="1,2")
    ap.add_argument("--streams", type=int, default=128)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--extra", action="append", default=[],
                    help="one more `vllm serve` flag (repeatable), e.g. --extra=--enforce-eager")
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--output", default="sweeps/dp_serve.json")
    args = ap.parse_args()
    # A time box's SIGTERM must still run the `finally` that stops the server's session.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    args.server_args = list(args.extra)
    if args.model in ("smollm2-dummy", "llama3-8b-dummy"):
        root = tempfile.gettempdir()
        args.model_path = (smollm2_folder(root) if args.model == "smollm2-dummy"
                           else llama3_8b_folder(root))
        args.server_args += ["--load-format", "dummy"]
    else:
        args.model_path = args.model
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import loader
    path = loader.resolve(args.model_path)
    fmt = "dummy" if "--load-format" in args.server_args else EngineArgs.load_format
    vocab = loader.load_hf_config(path, fmt).vocab_size
    log_dir = args.log_dir or os.path.dirname(os.path.abspath(args.output))
    os.makedirs(log_dir, exist_ok=True)
    runs = [run_dp(args, int(d), vocab, log_dir) for d in args.dp_sizes.split(",")]
    base = runs[0].get("tokens_per_s")
    for r in runs[1:]:
        if base and r.get("tokens_per_s"):
            r["speedup_vs_first"] = r["tokens_per_s"] / base
            print(f"DP={r['dp']} vs DP={runs[0]['dp']}: {r['speedup_vs_first']:.2f}x")
    write_json(args.output, {"config": {**run_meta(), **{k: v for k, v in vars(args).items()}},
                             "runs": runs})


if __name__ == "__main__":
    main()
