"""Host time of the engine's per-step bookkeeping, on any device: median ms per decode step and
the part of it spent in output processing (`LLMEngine._process`: detokenization, stop checks,
stats), at a given batch size. The model's forward is whatever the device makes of it; the
`_process` share is host Python and comparable across devices.

Example (CPU, default model with its real tokenizer):
  python3 -m tools.benchmarks.host_step_time --batch 64 --output sweeps/host_step_cpu.json
"""
from __future__ import annotations

import argparse
import statistics
import time

from tools.common import run_metadata, sync, write_json
from vllm import LLM, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stream", action="store_true", help="build outputs every step (server)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    llm = LLM(args.model, max_model_len=512, max_num_seqs=args.batch)
    eng = llm.llm_engine
    inner = eng._process
    spent: list[float] = []

    def timed_process(touched, stream):
        t0 = time.perf_counter()
        out = inner(touched, args.stream or stream)
        spent.append(time.perf_counter() - t0)
        return out

    eng._process = timed_process
    sp = SamplingParams(temperature=0.0, max_tokens=args.steps + 8, ignore_eos=True)
    step_ms, proc_ms = [], []
    for rep in range(args.repeats):
        for i in range(args.batch):
            eng.add_request(f"h{rep}-{i}", {"prompt_token_ids": [100 + i % 50] * 16}, sp)
        eng.step()                                   # prefill
        spent.clear()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            eng.step()
        sync()
        step_ms.append(1e3 * (time.perf_counter() - t0) / args.steps)
        proc_ms.append(1e3 * sum(spent) / len(spent))
        while eng.has_unfinished_requests():
            eng.step()
    res = {"config": {**run_metadata(), **vars(args)},
           "ms_per_step_median": statistics.median(step_ms), "ms_per_step": step_ms,
           "process_ms_per_step_median": statistics.median(proc_ms), "process_ms": proc_ms}
    print(f"batch {args.batch}: {res['ms_per_step_median']:.3f} ms/step, of which output "
          f"processing {res['process_ms_per_step_median']:.3f} ms")
    if args.output:
        write_json(args.output, res)


if __name__ == "__main__":
    main()
