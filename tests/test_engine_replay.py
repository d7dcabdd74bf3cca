"""Trace replay on the CPU backend: the simulator's scheduler drives a tiny model end to end."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from servesim.engine.engine import EngineConfig, build_engine
from servesim.engine.replay import ITERATION_COLUMNS, replay
from servesim.sim.config import make_scenario
from servesim.sim.workload import Workload
from tests.engine_helpers import tiny_config, write_config

pytest.importorskip("torch")


def workload(n=12, seed=0, span_s=0.2, prompt=(5, 60), output=(1, 12), hashes=False):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"arrival_s": np.sort(rng.uniform(0, span_s, n)),
                       "input_tokens": rng.integers(*prompt, n), "output_tokens": rng.integers(*output, n)})
    if hashes:
        df["hash_ids"] = [tuple([7, 8][: max(1, p // 32)]) + (100 + i,) for i, p in enumerate(df.input_tokens)]
    return Workload(name="test", requests=df, source="test", block_tokens=32 if hashes else None)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_config(tiny_config(), tmp_path_factory.mktemp("tiny"))


def engine_for(model_path, blocks=None, **scenario):
    s = make_scenario({"model": model_path, "max_model_len": 256, "max_num_batched_tokens": 64,
                       "max_num_seqs": 8, "num_gpu_blocks": blocks, **scenario})
    eng = build_engine(EngineConfig(model=model_path, device="cpu", max_model_len=256, max_num_batched_tokens=64,
                                    max_num_seqs=8, num_gpu_blocks=blocks, block_size=s.block_size))
    return s, eng


def check_complete(res, w):
    req = res.result.requests
    assert len(req) == len(w) and (req.rejected_reason == "").all()
    assert (req.generated_tokens == req.output_tokens).all()
    assert (req.first_token_s >= req.arrival_s).all() and (req.finish_s >= req.first_token_s).all()
    it = res.iterations
    assert list(it.columns) == list(ITERATION_COLUMNS)
    assert (it.end_s.diff().dropna() > 0).all()  # time never goes backwards
    assert (it.step_s > 0).all() and (it.gpu_s > 0).all() and (it.step_s >= it.gpu_s).all()
    assert it.sampled_tokens.sum() == req.output_tokens.sum() + it.preempted.sum() * 0  # one token per sampled row
    assert it.kv_blocks_used.iloc[-1] == 0 or res.result.scenario.prefix_caching


@pytest.mark.parametrize("batching", ["chunked", "continuous", "static"])
def test_replay_completes_every_request(model_path, batching):
    s, eng = engine_for(model_path, batching=batching, max_num_batched_tokens=256 if batching != "chunked" else 64)
    w = workload()
    res = replay(s, eng, w)
    check_complete(res, w)
    summary = res.result.summary
    assert summary["completed"] == len(w) and summary["mean_ttft_ms"] > 0
    assert res.result.meta["profile_id"] == "engine" and res.result.meta["engine"]["backend"] == "torch"


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("policy", ["fcfs", "sjf"])
def test_preemption_storm_loses_no_request(model_path, preemption, policy):
    """A pool of 8 blocks (128 tokens) for 12 requests of up to 100 tokens at once, and one longer than the
    context: preemptions, the long one rejected with its reason, none lost."""
    from tests.test_storm import lost

    s, eng = engine_for(model_path, blocks=8, preemption=preemption, policy=policy, swap_space_gib=0.001)
    w = workload(span_s=0.001, prompt=(20, 60), output=(20, 40))
    long = pd.DataFrame({"arrival_s": [0.0005], "input_tokens": [250], "output_tokens": [20]})
    both = Workload(name="storm", requests=pd.concat([w.requests, long]).sort_values("arrival_s", kind="stable")
                    .reset_index(drop=True), source="test")
    res = replay(s, eng, both)
    req = res.result.requests
    assert len(req) == len(both) and lost(req, len(both)) == 0
    rejected = req[req.rejected_reason != ""]
    assert len(rejected) == 1 and "max_model_len 256" in rejected.rejected_reason.iloc[0]
    served = req[req.rejected_reason == ""]
    assert (served.generated_tokens == served.output_tokens).all() and (served.finish_s >= served.first_token_s).all()
    assert res.iterations.sampled_tokens.sum() == served.output_tokens.sum()  # one token per sampled row
    assert res.iterations.kv_blocks_used.iloc[-1] == 0
    assert req.num_preemptions.sum() > 0
    if preemption == "swap":
        assert res.iterations.swap_out_blocks.sum() > 0 and res.iterations.swap_in_blocks.sum() > 0


def test_swap_and_recompute_give_the_tokens_of_an_uncontended_run(model_path):
    """KV restored from swap (or recomputed) is the KV that was evicted: greedy tokens match a roomy run."""
    w = workload(span_s=0.001, seed=3, prompt=(20, 60), output=(20, 40))
    runs = {}
    for name, blocks, mode in (("roomy", 200, "recompute"), ("swap", 8, "swap"), ("recompute", 8, "recompute")):
        s, eng = engine_for(model_path, blocks=blocks, preemption=mode, swap_space_gib=0.001)
        kept = {}
        release = eng.runner.release
        eng.runner.release = lambda r, release=release, kept=kept, tokens=eng.runner.tokens: (
            kept.__setitem__(r.request_id, list(tokens[r.request_id])), release(r))
        replay(s, eng, w)
        runs[name] = kept
    assert runs["swap"] == runs["roomy"] and runs["recompute"] == runs["roomy"]


def test_prefix_caching_hits_and_matches(model_path):
    w = workload(n=10, span_s=0.5, prompt=(40, 90), hashes=True)
    s, eng = engine_for(model_path, prefix_caching=True)
    res = replay(s, eng, w)
    check_complete(res, w)
    assert res.result.requests.cached_tokens.sum() > 0


def test_request_longer_than_the_context_is_rejected_with_reason(model_path):
    w = workload(n=4)
    t = w.table.copy()
    t["input_tokens"][2] = 300
    w = replace(w, table=t)
    s, eng = engine_for(model_path)
    req = replay(s, eng, w).result.requests
    assert req.rejected_reason.iloc[2] != "" and (req.rejected_reason.drop(2) == "").all()


def test_warm_up_leaves_nothing_behind_but_compiled_kernels(model_path):
    """A warm-up replay (first requests, short outputs, faster arrivals) before the measured one: the measured
    run then emits the tokens of a run on a fresh engine, and a CPU engine skips it unless forced."""
    from servesim.engine.replay import warm_up

    w = workload(n=10, span_s=0.05, seed=5, prompt=(20, 60), output=(5, 20), hashes=True)
    runs = {}
    for name in ("fresh", "warmed"):
        s, eng = engine_for(model_path, prefix_caching=True)
        if name == "warmed":
            assert warm_up(s, eng, w) == 0.0  # the CPU backend compiles nothing
            assert warm_up(s, eng, w, n=6, force=True) > 0.0
        kept = {}
        release = eng.runner.release
        eng.runner.release = lambda r, release=release, kept=kept, tokens=eng.runner.tokens: (
            kept.__setitem__(r.request_id, list(tokens[r.request_id])), release(r))
        res = replay(s, eng, w)
        check_complete(res, w)
        runs[name] = (kept, int(res.result.requests.cached_tokens.sum()))
    assert runs["warmed"] == runs["fresh"]  # same tokens, and no prefix cached by the warm-up
