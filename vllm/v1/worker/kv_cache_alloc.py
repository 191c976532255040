"""Sizing the paged KV cache: how many blocks fit in memory (the layout is in
vllm/v1/attention/kv_layout.py)."""
from __future__ import annotations

from typing import Callable

import torch

from vllm.config import VllmConfig
from vllm.logger import init_logger

logger = init_logger(__name__)


def num_kv_blocks(config: VllmConfig, device: torch.device, bytes_per_block: int,
                  profile: Callable[[], None]) -> int:
    cc = config.cache_config
    if cc.num_gpu_blocks_override is not None:
        return cc.num_gpu_blocks_override
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        profile()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        free, total = torch.cuda.mem_get_info(device)
        used_by_others = total - free - torch.cuda.memory_reserved(device)
        # Headroom for CUDA graphs' pools, the NWOR staging buffer and sampler temporaries.
        budget = total * cc.gpu_memory_utilization - peak - used_by_others - (512 << 20)
    else:
        budget = cc.cpu_kvcache_space_gib * (1 << 30)
    n = int(budget // bytes_per_block)
    max_needed = (config.scheduler_config.max_num_seqs
                  * (config.scheduler_config.max_model_len // cc.block_size + 2))
    n = min(n, max_needed)
    if n <= 0:
        raise ValueError("Not enough memory for the KV cache: raise gpu_memory_utilization or "
                         "lower max_model_len / max_num_batched_tokens")
    logger.info("KV cache: %d blocks of %d tokens (%.2f GiB)", n, cc.block_size,
                n * bytes_per_block / (1 << 30))
    return n
