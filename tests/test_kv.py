"""The paged KV block manager: prefix hashes, shared-prefix hits, reference counts, LRU eviction, swap."""

from __future__ import annotations

import pytest

from servesim.sim.kv import KVBlockManager, prefix_block_hashes
from servesim.sim.request import Request

B = 4  # tokens per KV block in these tests; one trace hash id per block


def req(i, ids, prompt=None):
    """A request whose prompt is covered by ``ids`` (one id per block of B tokens) plus one more token."""
    return Request(i, 0.0, prompt if prompt is not None else len(ids) * B + 1, 4, hash_ids=tuple(ids),
                   hash_block_tokens=B)


def run_prefill(kv, r, hits=None):
    """Admit ``r`` with its whole prompt computed, as a completed prefill does."""
    new, found = kv.admission_blocks(r, r.prompt_tokens)
    kv.allocate(r, r.prompt_tokens, found if hits is None else hits)
    r.num_computed = r.prompt_tokens
    kv.commit(r)
    return new, found


def test_hashes_chain_over_the_prefix():
    a, b, c = req(0, [1, 2, 3]), req(1, [1, 2, 9]), req(2, [7, 2, 3])
    ha, hb, hc = (prefix_block_hashes(r, B) for r in (a, b, c))
    assert len(ha) == 3 and ha[:2] == hb[:2] and ha[2] != hb[2]
    assert not set(ha) & set(hc)  # a different first block changes every later hash
    # Several KV blocks per hash id: 16-token hash blocks over 4-token KV blocks.
    d = Request(3, 0.0, 33, 1, hash_ids=(5, 6, 7), hash_block_tokens=16)
    assert len(prefix_block_hashes(d, B)) == 8  # (33 - 1) // 4: the last prompt token is never cached


def test_last_prompt_token_is_never_hashed():
    exact = req(0, [1, 2, 3], prompt=3 * B)  # prompt ends on a block boundary
    assert len(prefix_block_hashes(exact, B)) == 2


def test_shared_prefix_hits_and_reference_counts():
    kv = KVBlockManager(16, B, prefix_caching=True)
    a = req(0, [1, 2, 3])
    new, hits = run_prefill(kv, a)
    assert hits == [] and new == 4 and kv.num_free == 12
    b = req(1, [1, 2, 8, 9])  # shares two blocks with a
    new, hits = run_prefill(kv, b)
    assert hits == a.block_ids[:2] and new == 3  # 5 blocks, 2 of them shared
    assert b.block_ids[:2] == a.block_ids[:2] and b.cached_tokens == 2 * B
    assert [kv._ref[x] for x in a.block_ids] == [2, 2, 1, 1]
    assert kv.num_free == 16 - 4 - 3
    kv.free(a)  # b still holds the shared blocks: only a's own two become free (cached)
    assert [kv._ref[x] for x in b.block_ids[:2]] == [1, 1] and kv.num_free == 16 - 5
    c = req(2, [1, 2, 3])  # a's third block is cached and free: all three hit
    new, hits = run_prefill(kv, c)
    assert len(hits) == 3 and new == 1 + 1  # the evictable hit leaves the free pool, plus one fresh block
    assert kv._ref[hits[0]] == 2 and kv._ref[hits[2]] == 1
    assert kv.hit_tokens == (2 + 3) * B and kv.query_tokens == a.prompt_tokens + b.prompt_tokens + c.prompt_tokens
    kv.free(b)
    kv.free(c)
    assert kv.num_free == kv.num_blocks and kv.num_used == 0


def test_admission_counts_evictable_hits_as_needed():
    kv = KVBlockManager(8, B, prefix_caching=True)
    a = req(0, [1, 2, 3])
    run_prefill(kv, a)
    kv.free(a)
    assert kv.num_free == 8  # cached blocks stay resident but count as free
    new, hits = kv.admission_blocks(req(1, [1, 2, 3]), 3 * B + 1)
    assert len(hits) == 3 and new == 3 + 1


def test_lru_evicts_the_least_recently_freed_cached_blocks_tail_first():
    kv = KVBlockManager(8, B, prefix_caching=True)
    a, b = req(0, [1, 2, 3]), req(1, [5, 6, 7])  # 4 blocks each: the pool is full
    run_prefill(kv, a)
    run_prefill(kv, b)
    assert kv.num_free == 0
    kv.free(a)  # freed first: a's cached blocks are the least recently used
    kv.free(b)
    assert len(kv._evictable) == 6 and len(kv._free) == 2  # the last-token blocks were never cached
    # A newcomer with no shared prefix needs 4 blocks: 2 empty ones, then a's tail (block 3) and block 2.
    d = req(2, [40, 41, 42])
    new, hits = run_prefill(kv, d)
    assert hits == [] and new == 4
    assert [len(kv.cached_prefix_blocks(r)) for r in (req(3, [1, 2, 3]), req(4, [5, 6, 7]))] == [1, 3]
    # Running dry again evicts a's last cached block before any of b's or d's.
    kv.free(d)
    run_prefill(kv, req(5, [60]))  # 2 blocks: d's empty last block, then a's block 0
    assert [len(kv.cached_prefix_blocks(r)) for r in (req(6, [1, 2, 3]), req(7, [5, 6, 7]), req(8, [40, 41, 42]))] \
        == [0, 3, 3]
    run_prefill(kv, req(9, [70, 71, 72, 73, 74]))  # 6 blocks: evicts everything evictable
    assert kv.cached_prefix_blocks(req(10, [5, 6, 7])) == [] and kv.num_free == 0


def test_commit_registers_only_fully_computed_blocks():
    kv = KVBlockManager(8, B, prefix_caching=True)
    a = req(0, [1, 2, 3])
    kv.allocate(a, a.prompt_tokens, [])
    a.num_computed = 2 * B + 1  # a chunk boundary inside block 2
    kv.commit(a)
    assert len(kv.cached_prefix_blocks(req(1, [1, 2, 3]))) == 2


def test_without_prefix_caching_nothing_is_shared():
    kv = KVBlockManager(8, B)
    a, b = req(0, [1, 2]), req(1, [1, 2])
    run_prefill(kv, a)
    new, hits = run_prefill(kv, b)
    assert hits == [] and new == 3 and not set(a.block_ids) & set(b.block_ids)
    kv.free(a)
    kv.free(b)
    assert kv.num_free == 8


def test_swap_out_and_in_conserve_blocks():
    kv = KVBlockManager(8, B, swap_blocks=5)
    a = req(0, [1, 2])
    kv.allocate(a, 3 * B)
    assert kv.swap_out(a)
    assert a.block_ids == [] and a.swapped_blocks == 3 and kv.swap_free == 2 and kv.num_free == 8
    b = req(1, [1])
    kv.allocate(b, 6 * B)  # leaves 2 GPU blocks: a cannot come back yet
    assert not kv.swap_in(a) and a.swapped_blocks == 3 and kv.swap_free == 2
    kv.free(b)
    assert kv.swap_in(a)
    assert len(a.block_ids) == 3 and a.swapped_blocks == 0 and kv.swap_free == 5 and kv.num_free == 5


@pytest.mark.parametrize("swap_blocks", [0, 2])
def test_swap_out_refuses_when_swap_space_is_full(swap_blocks):
    kv = KVBlockManager(8, B, swap_blocks=swap_blocks)
    a = req(0, [1, 2])
    kv.allocate(a, 3 * B)
    held = list(a.block_ids)
    assert not kv.swap_out(a)  # the scheduler then falls back to recompute
    assert a.block_ids == held and a.swapped_blocks == 0 and kv.swap_free == swap_blocks and kv.num_free == 5


def test_swap_out_of_a_sharer_keeps_the_shared_blocks_for_the_other():
    kv = KVBlockManager(16, B, prefix_caching=True, swap_blocks=16)
    a, b = req(0, [1, 2, 3]), req(1, [1, 2, 4])
    run_prefill(kv, a)
    run_prefill(kv, b)
    shared = a.block_ids[:2]
    assert kv.swap_out(b) and b.swapped_blocks == 4
    assert [kv._ref[x] for x in shared] == [1, 1] and a.block_ids[:2] == shared
    assert kv.swap_in(b) and not set(b.block_ids) & set(a.block_ids)  # fresh copies come back
    kv.free(a)
    kv.free(b)
    assert kv.num_free == 16 and kv.swap_free == 16
