"""Tensor parallelism: does TP=N give the same greedy tokens as TP=1, and what does it buy?

For each TP size, one engine decodes the same prompts greedily with the chosen token's logprob
recorded; TP>1 is compared with TP=1: identical-token fraction, first divergent position, and
the largest |logprob difference| over the common prefix (the logits tolerance that matters for
dummy weights, whose near-ties make bf16 token equality fragile). Then decode tokens/s per
batch size. Optionally the NWOR microbench per TP size (--microbench).

Examples:
  CPU (gloo):  python3 -m tools.benchmarks.tp_check --model /path/tiny --tp-sizes 1,2
  2 GPUs:      python3 -m tools.benchmarks.tp_check --model llama3-8b-dummy --dtype bfloat16 \
                   --output sweeps/tp_check_llama8b.json
"""
from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time

import torch

from tools.common import Timer, llama3_8b_folder, run_metadata, write_json
from vllm import LLM, SamplingParams


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(10, vocab - 1) for _ in range(length)]}
            for _ in range(n)]


def run_tp(model: str, tp: int, args) -> dict:
    kw = {"load_format": "dummy"} if args.load_format == "dummy" else {}
    shutdown: dict = {}
    llm = LLM(model, tensor_parallel_size=tp, dtype=args.dtype, max_model_len=args.max_model_len,
              max_num_seqs=max(args.batches), enforce_eager=args.enforce_eager,
              gpu_memory_utilization=0.85, seed=0, **kw)
    try:
        vocab = llm.llm_engine.config.model_config.vocab_size
        prompts = _prompts(args.num_prompts, args.prompt_len, vocab, 0)
        sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                            logprobs=1)
        outs = llm.generate(prompts, sp, use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        logprobs = [[lp[t] for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
                    for o in outs]
        speed = []
        for b in args.batches:
            batch = _prompts(b, args.prompt_len, vocab, 1)
            tp_sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
            llm.generate(batch, tp_sp, use_tqdm=False)          # warm-up, same shapes
            with Timer() as t:
                llm.generate(batch, tp_sp, use_tqdm=False)
            speed.append({"batch": b, "tokens_per_s": b * args.max_tokens / t.s})
            print(f"TP={tp} batch={b}: {b * args.max_tokens / t.s:.0f} tok/s")
        graphs = llm.llm_engine.executor.driver_runner.graphs
        return {"tp": tp, "tokens": tokens, "logprobs": logprobs, "speed": speed,
                # All-reduces inside the CUDA graphs: capture worked iff graphs are enabled.
                "cuda_graphs": graphs.enabled and bool(graphs.graphs),
                "graph_replays": graphs.num_replays, "shutdown": shutdown}
    finally:
        t0 = time.perf_counter()
        llm.shutdown()
        shutdown["seconds"] = time.perf_counter() - t0
        print(f"TP={tp}: shutdown took {shutdown['seconds']:.2f} s", flush=True)
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def compare(ref: dict, other: dict) -> dict:
    same, first_div, max_dlp = 0, [], 0.0
    for ta, tb, la, lb in zip(ref["tokens"], other["tokens"], ref["logprobs"],
                              other["logprobs"]):
        same += ta == tb
        n = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), len(ta))
        first_div.append(n if n < len(ta) else None)
        for i in range(n):
            max_dlp = max(max_dlp, abs(la[i] - lb[i]))
    return {"tp": other["tp"], "identical_requests": same, "requests": len(ref["tokens"]),
            "first_divergence": first_div, "max_abs_logprob_diff_common_prefix": max_dlp,
            "speedup_vs_tp1": [o["tokens_per_s"] / r["tokens_per_s"]
                               for r, o in zip(ref["speed"], other["speed"])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct",
                    help="a folder, a .gguf, the default model's name, or llama3-8b-dummy")
    ap.add_argument("--load-format", default="auto", choices=("auto", "dummy"))
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tp-sizes", default="1,2")
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default="1,32")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--output", default="sweeps/tp_check.json")
    args = ap.parse_args()
    model = args.model
    if model == "llama3-8b-dummy":
        model, args.load_format = llama3_8b_folder(tempfile.gettempdir()), "dummy"
    sizes = [int(x) for x in args.tp_sizes.split(",")]
    if sizes[0] != 1:
        raise ValueError(f"--tp-sizes must start with 1 (the reference), got {args.tp_sizes}")
    runs = [run_tp(model, tp, args) for tp in sizes]
    cmp = [compare(runs[0], r) for r in runs[1:]]
    for c in cmp:
        print(f"TP={c['tp']} vs TP=1: {c['identical_requests']}/{c['requests']} identical, "
              f"max |dlogprob| {c['max_abs_logprob_diff_common_prefix']:.3g}, speed-up "
              + ", ".join(f"{s:.2f}x" for s in c["speedup_vs_tp1"]))
    write_json(args.output, {"config": {**run_metadata(), **vars(args), "model": model},
                             "runs": [{k: r[k] for k in ("tp", "speed", "cuda_graphs",
                                                         "graph_replays", "shutdown")}
                                      for r in runs],
                             "comparisons": cmp})


if __name__ == "__main__":
    main()
