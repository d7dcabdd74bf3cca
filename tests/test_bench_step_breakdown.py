"""bench/step_breakdown.py on the CPU (tiny model, torch reference path): the chunk's batch is what its shape
says, the eager step, the piecewise step (pieces uncaptured) and the attention alone are timed per chunk and
context, and the report renders (the GPU run, with the graph replay and the profile's prices, is the lead's)."""

from __future__ import annotations

import argparse

import pytest

from tests.bench_helpers import load_bench

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bench():
    return load_bench("step_breakdown")


def test_the_batch_holds_one_chunk_at_its_context_and_the_decodes(bench):
    batch, reqs = bench.build_batch(chunk=48, context=100, decodes=3, decode_ctx=40, block=16)
    (ch,) = batch.prefill
    assert (ch.tokens, ch.context_before) == (48, 100) and not ch.completes  # nothing sampled for the chunk
    assert len(batch.decode) == 3 and list(batch.decode_ctx) == [40, 40, 40]
    ids = [b for r in reqs for b in r.block_ids]
    assert len(ids) == len(set(ids)) and len(reqs[0].block_ids) == -(-148 // 16)  # disjoint, enough for the KV
    s = batch.shape
    assert (s.prefill_tokens, s.prefill_ctx_tokens, s.decode_ctx_tokens, s.sampled_tokens) == (48, 148, 120, 3)
    assert s.prefill_attn_pairs == 48 * 100 + 48 * 49 / 2


def test_smoke_run_times_every_context_and_renders(bench):
    args = argparse.Namespace(contexts="0", chunks="0", decodes=0, decode_ctx=0, reps=4, smoke=True, out="")
    rows, meta = bench.run(args)
    assert [(r["chunk"], r["context"]) for r in rows] == [(5, 0), (5, 64), (32, 0), (32, 64)]
    assert all(r["eager_s"] > 0 and r["attn_s"] > 0 and r["graph_s"] is None for r in rows)
    assert all(r["piecewise_s"] > 0 and r["piecewise_wall_s"] >= r["piecewise_s"] for r in rows)
    # 5 prefill + 2 decode tokens pad to the 16-row bucket, 34 to 64 (buckets 16, 32, 64, then 64 + 4)
    assert [r["piecewise_bucket"] for r in rows] == [16, 16, 48, 48] and meta["piecewise_buckets"][-1] == 68
    text = bench.report(meta, rows)
    assert text.count("\n| ") == 1 + len(rows) and "| 64 | 32 | 2 |" in text and "(48) |" in text
