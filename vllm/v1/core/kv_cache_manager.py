"""Per-request block tables on top of the block pool: prefix lookup, slot allocation (with
lookahead slots for speculative drafts), caching of full committed blocks, freeing."""
from __future__ import annotations

from vllm.v1.core.block_pool import BlockPool, hash_block
from vllm.v1.request import Request


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, max_model_len: int,
                 enable_caching: bool):
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.pool = BlockPool(num_blocks, enable_caching)
        self.num_cache_hits = 0     # tokens served from the prefix cache
        self.num_cache_queries = 0

    def _cdiv(self, n: int) -> int:
        return (n + self.block_size - 1) // self.block_size

    def get_computed_blocks(self, req: Request) -> int:
        """Attach cached full blocks matching the request's prefix; return tokens covered.
        At least one token is always left to compute (its logits are needed)."""
        if not self.pool.enable_caching or req.block_ids:
            return 0
        bs = self.block_size
        tokens = req.all_token_ids
        max_blocks = (len(tokens) - 1) // bs
        hits: list[int] = []
        parent = None
        hashes = []
        for i in range(max_blocks):
            h = hash_block(parent, tuple(tokens[i * bs:(i + 1) * bs]))
            bid = self.pool.lookup(h)
            if bid is None:
                break
            hits.append(bid)
            hashes.append(h)
            parent = h
        self.num_cache_queries += len(tokens)
        if hits:
            self.pool.touch(hits)
            req.block_ids = hits
            req.block_hashes = hashes
            self.num_cache_hits += len(hits) * bs
        return len(hits) * bs

    def allocate_slots(self, req: Request, num_new_tokens: int, num_lookahead: int = 0) -> bool:
        total = min(req.num_computed_tokens + num_new_tokens + num_lookahead, self.max_model_len)
        need = self._cdiv(total) - len(req.block_ids)
        if need <= 0:
            return True
        new = self.pool.allocate(need)
        if new is None:
            return False
        req.block_ids.extend(new)
        return True

    def cache_committed_blocks(self, req: Request) -> None:
        """Full blocks of committed tokens enter the prefix cache. num_computed_tokens counts
        only verified tokens (rejected drafts were rewound), so rejected K/V never get cached."""
        if not self.pool.enable_caching:
            return
        bs = self.block_size
        n_full = min(req.num_computed_tokens, len(req.all_token_ids)) // bs
        if n_full <= len(req.block_hashes):
            return      # the common decode step: no block filled up
        tokens = req.all_token_ids
        parent = req.block_hashes[-1] if req.block_hashes else None
        for i in range(len(req.block_hashes), min(n_full, len(req.block_ids))):
            h = hash_block(parent, tuple(tokens[i * bs:(i + 1) * bs]))
            self.pool.cache(req.block_ids[i], h)
            req.block_hashes.append(h)
            parent = h

    def free(self, req: Request) -> None:
        self.pool.release(req.block_ids)
        req.block_ids = []
        req.block_hashes = []

    def usage(self) -> float:
        return self.pool.usage()
