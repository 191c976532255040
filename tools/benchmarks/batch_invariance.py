"""Does greedy output depend on the batch it runs in? Without speculation, the same prompt is
decoded alone (with one other prompt) and inside a batch of B, in bf16 and float32; then with
n-gram speculation at batch B. Reports, per dtype, how many requests differ from the batch-2
output and at which token they first diverge. A bf16 difference without speculation is GEMM
reduction-order noise (row count changes the kernel), not a spec-decode bug.

Example (H100): python3 -m tools.benchmarks.batch_invariance --model /path/SmolLM2.gguf \
                    --output sweeps/batch_invariance_h100.json
"""
from __future__ import annotations

import argparse

from tools.benchmarks.bench_nwor import CODE_PROMPT as CODE
from tools.common import run_metadata, write_json
from vllm import LLM, SamplingParams

CHAT = "Explain in two sentences why the sky is blue."


def first_diff(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--output", default="sweeps/batch_invariance.json")
    args = ap.parse_args()
    sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    res = {"config": {**run_metadata(), **vars(args)}, "rows": []}
    for dtype in args.dtypes.split(","):
        refs = None
        for spec in (None, {"method": "ngram", "num_speculative_tokens": args.k}):
            llm = LLM(args.model, dtype=dtype, max_model_len=1024, max_num_seqs=args.batch,
                      max_num_batched_tokens=2048, gpu_memory_utilization=0.3,
                      speculative_config=spec)
            for b in ((2, args.batch) if spec is None else (args.batch,)):
                prompts = [CODE, CHAT] * (b // 2)
                outs = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
                if refs is None:
                    refs = {CODE: outs[0], CHAT: outs[1]}
                diffs = [first_diff(o, refs[p]) for p, o in zip(prompts, outs)
                         if o != refs[p]]
                row = {"dtype": dtype, "spec": bool(spec), "batch": b,
                       "requests": b, "differ_from_batch2_nospec": len(diffs),
                       "first_divergent_token": min(diffs) if diffs else None,
                       "code_text": llm.get_tokenizer().decode(outs[0]) if llm.get_tokenizer()
                       else None}
                res["rows"].append(row)
                print(f"{dtype:9s} spec={bool(spec)!s:5s} batch={b:4d}: {len(diffs)} of {b} differ "
                      f"from batch-2 no-spec (first at token {row['first_divergent_token']})")
            llm.shutdown()
    write_json(args.output, res)


if __name__ == "__main__":
    main()
