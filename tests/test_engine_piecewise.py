"""Piecewise steps (engine/piecewise.py) on the CPU: the pieces run uncaptured over padded token rows, compared with
the eager forward; which steps take the piecewise path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from servesim.engine.engine import EngineConfig, build_engine
from servesim.engine.piecewise import piece_buckets
from servesim.engine.replay import replay
from servesim.engine.runner import ModelRunner
from servesim.hwmodels.ops import BatchShape
from servesim.sim.config import make_scenario
from servesim.sim.request import Batch, PrefillChunk, Request
from servesim.sim.workload import Workload
from tests.engine_helpers import tiny_config, write_config

LIMITS = dict(max_model_len=256, max_num_batched_tokens=64, max_num_seqs=8)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_config(tiny_config(), tmp_path_factory.mktemp("tiny"))


def engine(model_path, piecewise: bool, blocks=200):
    eng = build_engine(EngineConfig(model=model_path, device="cpu", num_gpu_blocks=blocks, piecewise_graphs=piecewise,
                                    **LIMITS))
    zero_cache(eng)
    return eng


def zero_cache(eng) -> None:
    """The cache is allocated uninitialised: the hand-made decodes of ``mixed_batch`` read keys no step wrote."""
    for t in (*eng.runner.cache.k, *eng.runner.cache.v):
        t.zero_()


def mixed_batch() -> Batch:
    """A 5-token chunk completing its prompt, a 9-token chunk that does not, and two decodes: 16 tokens."""
    reqs = [Request(i, 0.0, p, 10) for i, p in enumerate((5, 30, 40, 21))]
    for i, r in enumerate(reqs):
        r.block_ids = list(range(i * 4, i * 4 + 3))
    chunks = [PrefillChunk(reqs[0], 5, 0), PrefillChunk(reqs[1], 9, 0)]
    ctx = np.array([40, 21])
    return Batch(chunks, reqs[2:], ctx, 1, BatchShape(prefill_seqs=2, prefill_tokens=14, decode_seqs=2,
                                                      decode_query_tokens=2, decode_ctx_tokens=61, sampled_tokens=3))


def test_padding_rows_write_no_kv_and_are_not_sampled(model_path):
    """7 real tokens padded to 16: the padding rows get slot -1, write no KV anywhere, and emit no token."""
    eng = engine(model_path, True)
    runner, cache = eng.runner, eng.runner.cache
    full = mixed_batch()
    batch = Batch(full.prefill[:1], full.decode, full.decode_ctx, 1,
                  BatchShape(prefill_seqs=1, prefill_tokens=5, decode_seqs=2, decode_query_tokens=2,
                             decode_ctx_tokens=61, sampled_tokens=3))
    plan = runner._plan(batch, runner._swap_plan(batch))
    assert plan.piecewise == 16 and len(plan.slots) == 7
    for t in (*cache.k, *cache.v):
        t.fill_(7.0)
    reqs = [batch.prefill[0].request, *batch.decode]
    before = {r.request_id: len(runner._ids(r)) for r in reqs}
    runner.run(batch)
    assert runner.stats.piecewise and not runner.stats.graph
    assert (runner.pieces.slots[7:16] == -1).all() and (runner.pieces.ids[7:16] == 0).all()
    for t in (*cache.k, *cache.v):
        written = (t != 7.0).flatten(2).any(-1).flatten().nonzero().flatten().numpy()
        assert np.array_equal(written, np.sort(plan.slots))  # the real rows' slots and none else
    assert all(len(runner.tokens[r.request_id]) == before[r.request_id] + 1 for r in reqs)
    assert runner.logits(batch, piecewise=True).shape == (3, eng.model.cfg.vocab_size)


def test_piecewise_logits_equal_the_eager_step(model_path):
    """The same mixed step through the uncaptured pieces (padded to 16 rows) and the eager forward: equal within
    float32 rounding, not bit for bit (the CPU's GEMM rounds a row differently in a GEMM of more rows: 1.8e-7 of
    logits here), the same greedy tokens."""
    eng = engine(model_path, True)
    batch = mixed_batch()
    eager = eng.runner.logits(batch).clone()
    piece = eng.runner.logits(batch, piecewise=True).clone()
    assert eager.shape == piece.shape == (3, eng.model.cfg.vocab_size)
    torch.testing.assert_close(piece, eager, rtol=1e-5, atol=1e-5)
    assert torch.equal(piece.argmax(-1), eager.argmax(-1))


def _replay(model_path, piecewise: bool, preemption: str, blocks: int):
    s = make_scenario({"model": model_path, "num_gpu_blocks": blocks, "preemption": preemption,
                       "swap_space_gib": 0.001, **LIMITS})
    eng = engine(model_path, piecewise, blocks)
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"arrival_s": np.sort(rng.uniform(0, 0.001, 10)), "input_tokens": rng.integers(5, 60, 10),
                       "output_tokens": rng.integers(5, 20, 10)})
    kept = {}
    release = eng.runner.release
    eng.runner.release = lambda r: (kept.__setitem__(r.request_id, list(eng.runner.tokens[r.request_id])),
                                    release(r))
    res = replay(s, eng, Workload(name="t", requests=df, source="test"))
    return res, kept


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_piecewise_replay_emits_the_eager_tokens(model_path, preemption):
    """A short replay with mixed steps and preemptions: every token as the eager replay's; every step with a
    prefill chunk piecewise, pure decodes not."""
    pw, t_pw = _replay(model_path, True, preemption, blocks=10)
    eager, t_eager = _replay(model_path, False, preemption, blocks=10)
    assert t_pw == t_eager and len(t_pw) == 10
    it = pw.iterations
    assert it.preempted.sum() > 0
    with_prefill = it.prefill_tokens > 0
    assert with_prefill.any() and (it.decode_seqs[with_prefill] > 0).any()  # mixed steps among them
    assert it.piecewise[with_prefill].all() and not it.piecewise[~with_prefill].any()
    assert not eager.iterations.piecewise.any()


def test_which_steps_run_piecewise(model_path):
    """Flag off: no pieces at all; a step past the largest bucket, at TP > 1 or on a speculating runner: eager."""
    assert piece_buckets(72) == (16, 32, 48, 64, 72)
    off = engine(model_path, False)
    assert off.runner.pieces is None
    assert off.runner._plan(mixed_batch(), off.runner._swap_plan(mixed_batch())).piecewise is None
    on = engine(model_path, True)
    assert on.runner.pieces.buckets[-1] == LIMITS["max_num_batched_tokens"] + LIMITS["max_num_seqs"]
    big = mixed_batch()
    big.shape = BatchShape(prefill_seqs=2, prefill_tokens=80, decode_seqs=2, decode_query_tokens=2)
    assert on.runner._piece_key(big) is None
    assert on.runner._piece_key(mixed_batch()) == 16
    eng = engine(model_path, True)
    eng.model.comm = object()  # a tensor-parallel rank's model: no pieces
    assert ModelRunner(eng.model, eng.runner.cache, 256, cuda_graphs=False, max_graph_batch=8,
                       piecewise_tokens=72).pieces is None
    on.runner.spec = object()  # a speculating runner keeps the eager path
    assert on.runner._piece_key(mixed_batch()) is None


def test_engine_and_cost_model_share_the_buckets(model_path):
    """One bucket rule (hwmodels/buckets.py): at every token count to past the largest bucket the engine's bucket is
    the cost model's, and a step the engine runs piecewise (a chunk beside two decodes, or alone) is one the cost
    model built from the same scenario prices so, and no other."""
    from servesim.hwmodels.calibrated import CalibratedCostModel
    from servesim.hwmodels.gpus import get_gpu
    from servesim.hwmodels.models import get_model
    from servesim.hwmodels.placement import Placement
    from servesim.sim.deployment import piecewise_buckets, plan_replica
    from tests.profile_helpers import synthetic_profile

    s = make_scenario({"model": model_path, "piecewise_graphs": True, **LIMITS})
    rule = piecewise_buckets(s, plan_replica(s))[0]
    on = engine(model_path, True)
    assert on.runner.pieces.buckets == rule.buckets
    assert on.runner.pieces.sample_rows(rule.largest) == rule.sample_rows(rule.largest) == LIMITS["max_num_seqs"]
    cost = CalibratedCostModel(Placement(get_model("Llama-3.1-8B"), get_gpu("H200")), synthetic_profile(),
                               piecewise=rule)
    base = mixed_batch()
    for n in range(1, rule.largest + 2):
        assert on.runner.pieces.bucket(n) == rule.bucket(n)
        for decodes in (0, 2):
            if n <= decodes:
                continue
            shape = BatchShape(prefill_seqs=1, prefill_tokens=n - decodes, decode_seqs=decodes,
                               decode_query_tokens=decodes, decode_ctx_tokens=61 * decodes // 2, sampled_tokens=1)
            batch = Batch(base.prefill[:1], base.decode[:decodes], base.decode_ctx[:decodes], 1, shape)
            key = on.runner._piece_key(batch)
            assert key == (rule.bucket(n) if cost.step_mode(shape) == "piecewise" else None)
