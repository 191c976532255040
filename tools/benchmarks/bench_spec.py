"""Speculative decoding throughput and acceptance on the default model (issue: spec decode).

SmolLM2-135M at batch 1 and 32, temperature 0 and 0.7, k in {2, 4, 8}: tokens/s and mean
acceptance length for n-gram drafting and the target as its own draft, against no speculation;
plus transformers' prompt-lookup assisted generation on the same prompts, same run. Code
prompts (where n-gram helps) and chat prompts (where it does not).

Example (H100): python3 -m tools.benchmarks.bench_spec --model /path/SmolLM2.gguf \
                    --output sweeps/bench_spec_h100.json
"""
from __future__ import annotations

import argparse
import gc
import os

import torch

from tools.benchmarks.prompts.spec_prompts import render
from tools.common import Timer, run_metadata, write_json
from vllm import LLM, SamplingParams


def _spec_counts(llm) -> tuple[int, int]:
    m = llm.get_metrics_dict()
    return (int(m.get("vllm:spec_decode_num_drafts", 0)),
            int(m.get("vllm:spec_decode_num_accepted_tokens", 0)))


def _controller(llm):
    """Steps the adaptive draft length controller decided so far, per kind and per k (with
    chained steps: the chain switch's chained / plain steps)."""
    eng = llm.llm_engine
    ctl = eng.chain_switch or eng.adaptive
    if ctl is None:
        return None
    st = ctl.stats
    out = {"steps_spec": st.steps_spec, "steps_plain": st.steps_plain, "probes": st.probes}
    out.update({f"k{k}": n for k, n in st.k_hist.items()})
    return out


def run_engine(name, llm, sets, batches, temps, max_tokens, rows):
    for kind, prompts in sets.items():
        for b in batches:
            batch = (prompts * ((b + len(prompts) - 1) // len(prompts)))[:b]
            for t in temps:
                # unseeded: a seeded request's generator cannot be replayed from a graph, so
                # it would keep speculative steps synchronous (chain.py)
                sp = SamplingParams(temperature=t,
                                    max_tokens=max_tokens, ignore_eos=True)
                # warm-up at the full batch: every kernel shape of the run is compiled, and
                # an adaptive engine has seen this batch size (a server runs for hours)
                llm.generate(batch, SamplingParams(temperature=t, max_tokens=32,
                                                   ignore_eos=True), use_tqdm=False)
                d0, a0 = _spec_counts(llm)
                c0 = _controller(llm)
                with Timer() as tm:
                    outs = llm.generate(batch, sp, use_tqdm=False)
                d1, a1 = _spec_counts(llm)
                c1 = _controller(llm)
                n = sum(len(o.outputs[0].token_ids) for o in outs)
                drafts, acc = d1 - d0, a1 - a0
                row = {"engine": name, "prompts": kind, "batch": b, "temperature": t,
                       "output_tokens": n, "seconds": tm.s, "tokens_per_s": n / tm.s,
                       "verify_windows": drafts, "accepted_tokens": acc,
                       "mean_acceptance_length": (1 + acc / drafts) if drafts else None,
                       "async": llm.llm_engine.async_scheduling,
                       "chained": llm.llm_engine._chain}
                if c0 is not None:      # what the adaptive controller chose in this run
                    row["adaptive"] = {key: c1[key] - c0.get(key, 0) for key in c1}
                rows.append(row)
                mal = row["mean_acceptance_length"]
                print(f"{name:18s} {kind:5s} b={b:3d} T={t}: {row['tokens_per_s']:8.0f} tok/s"
                      + (f"  mean acc len {mal:.2f}" if mal else "")
                      + (f"  controller {row['adaptive']}" if c0 is not None else ""))


def hf_assisted(model: str, sets: dict, max_tokens: int, ks: list[int]) -> list[dict]:
    from transformers import LlamaForCausalLM
    from vllm.model_executor.model_loader import loader
    from vllm.model_executor.model_loader.gguf_loader import load_gguf, load_gguf_tokenizer
    path = loader.resolve(model)
    g = load_gguf(path, dtype=torch.bfloat16)
    tok = load_gguf_tokenizer(path)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hf = LlamaForCausalLM(g.hf_config)
    hf.load_state_dict(g.state_dict, strict=False)
    hf.tie_weights()
    hf = hf.to(dev, torch.bfloat16).eval()
    rows = []
    for kind, prompts in sets.items():
        for k in [0] + ks:
            n_tok, secs = 0, 0.0
            for p in prompts[:4]:
                ids = tok(p, return_tensors="pt").input_ids.to(dev)
                kw = {"prompt_lookup_num_tokens": k} if k else {}
                with torch.no_grad(), Timer() as tm:
                    out = hf.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                      do_sample=False, pad_token_id=0, **kw)
                n_tok += out.shape[1] - ids.shape[1]
                secs += tm.s
            rows.append({"engine": "transformers" + (f"+prompt_lookup_k{k}" if k else ""),
                         "prompts": kind, "batch": 1, "temperature": 0.0,
                         "output_tokens": n_tok, "seconds": secs, "tokens_per_s": n_tok / secs})
            print(f"transformers k={k} {kind}: {n_tok / secs:.1f} tok/s")
    del hf
    gc.collect()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--methods", default="none,ngram,draft_model",
                    help="comma list of none, ngram, draft_model, eagle, each but none "
                         "also as <method>-adaptive (adaptive draft length) and "
                         "<method>-nochain (VLLM_SPEC_CHAIN=0: synchronous spec steps)")
    ap.add_argument("--eagle-model", default=None,
                    help="EAGLE head folder for method eagle (default: the shipped head)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--hf", action="store_true", help="also run transformers (batch 1)")
    ap.add_argument("--output", default="sweeps/bench_spec.json")
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    temps = [float(x) for x in args.temperatures.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    res = {"config": {**run_metadata(), **vars(args)}, "rows": []}
    tokenizer = None
    for method in args.methods.split(","):
        # no-spec runs twice, synchronous and asynchronous scheduling; fixed-k speculative
        # engines use the default scheduling (asynchronous on CUDA: draft_model and EAGLE
        # chain their steps on the device, n-gram falls back to synchronous steps, the engine
        # logs why); "<method>-nochain" turns chaining off (VLLM_SPEC_CHAIN=0);
        # "<method>-adaptive" picks k per step (adaptive_draft_length).
        nochain = method.endswith("-nochain")
        base = method.removesuffix("-nochain")
        base, adaptive = base.removesuffix("-adaptive"), base.endswith("-adaptive")
        for k, asy in ([(0, False), (0, True)] if method == "none" else
                       [(k, None) for k in ks]):
            spec = None
            if base == "ngram":
                spec = {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3}
            elif base == "draft_model":
                spec = {"method": "draft_model", "model": args.model, "num_speculative_tokens": k}
            elif base == "eagle":
                # --eagle-model, else the head shipped for the target
                spec = {"method": "eagle", "num_speculative_tokens": k}
                if args.eagle_model:
                    spec["model"] = args.eagle_model
            elif base != "none":
                raise SystemExit(f"unknown method {method!r}")
            if spec is not None and adaptive:
                spec["adaptive_draft_length"] = True
            saved = os.environ.get("VLLM_SPEC_CHAIN")
            if nochain:
                os.environ["VLLM_SPEC_CHAIN"] = "0"
            try:
                llm = LLM(args.model, max_model_len=args.max_model_len,
                          max_num_seqs=max(batches), gpu_memory_utilization=0.4,
                          speculative_config=spec, async_scheduling=asy)
            finally:
                if saved is None:
                    os.environ.pop("VLLM_SPEC_CHAIN", None)
                else:
                    os.environ["VLLM_SPEC_CHAIN"] = saved
            tokenizer = tokenizer or llm.get_tokenizer()
            sets = {"code": render(tokenizer, "code"), "chat": render(tokenizer, "chat")}
            name = ("no-spec" + ("-async" if asy else "")) if method == "none" else f"{method}-k{k}"
            run_engine(name, llm, sets, batches, temps, args.max_tokens, res["rows"])
            llm.shutdown()
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            write_json(args.output, res)
    if args.hf:
        sets = {"code": render(tokenizer, "code"), "chat": render(tokenizer, "chat")}
        res["rows"] += hf_assisted(args.model, sets, args.max_tokens, [4])
    write_json(args.output, res)


if __name__ == "__main__":
    main()
