"""All-reduce cost of tensor parallelism, per layer, on N GPUs (or gloo on the CPU).

A decoder layer under TP all-reduces its attention output and its MLP output: two all-reduces
of [tokens, hidden] per layer. For each token count this measures, per all-reduce:
  nccl_eager  dist.all_reduce launched from Python (the eager model path);
  nccl_graph  the same, 2 x layers of them captured in one CUDA graph and replayed (what the
              model's CUDA graphs do);
  p2p_*       torch's symmetric-memory one-shot all-reduce (peer-to-peer loads over NVLink,
              no multicast), eager and in a graph, where this torch build has it.
and reports the per-layer (2 all-reduces) and per-step (layers x 2) cost.
NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1) in every process.

  2 GPUs: python tools/benchmarks/allreduce_bench.py --output sweeps/allreduce_tp2.json
  CPU:    python tools/benchmarks/allreduce_bench.py --device cpu --tokens 1,8 --iters 5
"""
from __future__ import annotations

import argparse
import os
import socket
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tools.common import run_metadata as run_meta, write_json  # noqa: E402

from vllm import envs  # noqa: E402
from vllm.v1.engine.tp_executor import NVLS_OFF_DEFAULTS  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Clock:
    """Seconds of GPU time (CUDA events) or wall time (CPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, iters: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(iters):
                fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return time.perf_counter() - t0


def _graph_of(fn, n: int):
    """A CUDA graph of n calls of fn (warmed up first)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    torch.cuda.synchronize()
    return g


def _p2p_allreduce(x: torch.Tensor):
    """torch's symmetric-memory one-shot all-reduce over x (copied into a symmetric buffer);
    returns (fn, note) or (None, reason)."""
    try:
        import torch.distributed._symmetric_memory as symm_mem
        buf = symm_mem.empty(x.shape, dtype=x.dtype, device=x.device)
        group = dist.group.WORLD
        symm_mem.rendezvous(buf, group.group_name)
        op = torch.ops.symm_mem.one_shot_all_reduce
        buf.copy_(x)
        out = op(buf, "sum", group.group_name)
        torch.cuda.synchronize()
        ref = x * dist.get_world_size()
        if not torch.allclose(out.float(), ref.float(), rtol=1e-2, atol=1e-2):
            return None, "wrong result"

        def fn():
            buf.copy_(x)
            return op(buf, "sum", group.group_name)
        return fn, "symm_mem.one_shot_all_reduce"
    except Exception as e:  # noqa: BLE001 - not in this build / not on this machine
        return None, f"{type(e).__name__}: {e}"[:300]


def _rank_main(rank: int, world: int, port: int, args, out_q) -> None:
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    clock = _Clock(device)
    rows = []
    try:
        for T in args.tokens:
            x = torch.full((T, args.hidden), 0.5, dtype=dtype, device=device)
            row = {"tokens": T, "bytes": x.numel() * x.element_size()}

            def ar():
                dist.all_reduce(x)
            for _ in range(3):
                ar()
            dist.barrier()
            row["nccl_eager_us" if device.type == "cuda" else "gloo_eager_us"] = \
                clock(ar, args.iters) / args.iters * 1e6
            if device.type == "cuda":
                n = 2 * args.layers

                def graph_time(name, fn):
                    """row[name_graph_us]: fn's time per call, n calls captured in one graph."""
                    try:
                        g = _graph_of(fn, n)
                        dist.barrier()
                        row[f"{name}_graph_us"] = clock(g.replay, args.graph_replays) / (
                            args.graph_replays * n) * 1e6
                    except Exception as e:  # noqa: BLE001
                        row[f"{name}_graph_error"] = f"{type(e).__name__}: {e}"[:300]

                graph_time("nccl", ar)
                fn, note = _p2p_allreduce(x)
                # Every rank takes the same branch (a one-sided failure would hang a barrier).
                ok = torch.tensor([1 if fn is not None else 0], device=device)
                dist.all_reduce(ok, op=dist.ReduceOp.MIN)
                row["p2p_impl"] = note if ok.item() else f"not on every rank: {note}"
                if ok.item():
                    dist.barrier()
                    row["p2p_eager_us"] = clock(fn, args.iters) / args.iters * 1e6
                    graph_time("p2p", fn)
            for k in [k for k in row if k.endswith("_us")]:
                row[k.replace("_us", "_per_layer_us")] = 2 * row[k]
                row[k.replace("_us", "_per_step_ms")] = 2 * args.layers * row[k] / 1e3
            rows.append(row)
            if rank == 0:
                print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items() if not k.endswith("_step_ms")),
                      flush=True)
        if rank == 0:
            out_q.put(("ok", rows))
    except Exception:  # noqa: BLE001
        out_q.put(("error", f"rank {rank}:\n{traceback.format_exc()}"))
    finally:
        # Abort, not destroy: local, never waits for the peer.
        if device.type == "cuda":
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--hidden", type=int, default=4096, help="Llama-3-8B: 4096")
    ap.add_argument("--layers", type=int, default=32, help="Llama-3-8B: 32")
    ap.add_argument("--tokens", type=lambda s: [int(x) for x in s.split(",")],
                    default="1,8,32,128,512")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--graph-replays", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--output", default="sweeps/allreduce.json")
    args = ap.parse_args()
    for k, v in NVLS_OFF_DEFAULTS.items():
        envs.set_default(k, v)
    if args.device == "cuda" and torch.cuda.device_count() < args.world:
        raise SystemExit(f"--world {args.world} needs {args.world} GPUs")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_rank_main, args=(r, args.world, port, args, q), daemon=True)
             for r in range(args.world)]
    for p in procs:
        p.start()
    try:
        kind, payload = q.get(timeout=args.timeout)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    if kind != "ok":
        raise SystemExit(payload)
    write_json(args.output, {"config": {**run_meta(), **vars(args),
                                        **{k: os.environ.get(k)
                                           for k in NVLS_OFF_DEFAULTS}},
                             "results": payload})


if __name__ == "__main__":
    main()
