"""`vllm bench serve`: load an OpenAI-compatible server and report what its users feel.

Requests of a dataset (see datasets.py) are sent as streams (SSE) at --request-rate (a
Poisson process, or gamma with --burstiness; inf = all at once), at most --max-concurrency in
flight. Per request: time to first token (TTFT), the gaps between streamed chunks (inter-token
latency, ITL), time per output token after the first (TPOT) and end-to-end latency (E2EL).
Reported: request and token throughput, and mean / median / --metric-percentiles of each
latency, on the console and as JSON (--result-file).

--probe-request adds a light request (short prompt, --probe-output-len tokens) sent again and
again while the load runs, once every concurrency slot is busy: its ITL percentiles are the
latency a small interactive user sees next to heavy traffic, reported under "probe".
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from vllm.benchmarks.datasets import DATASETS, BenchRequest, build_requests, load_tokenizer


@dataclass
class Outcome:
    ok: bool = False
    error: str = ""
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    start: float = 0.0


# ---------------------------------------------------------------------------- one request
def _payload(req: BenchRequest, args, model: str, chat: bool) -> dict:
    body: dict[str, Any] = {"model": model, "max_tokens": req.output_len, "stream": True,
                            "stream_options": {"include_usage": True},
                            "temperature": args.temperature}
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.top_k is not None:
        body["top_k"] = args.top_k
    if chat:
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    return body


async def send(client, url: str, headers: dict, body: dict, chat: bool) -> Outcome:
    """One streamed request; never raises (failures are counted)."""
    out = Outcome(start=time.perf_counter())
    last = out.start
    chunks = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                out.error = f"HTTP {r.status_code}: {text[:300]}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    out.error = str(obj["error"].get("message", obj["error"]))[:300]
                    return out
                usage = obj.get("usage")
                if usage:
                    out.prompt_len = usage.get("prompt_tokens", 0)
                    out.output_len = usage.get("completion_tokens", 0)
                has_text = any((c.get("delta", {}).get("content") if chat else c.get("text"))
                               for c in obj.get("choices", []))
                if not has_text:
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    out.ttft = now - out.start
                else:
                    out.itl.append(now - last)
                last = now
                chunks += 1
        out.e2el = time.perf_counter() - out.start
        if not out.output_len:
            out.output_len = chunks
        out.ok = chunks > 0 or out.output_len > 0
        if not out.ok:
            out.error = "the stream carried no tokens"
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
        out.error = f"{type(e).__name__}: {e}"[:300]
    return out


# ---------------------------------------------------------------------------- statistics
def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _stats(name: str, xs_s: list[float], pcts: list[float]) -> dict:
    xs = [x * 1000.0 for x in xs_s]          # milliseconds
    d = {f"mean_{name}_ms": sum(xs) / len(xs) if xs else 0.0,
         f"median_{name}_ms": percentile(xs, 50),
         f"std_{name}_ms": (math.sqrt(sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs))
                            if xs else 0.0)}
    for p in pcts:
        d[f"p{p:g}_{name}_ms"] = percentile(xs, p)
    return d


def summarize(outs: list[Outcome], duration: float, pcts: list[float],
              metrics: list[str]) -> dict:
    good = [o for o in outs if o.ok]
    out_tokens = sum(o.output_len for o in good)
    in_tokens = sum(o.prompt_len for o in good)
    res: dict[str, Any] = {
        "completed": len(good), "failed": len(outs) - len(good), "duration_s": duration,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(good) / duration if duration > 0 else 0.0,
        "output_throughput": out_tokens / duration if duration > 0 else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration > 0 else 0.0,
    }
    series = {"ttft": [o.ttft for o in good],
              "tpot": [(o.e2el - o.ttft) / (o.output_len - 1) for o in good
                       if o.output_len > 1],
              "itl": [x for o in good for x in o.itl],
              "e2el": [o.e2el for o in good]}
    for m in metrics:
        res.update(_stats(m, series[m], pcts))
    errors = [o.error for o in outs if not o.ok]
    if errors:
        res["errors"] = errors[:20]
    return res


# ---------------------------------------------------------------------------- the run
async def _arrivals(n: int, rate: float, burstiness: float, rng: random.Random):
    """Yield request indices at the chosen arrival process."""
    for i in range(n):
        yield i
        if math.isinf(rate) or i == n - 1:
            continue
        # gamma(shape=burstiness, mean=1/rate); burstiness 1 = Poisson arrivals
        await asyncio.sleep(rng.gammavariate(burstiness, 1.0 / (rate * burstiness)))


async def run(args, reqs: list[BenchRequest], model: str, url: str, headers: dict,
              chat: bool) -> dict:
    import httpx
    from tqdm import tqdm
    limit = args.max_concurrency or len(reqs)
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    limits = httpx.Limits(max_connections=limit + 8, max_keepalive_connections=limit + 8)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        # One request first: the server answers, the model name is right.
        test = await send(client, url, headers, _payload(
            BenchRequest(reqs[0].prompt, None, min(reqs[0].output_len, 4)), args, model, chat),
            chat)
        if not test.ok:
            raise RuntimeError(f"the initial test request failed: {test.error}")
        sem = asyncio.Semaphore(limit)
        bar = tqdm(total=len(reqs), disable=args.disable_tqdm, desc="requests")
        in_flight = 0
        load_done = asyncio.Event()
        saturated = asyncio.Event()
        outs: list[Optional[Outcome]] = [None] * len(reqs)

        async def one(i: int):
            nonlocal in_flight
            async with sem:
                in_flight += 1
                if in_flight >= min(limit, len(reqs)):
                    saturated.set()
                try:
                    outs[i] = await send(client, url, headers,
                                         _payload(reqs[i], args, model, chat), chat)
                finally:
                    in_flight -= 1
                    bar.update(1)

        async def probe_loop() -> list[Outcome]:
            res: list[Outcome] = []
            await saturated.wait()
            preq = BenchRequest([reqs[0].prompt[0]] * args.probe_input_len
                                if isinstance(reqs[0].prompt, list)
                                else " ".join(["Hello"] * args.probe_input_len),
                                None, args.probe_output_len)
            body = _payload(preq, args, model, chat)
            body["ignore_eos"] = True
            while not load_done.is_set():
                res.append(await send(client, url, headers, body, chat))
            return res

        rng = random.Random(args.seed)
        probe_task = asyncio.ensure_future(probe_loop()) if args.probe_request else None
        t0 = time.perf_counter()
        tasks = []
        async for i in _arrivals(len(reqs), args.request_rate, args.burstiness, rng):
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
        load_done.set()
        bar.close()
        probes: list[Outcome] = []
        if probe_task is not None:
            saturated.set()     # a load too small to saturate: the loop ends at once
            probes = await probe_task
    pcts = [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
    metrics = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    for m in metrics:
        if m not in ("ttft", "tpot", "itl", "e2el"):
            raise ValueError(f"--percentile-metrics: unknown metric {m!r}")
    result = summarize([o for o in outs if o is not None], duration, pcts, metrics)
    if args.probe_request:
        result["probe"] = summarize(probes, duration, pcts, ["ttft", "itl", "tpot"])
        result["probe"]["num_probes"] = len(probes)
    return result


def _print(res: dict, args) -> None:
    w = 50
    print("=" * w)
    print(" Serving Benchmark Result ".center(w, "="))
    rows = [("Successful requests", res["completed"]), ("Failed requests", res["failed"]),
            ("Maximum request concurrency", args.max_concurrency),
            ("Benchmark duration (s)", f"{res['duration_s']:.2f}"),
            ("Total input tokens", res["total_input_tokens"]),
            ("Total generated tokens", res["total_output_tokens"]),
            ("Request throughput (req/s)", f"{res['request_throughput']:.2f}"),
            ("Output token throughput (tok/s)", f"{res['output_throughput']:.2f}"),
            ("Total token throughput (tok/s)", f"{res['total_token_throughput']:.2f}")]
    for k, v in rows:
        print(f"{k:<38}{v!s:>12}")
    for k, v in res.items():
        if k.endswith("_ms") and not k.startswith("std_"):
            print(f"{k:<38}{v:>12.2f}")
    if "probe" in res:
        p = res["probe"]
        print(f"{'Probe requests':<38}{p['num_probes']:>12}")
        for k, v in p.items():
            if k.endswith("_ms") and ("itl" in k or "ttft" in k) and not k.startswith("std_"):
                print(f"{'probe ' + k:<38}{v:>12.2f}")
    print("=" * w)


# ---------------------------------------------------------------------------- CLI
def add_cli_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--backend", default="openai", choices=["openai", "vllm", "openai-chat"],
                   help="openai/vllm: /v1/completions; openai-chat: /v1/chat/completions")
    p.add_argument("--base-url", default=None, help="server URL (default http://HOST:PORT)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default=None,
                   help="API path (default /v1/completions, or /v1/chat/completions)")
    p.add_argument("--model", default=None,
                   help="model name to ask for (default: the server's first model)")
    p.add_argument("--served-model-name", default=None, help="same as --model")
    p.add_argument("--tokenizer", default=None,
                   help="local tokenizer (model folder, .gguf or name) for token-id datasets;"
                        " default: --model when it is a local model")
    p.add_argument("--dataset-name", default="random", choices=list(DATASETS))
    p.add_argument("--dataset-path", default=None, help="JSON list of prompts instead")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--output-len", type=int, default=None,
                   help="output tokens per request for the prompt sets")
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second (Poisson; inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of the arrivals (1: Poisson; < 1 burstier)")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="at most this many requests in flight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true",
                   help="generate exactly the asked output lengths")
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--percentile-metrics", default="ttft,tpot,itl,e2el")
    p.add_argument("--metric-percentiles", default="50,90,99")
    p.add_argument("--probe-request", action="store_true",
                   help="measure a light request's latency while the load runs")
    p.add_argument("--probe-input-len", type=int, default=8)
    p.add_argument("--probe-output-len", type=int, default=64)
    p.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--result-file", default=None, help="write the result JSON here")
    p.add_argument("--save-result", action="store_true",
                   help="write the result JSON to --result-dir/--result-filename")
    p.add_argument("--result-dir", default=".")
    p.add_argument("--result-filename", default=None)
    p.add_argument("--metadata", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra KEY=VALUE pairs recorded in the result JSON")
    return p


def _server_model(base_url: str, headers: dict) -> str:
    import httpx
    r = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def main(args: argparse.Namespace) -> int:
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be >= 1")
    if not args.request_rate > 0:
        raise ValueError("--request-rate must be > 0")
    base = args.base_url or f"http://{args.host}:{args.port}"
    chat = args.backend == "openai-chat" or (args.endpoint or "").endswith("/chat/completions")
    endpoint = args.endpoint or ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model or args.served_model_name or _server_model(base, headers)
    tokenizer = None
    tok_name = args.tokenizer or args.model
    if args.dataset_name in ("random", "synthetic") and args.dataset_path is None:
        if tok_name is None:
            raise ValueError(f"--dataset-name {args.dataset_name} needs --tokenizer")
        tokenizer = load_tokenizer(tok_name)
    out_len = (args.random_output_len if args.dataset_name == "random" else args.output_len)
    reqs = build_requests(args.dataset_name, args.num_prompts, tokenizer=tokenizer,
                          dataset_path=args.dataset_path, input_len=args.random_input_len,
                          output_len=out_len, range_ratio=args.random_range_ratio,
                          seed=args.seed, chat=chat)
    res = asyncio.run(run(args, reqs, model, base.rstrip("/") + endpoint, headers, chat))
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": "vllm bench serve " + " ".join(sys.argv[3:] if sys.argv[1:3] ==
                                                     ["bench", "serve"] else sys.argv[1:]),
           "base_url": base, "endpoint": endpoint, "model": model,
           "dataset_name": args.dataset_name, "num_prompts": args.num_prompts,
           "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
           "burstiness": args.burstiness, "max_concurrency": args.max_concurrency,
           **dict(kv.split("=", 1) for kv in args.metadata if "=" in kv), **res}
    _print(res, args)
    path = args.result_file
    if path is None and args.save_result:
        import os
        name = args.result_filename or (
            f"bench-serve-{args.dataset_name}-c{args.max_concurrency or 'inf'}-"
            f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
        path = os.path.join(args.result_dir, name)
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"result written to {path}")
    return 0 if res["completed"] else 1
