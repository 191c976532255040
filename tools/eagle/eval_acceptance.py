"""Mean acceptance length of an EAGLE head on held-out prompts, through the engine.

Runs the held-out prompts (eval_prompts.jsonl of tools.eagle.gen_data) with
speculative_config={"method": "eagle", "model": HEAD, "num_speculative_tokens": k}, greedy,
and reads the engine's spec-decode counters: mean acceptance length = 1 + accepted / verify
windows (the tokens one target forward yields), plus the acceptance rate per draft position.
Without --head the shipped head for the target is used. --check-lossless also runs the target
alone and compares the outputs (greedy speculation must not change them).

    python3 -m tools.eagle.eval_acceptance --model SmolLM2-135M-Instruct --data /tmp/eagle_data \
        --head /tmp/eagle_head --k 4 --output /tmp/eagle_eval.json
"""
from __future__ import annotations

import argparse
import time

from tools.common import run_metadata, write_json
from tools.eagle.data import read_eval_prompts
from vllm import LLM, SamplingParams


def acceptance(llm: LLM, prompts: list[list[int]], max_tokens: int):
    """(outputs, stats) of one greedy generate; stats from the engine's spec counters."""
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    secs = time.perf_counter() - t0
    m = llm.get_metrics_dict()
    drafts = int(m.get("vllm:spec_decode_num_drafts", 0))
    draft_tokens = int(m.get("vllm:spec_decode_num_draft_tokens", 0))
    acc = int(m.get("vllm:spec_decode_num_accepted_tokens", 0))
    per_pos = [v for k, v in sorted(m.items()) if "accepted_tokens_per_pos" in k]
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    stats = {"verify_windows": drafts, "draft_tokens": draft_tokens, "accepted_tokens": acc,
             "mean_acceptance_length": 1 + acc / drafts if drafts else None,
             "draft_acceptance_rate": acc / draft_tokens if draft_tokens else None,
             "accepted_per_position": per_pos,
             "acceptance_rate_per_position": [v / drafts for v in per_pos] if drafts else None,
             "output_tokens": n, "seconds": secs, "tokens_per_s": n / secs}
    return [list(o.outputs[0].token_ids) for o in outs], stats


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--data", required=True, help="folder with eval_prompts.jsonl")
    ap.add_argument("--head", default=None, help="EAGLE head folder (default: the shipped one)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=None, help="default: all")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--check-lossless", action="store_true")
    ap.add_argument("--output", required=True)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    items = read_eval_prompts(args.data)[:args.num_prompts]
    prompts = [it["prompt_token_ids"] for it in items]
    spec = {"method": "eagle", "num_speculative_tokens": args.k}
    if args.head:
        spec["model"] = args.head
    common = dict(max_model_len=args.max_model_len, max_num_seqs=max(len(prompts), 1),
                  gpu_memory_utilization=args.gpu_memory_utilization,
                  enforce_eager=args.enforce_eager)
    llm = LLM(args.model, speculative_config=spec, **common)
    head = llm.llm_engine.config.speculative_config.model     # the resolved folder
    outs, stats = acceptance(llm, prompts, args.max_tokens)
    llm.shutdown()
    del llm
    res = {"kind": "eagle acceptance", **run_metadata(), "args": vars(args), "head": head,
           "num_prompts": len(prompts), "k": args.k, **stats}
    if args.check_lossless:
        base = LLM(args.model, **common)
        ref, _ = acceptance(base, prompts, args.max_tokens)
        base.shutdown()
        res["lossless"] = ref == outs
        res["num_prompts_differing"] = sum(a != b for a, b in zip(ref, outs))
    write_json(args.output, res)
    print(f"eval_acceptance: k={args.k} on {len(prompts)} held-out prompts: mean acceptance "
          f"length {stats['mean_acceptance_length']}, per position "
          f"{stats['acceptance_rate_per_position']}"
          + (f", lossless {res['lossless']}" if args.check_lossless else ""))
    return res


if __name__ == "__main__":
    main()
