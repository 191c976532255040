"""Executors: run the model runner in this process (TP = 1) or in one process per
tensor-parallel rank (the driver is rank 0; workers mirror every call)."""
from __future__ import annotations

import torch

from vllm.config import VllmConfig


class UniProcExecutor:
    def __init__(self, config: VllmConfig):
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
        if config.model_config.seed is not None:
            torch.manual_seed(config.model_config.seed)
        self.driver_runner = GPUModelRunner(config, torch.device(config.device))

    def determine_num_blocks(self) -> int:
        return self.driver_runner.profile_num_blocks()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.driver_runner.initialize_kv_cache(num_blocks)

    # Steps can be launched before the previous one's tokens reach the host.
    supports_async = True

    def execute_model(self, so):
        return self.driver_runner.execute_model(so)

    def execute_model_async(self, so):
        return self.driver_runner.execute_model_async(so)

    def propose(self, reqs):
        return self.driver_runner.propose(reqs)

    @property
    def supports_chain(self) -> bool:
        """Chained speculative steps (spec_decode/chain.py) can run."""
        return self.driver_runner.supports_chain

    @property
    def chain_max_rows(self) -> int:
        """The most requests one chained step may hold."""
        return self.driver_runner.chain.max_rows

    def chain_exit(self, exits):
        return self.driver_runner.chain_exit(exits)

    def calibrate_verify_cost(self, max_tokens: int):
        """{tokens: seconds} of the target forward (adaptive draft length's cost model)."""
        return self.driver_runner.calibrate_verify_cost(max_tokens)

    def spec_decode_counters(self):
        """Live speculative-decoding counters (SpecDecodeCounters), or None when it is off."""
        return self.driver_runner.spec_decode_counters()

    def shutdown(self) -> None:
        pass


def make_executor(config: VllmConfig):
    pc = config.parallel_config
    if pc.distributed_init_method == "env://" and pc.tensor_parallel_size > 1:
        from vllm.v1.engine.tp_remote import rendezvous_env, run_remote_worker
        if rendezvous_env(pc.tensor_parallel_size)[0] != 0:
            run_remote_worker(config)       # does not return
    if pc.tensor_parallel_size > 1:
        from vllm.v1.engine.tp_executor import MultiprocTPExecutor
        return MultiprocTPExecutor(config)
    return UniProcExecutor(config)
