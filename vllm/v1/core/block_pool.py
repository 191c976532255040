"""KV-cache blocks: a free list (LRU order, so freed blocks keep their cached prefix longest),
reference counts, and a hash -> block map for prefix caching of full blocks."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional


@dataclass
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: Optional[int] = None   # set once the block is full of committed tokens


def hash_block(parent_hash: Optional[int], token_ids: tuple[int, ...]) -> int:
    """Hash chain: a block's identity is its tokens plus everything before it."""
    return hash((parent_hash, token_ids))


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool):
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}   # block hash -> block id

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1.0 - len(self.free) / max(self.num_blocks, 1)

    def allocate(self, n: int) -> Optional[list[int]]:
        if n > len(self.free):
            return None
        out = []
        for _ in range(n):
            bid, _ = self.free.popitem(last=False)
            blk = self.blocks[bid]
            if blk.block_hash is not None:   # evict its cached content
                if self.cached.get(blk.block_hash) == bid:
                    del self.cached[blk.block_hash]
                blk.block_hash = None
            blk.ref_cnt = 1
            out.append(bid)
        return out

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference on cached blocks found by a prefix lookup."""
        for bid in block_ids:
            blk = self.blocks[bid]
            if blk.ref_cnt == 0:
                self.free.pop(bid, None)
            blk.ref_cnt += 1

    def release(self, block_ids: list[int]) -> None:
        # Reverse order: a request's tail blocks are evicted before its prefix blocks.
        for bid in reversed(block_ids):
            blk = self.blocks[bid]
            blk.ref_cnt -= 1
            if blk.ref_cnt < 0:
                raise RuntimeError(f"block {bid} released more often than taken")
            if blk.ref_cnt == 0:
                self.free[bid] = None

    def lookup(self, block_hash: int) -> Optional[int]:
        return self.cached.get(block_hash) if self.enable_caching else None

    def cache(self, block_id: int, block_hash: int) -> None:
        if not self.enable_caching:
            return
        blk = self.blocks[block_id]
        if blk.block_hash is None and block_hash not in self.cached:
            blk.block_hash = block_hash
            self.cached[block_hash] = block_id
