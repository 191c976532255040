"""Tensor parallelism over processes: rank 0 is this process (the driver), ranks 1..N-1 are
spawned workers. Every runner call is mirrored on all ranks with identical inputs; the model
layers all-reduce / all-gather through torch.distributed (NCCL on GPUs, gloo on the CPU), and
sampling is replicated (identical logits and RNG state on every rank) so every rank's NWOR
commit sees the same acceptances. Only the driver's results are used."""
from __future__ import annotations

import multiprocessing as mp
import socket
import traceback
from dataclasses import replace

import torch

from vllm import envs
from vllm.config import VllmConfig
from vllm.distributed.parallel_state import destroy_tensor_parallel, init_tensor_parallel
from vllm.logger import init_logger

logger = init_logger(__name__)

# NVLink multicast (NVLS) off unless the user says otherwise: on shared multi-GPU hosts a program
# that uses it can take the host's GPUs out of service. Set before any rank starts, so the
# spawned workers inherit it.
NVLS_OFF_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                     "NVSHMEM_DISABLE_NVLS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_device(config: VllmConfig, rank: int) -> torch.device:
    dev = torch.device(config.device)
    return torch.device("cuda", rank) if dev.type == "cuda" else dev


def _make_runner(config: VllmConfig, rank: int, world: int, init_method: str):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    device = _rank_device(config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_tensor_parallel(rank, world, init_method, "nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(config.model_config.seed)
    return GPUModelRunner(replace(config, device=str(device)), device)


def _worker_main(config: VllmConfig, rank: int, world: int, init_method: str, conn) -> None:
    try:
        runner = _make_runner(config, rank, world, init_method)
        conn.send(("ready", None))
        while True:
            method, args = conn.recv()
            if method == "shutdown":
                break
            result = getattr(runner, method)(*args)
            if method == "profile_num_blocks":
                conn.send(("ok", result))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        destroy_tensor_parallel()
        conn.close()


class MultiprocTPExecutor:
    def __init__(self, config: VllmConfig):
        world = config.parallel_config.tensor_parallel_size
        on_cuda = torch.device(config.device).type == "cuda"
        if on_cuda and torch.cuda.device_count() < world:
            raise ValueError(f"tensor_parallel_size={world} but only "
                             f"{torch.cuda.device_count()} GPUs are visible")
        if on_cuda:
            for name, value in NVLS_OFF_DEFAULTS.items():
                envs.set_default(name, value)
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for rank in range(1, world):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(config, rank, world, init_method, child),
                            daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        self.driver_runner = _make_runner(config, 0, world, init_method)
        for c in self.conns:
            self._expect(c, "ready")
        logger.info("Tensor parallel: %d ranks", world)

    def _expect(self, conn, what: str):
        kind, payload = conn.recv()
        if kind == "error":
            raise RuntimeError(f"tensor-parallel worker failed:\n{payload}")
        return payload

    def _call(self, method: str, *args):
        for c in self.conns:
            c.send((method, args))
        return getattr(self.driver_runner, method)(*args)

    def determine_num_blocks(self) -> int:
        n = self._call("profile_num_blocks")
        return min([n] + [self._expect(c, "ok") for c in self.conns])

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self._call("initialize_kv_cache", num_blocks)

    def execute_model(self, so):
        return self._call("execute_model", so)

    def propose(self, reqs):
        return self._call("propose", reqs)

    def spec_decode_counters(self):
        # Every rank makes the same decisions; the driver's counters speak for all of them.
        return self.driver_runner.spec_decode_counters()

    def shutdown(self) -> None:
        for c in self.conns:
            try:
                c.send(("shutdown", ()))
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        self.conns, self.procs = [], []
        destroy_tensor_parallel()
