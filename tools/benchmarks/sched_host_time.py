"""Host time of the engine's per-step bookkeeping alone: Scheduler.schedule,
Scheduler.update_from_output and LLMEngine._process, with the model step replaced by a fixed
sampled token (no forward, no device), at a given batch size. The part of a decode step that
asynchronous scheduling cannot hide once it exceeds the GPU's step time; comparable across
machines only as a ratio between code versions measured in one run.

Example:  python3 -m tools.benchmarks.sched_host_time --batch 64 --steps 300
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from tools.common import run_metadata, write_json
from vllm import LLM, SamplingParams
from vllm.v1.core.sched_output import RunnerOutput


def _tiny_model() -> str:
    import os
    import tempfile

    from transformers import LlamaConfig
    path = os.path.join(tempfile.mkdtemp(), "tiny-llama")
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                      max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one repeat")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    llm = LLM(_tiny_model(), load_format="dummy", device="cpu", async_scheduling=False,
              max_num_seqs=args.batch, max_model_len=4096, dtype="float32")
    eng = llm.llm_engine
    sched = eng.scheduler
    sp = SamplingParams(temperature=0.0, max_tokens=args.steps + 10, ignore_eos=True)

    def run(tag: str) -> float:
        for i in range(args.batch):
            eng.add_request(f"{tag}-{i}", {"prompt_token_ids": [5 + i % 50] * 16}, sp)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            so = sched.schedule()
            ro = RunnerOutput([r.req_id for r in so.reqs], [[7] for _ in so.reqs])
            eng._process(sched.update_from_output(so, ro), False)
        dt = time.perf_counter() - t0
        eng.abort_request([f"{tag}-{i}" for i in range(args.batch)])
        return dt / args.steps

    run("warm")
    us = [1e6 * run(f"r{k}") for k in range(args.repeats)]
    res = {"config": {**run_metadata(), **vars(args)}, "us_per_step": us,
           "us_per_step_min": min(us), "us_per_request_min": min(us) / args.batch}
    print(f"batch {args.batch}: schedule + update + process {min(us):.0f} us/step "
          f"({min(us) / args.batch:.1f} us per request)")
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        run("prof")
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
        print(s.getvalue())
    if args.output:
        write_json(args.output, res)


if __name__ == "__main__":
    main()
