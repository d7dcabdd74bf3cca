"""Paged KV-cache block manager: allocate, grow, free, prefix caching, CPU swap space.

Blocks hold ``block_size`` tokens of KV for every layer. A request owns ``request.block_ids``
(the block table the engine hands to the attention kernels). With prefix caching, a full prompt
block gets a content hash chained over the whole prefix; a later request whose prefix hashes
match reuses those blocks (reference counted) and skips computing them. Cached blocks nobody
references stay resident and are evicted least-recently-freed first when the pool runs dry.

Pure Python; the simulator and the engine share it, so block tables are real block ids.
"""

from __future__ import annotations

from collections import OrderedDict

from servesim.sim.request import Request


def prefix_block_hashes(req: Request, block_size: int) -> tuple[int, ...]:
    """Chained hashes of the request's full prompt blocks that ``hash_ids`` describe.

    KV block ``j`` covers tokens ``[j*B, (j+1)*B)``; it lies inside hash block
    ``j*B // hash_block_tokens``. Chaining over the previous hash makes equal hashes mean equal
    prefixes, whatever the trace's own ids promise. The last prompt token is never served from the
    cache (its logits must be computed), so at most ``(prompt - 1) // B`` blocks are hashable.
    """
    if not req.hash_ids or req.hash_block_tokens <= 0:
        return ()
    covered = min(req.prompt_tokens - 1, len(req.hash_ids) * req.hash_block_tokens)
    hashes, h = [], 0
    for j in range(covered // block_size):
        start = j * block_size
        h = hash((h, req.hash_ids[start // req.hash_block_tokens], start % req.hash_block_tokens))
        hashes.append(h)
    return tuple(hashes)


class KVBlockManager:
    """Fixed pool of GPU KV blocks (and an optional count of CPU swap blocks)."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        *,
        watermark: float = 0.01,
        prefix_caching: bool = False,
        swap_blocks: int = 0,
    ) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.watermark_blocks = int(watermark * num_blocks)
        self.swap_capacity = swap_blocks
        self.swap_free = swap_blocks
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # stack: block 0 comes out first
        self._ref = [0] * num_blocks
        self._hash_of: dict[int, int] = {}  # block id -> content hash (cached blocks)
        self._block_of: dict[int, int] = {}  # content hash -> block id
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced, LRU first
        self._hashes: dict[int, tuple[int, ...]] = {}  # request id -> prefix block hashes
        self.hit_tokens = 0
        self.query_tokens = 0

    # -- capacity ---------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that an allocation can take now (empty ones and evictable cached ones)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def can_allocate(self, blocks: int, *, watermark: bool = False) -> bool:
        reserve = self.watermark_blocks if watermark else 0
        return self.num_free - blocks >= reserve

    # -- prefix cache -----------------------------------------------------------------------
    def _request_hashes(self, req: Request) -> tuple[int, ...]:
        hashes = self._hashes.get(req.request_id)
        if hashes is None:
            hashes = prefix_block_hashes(req, self.block_size) if self.prefix_caching else ()
            self._hashes[req.request_id] = hashes
        return hashes

    def cached_prefix_blocks(self, req: Request) -> list[int]:
        """Block ids of the longest cached prefix of ``req``'s prompt (nothing is taken yet)."""
        hits = []
        for h in self._request_hashes(req):
            block = self._block_of.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def admission_blocks(self, req: Request, target_tokens: int) -> tuple[int, list[int]]:
        """New blocks needed to hold ``target_tokens`` for a request with no blocks, and the hits.

        Hits on evictable blocks leave the free pool when taken, so they count as needed too.
        """
        hits = self.cached_prefix_blocks(req) if not req.block_ids else []
        evicted_hits = sum(1 for b in hits if b in self._evictable)
        new = max(0, self.blocks_for(target_tokens) - len(hits) - len(req.block_ids))
        return new + evicted_hits, hits

    def allocate(self, req: Request, target_tokens: int, hits: list[int] | None = None) -> None:
        """Give ``req`` blocks for ``target_tokens`` KV tokens, first taking the prefix ``hits``.

        Taking hits advances ``req.num_computed`` past the cached tokens.
        """
        if not req.block_ids:
            self.query_tokens += req.prompt_tokens
            self.hit_tokens += len(hits or ()) * self.block_size
        if hits:
            for b in hits:
                if self._ref[b] == 0:
                    self._evictable.pop(b, None)
                self._ref[b] += 1
            req.block_ids.extend(hits)
            cached = len(hits) * self.block_size
            req.num_computed = max(req.num_computed, cached)
            req.cached_tokens = max(req.cached_tokens, cached)
        self.grow(req, self.blocks_for(target_tokens) - len(req.block_ids))

    def grow(self, req: Request, blocks: int) -> None:
        """Append ``blocks`` fresh blocks to ``req`` (the caller checked that they exist)."""
        if blocks <= 0:
            return
        ids, free = req.block_ids, self._free
        if len(free) >= blocks:  # the common case, in C: no eviction needed
            taken = free[-blocks:]
            del free[-blocks:]
            taken.reverse()
            ids.extend(taken)
            if self.prefix_caching:
                ref = self._ref
                for b in taken:
                    ref[b] = 1
            return
        for _ in range(blocks):
            if self._free:
                b = self._free.pop()
            else:  # evict the least recently freed cached block
                b, _ = self._evictable.popitem(last=False)
                del self._block_of[self._hash_of.pop(b)]
            self._ref[b] = 1
            ids.append(b)

    def grow_many(self, reqs: list[Request], counts: list[int], total: int) -> None:
        """``grow`` for several requests at once (``total`` = ``sum(counts)``, known to fit)."""
        free = self._free
        if len(free) < total or self.prefix_caching:
            for r, k in zip(reqs, counts):
                self.grow(r, k)
            return
        taken = free[-total:]
        del free[-total:]
        taken.reverse()
        pos = 0
        for r, k in zip(reqs, counts):
            r.block_ids.extend(taken[pos : pos + k])
            pos += k

    def commit(self, req: Request) -> None:
        """Register the hashes of ``req``'s prompt blocks that are now fully computed."""
        if not self.prefix_caching:
            return
        hashes = self._request_hashes(req)
        full = min(len(hashes), req.num_computed // self.block_size, len(req.block_ids))
        for j in range(full):
            b, h = req.block_ids[j], hashes[j]
            if b not in self._hash_of and h not in self._block_of:
                self._hash_of[b] = h
                self._block_of[h] = b

    def free(self, req: Request) -> None:
        """Release ``req``'s blocks; cached ones stay resident (evictable), tail blocks go first."""
        if not self.prefix_caching:  # nothing is shared: every block goes straight back
            req.block_ids.reverse()
            self._free.extend(req.block_ids)
            req.block_ids.clear()
            return
        for b in reversed(req.block_ids):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                if b in self._hash_of:
                    self._evictable[b] = None
                else:
                    self._free.append(b)
        req.block_ids.clear()

    def forget(self, req: Request) -> None:
        """Drop per-request bookkeeping once the request is done for good."""
        self._hashes.pop(req.request_id, None)

    # -- swap -------------------------------------------------------------------------------
    def swap_out(self, req: Request) -> bool:
        """Move ``req``'s KV to CPU swap space; False (nothing changes) when swap is full."""
        n = len(req.block_ids)
        if n == 0 or n > self.swap_free:
            return False
        self.swap_free -= n
        req.swapped_blocks = n
        self.free(req)
        return True

    def swap_in(self, req: Request) -> bool:
        """Bring a swapped request's KV back into fresh GPU blocks; False when they do not fit."""
        n = req.swapped_blocks
        if not self.can_allocate(n):
            return False
        self.grow(req, n)
        self.swap_free += n
        req.swapped_blocks = 0
        return True
