"""Generate EAGLE training sequences from the target itself (self-distillation) with this engine.

Prompts come from text on this machine (tools/eagle/prompts.py: the stdlib's sources for
training, builtins' help texts and the benchmark prompts for the held-out eval set), wrapped in
the tokenizer's chat template when it has one. Each training sequence is the prompt's token ids
followed by the target's response. Generation runs in chunks and stops cleanly at
--time-budget-s, keeping what finished. Eval prompts that overlap training (as text or as token
sequence) are dropped, and the final check must find none.

    python3 -m tools.eagle.gen_data --model SmolLM2-135M-Instruct --out /tmp/eagle_data \
        --num-prompts 4000 --max-tokens 256 --time-budget-s 150
"""
from __future__ import annotations

import argparse
import time

from tqdm.auto import tqdm

from tools.common import run_metadata
from tools.eagle.data import write_dataset
from tools.eagle.prompts import eval_prompts, find_overlap, train_prompts
from vllm import LLM, SamplingParams


def format_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of one user message: through the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--num-prompts", type=int, default=4000)
    ap.add_argument("--num-eval", type=int, default=64, help="held-out eval prompts")
    ap.add_argument("--max-tokens", type=int, default=256, help="response tokens per prompt")
    ap.add_argument("--max-prompt-tokens", type=int, default=512,
                    help="longer (chat-formatted) prompts are skipped")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-request-seeds", action="store_true",
                    help="a seed per request (batch-independent, but each seeded row samples "
                    "on its own: slower); default: the engine's one seeded generator")
    ap.add_argument("--chunk", type=int, default=1024, help="prompts per generate() call")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="seconds from the start (engine load included) after which no new "
                    "chunk starts; the first chunk always runs")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--enforce-eager", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    train_texts = train_prompts(args.num_prompts, args.seed)
    ev = eval_prompts(args.num_eval, args.seed)
    text_hits = {i for i, _ in find_overlap(train_texts, ev)}
    ev = [e for i, e in enumerate(ev) if i not in text_hits]

    llm = LLM(args.model, seed=args.seed, max_model_len=args.max_model_len,
              max_num_seqs=args.max_num_seqs, enforce_eager=args.enforce_eager,
              gpu_memory_utilization=args.gpu_memory_utilization)
    tok = llm.get_tokenizer()
    kept = [(t, format_prompt(tok, t)) for t in train_texts]
    kept = [(t, ids) for t, ids in kept if 0 < len(ids) <= args.max_prompt_tokens]
    load_s = time.perf_counter() - t0

    seqs, prompt_lens, used_texts = [], [], []
    bar = tqdm(total=len(kept), desc="gen_data")
    stopped_early = False
    for c in range(0, len(kept), args.chunk):
        if seqs and args.time_budget_s is not None and \
                time.perf_counter() - t0 > args.time_budget_s:     # the first chunk always runs
            stopped_early = True
            break
        chunk = kept[c:c + args.chunk]
        params = [SamplingParams(temperature=args.temperature, top_p=args.top_p,
                                 max_tokens=args.max_tokens,
                                 seed=args.seed * 1_000_003 + c + j
                                 if args.per_request_seeds and args.temperature > 0 else None)
                  for j in range(len(chunk))]
        outs = llm.generate([{"prompt_token_ids": ids} for _, ids in chunk], params,
                            use_tqdm=False)
        for (text, ids), o in zip(chunk, outs):
            seqs.append(list(ids) + list(o.outputs[0].token_ids))
            prompt_lens.append(len(ids))
            used_texts.append(text)
        bar.update(len(chunk))
    bar.close()
    gen_s = time.perf_counter() - t0 - load_s

    # the eval prompts' token ids, then the token-level check against what was generated
    eval_ids = [format_prompt(tok, e) for e in ev]
    hits = {i for i, _ in find_overlap(used_texts, ev, seqs, eval_ids)}
    eval_items = [{"text": e, "prompt_token_ids": ids}
                  for i, (e, ids) in enumerate(zip(ev, eval_ids))
                  if i not in hits and len(ids) <= args.max_prompt_tokens]
    left = find_overlap(used_texts, [e["text"] for e in eval_items], seqs,
                        [e["prompt_token_ids"] for e in eval_items])
    assert not left, f"eval prompts still overlap training: {left[:3]}"
    llm.shutdown()

    info = {"kind": "eagle self-distillation data", **run_metadata(), "args": vars(args),
            "target": args.model, "seed": args.seed,
            "train_source": "stdlib sources (ast) + open-question templates",
            "eval_source": "builtins help() texts + eval chat questions + benchmark prompts",
            "prompts_available": len(kept), "stopped_early_by_time_budget": stopped_early,
            "eval_dropped_for_overlap": len(text_hits) + len(hits),
            "load_s": load_s, "generate_s": gen_s,
            "response_tokens_per_s": (sum(len(s) for s in seqs) - sum(prompt_lens))
            / max(gen_s, 1e-9)}
    manifest = write_dataset(args.out, seqs, prompt_lens, eval_items, info)
    print(f"gen_data: {manifest['num_sequences']} sequences, {manifest['num_tokens']} tokens "
          f"({manifest['num_response_tokens']} generated in {gen_s:.1f} s), "
          f"{manifest['num_eval_prompts']} eval prompts -> {args.out}")
    return manifest


if __name__ == "__main__":
    main()
