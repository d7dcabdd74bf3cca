"""Tensor parallelism on the CPU: two ranks (processes, gloo) of a tiny model compute TP 1's logits, emit its
tokens, and serve a replay (and ``servesim replay --tp 2``) to the same outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from servesim.cli.main import main
from servesim.engine.engine import EngineConfig, build_engine
from servesim.engine.replay import engine_deployment, replay, workload_requests
from servesim.engine.runner import StepPlan, SwapPlan
from servesim.engine.tp import pack, unpack
from servesim.engine.weights import Shard, hf_names, random_state_dict
from servesim.errors import ConfigError
from servesim.sim.config import make_scenario
from servesim.sim.kv import KVBlockManager
from servesim.sim.scheduler import Scheduler
from tests.engine_helpers import tiny_config, write_config
from tests.test_engine_replay import workload

LIMITS = {"max_model_len": 256, "max_num_batched_tokens": 64, "max_num_seqs": 8}


def engine_config(path: str, **over) -> EngineConfig:
    return EngineConfig(model=path, device="cpu", **LIMITS, **over)


VARIANTS = {
    # GQA whose 2 KV heads split over 2 ranks; an odd vocabulary (97 rows: the LM head's last block is padded)
    "llama": tiny_config(),
    # q/k/v bias, one KV head replicated on both ranks, the LM head cut from tied embeddings
    "qwen2-tied-kv1": tiny_config("Qwen2ForCausalLM", num_kv_heads=1, tied_embeddings=True),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    """(config path, TP 1 engine, TP 2 engine); one TP engine per process at a time: pytest finishes one
    variant before it builds the next."""
    path = write_config(VARIANTS[request.param], tmp_path_factory.mktemp(request.param))
    one = build_engine(engine_config(path))
    two = build_engine(engine_config(path, tp=2))
    yield path, one, two
    two.close()


def lockstep(path: str, engines, n: int = 5, blocks: int | None = None, seed: int = 0):
    """One scheduler, each step's batch run on every engine: the logits of every step compared, the tokens
    each request emitted returned per engine."""
    s = make_scenario({"model": path, **LIMITS, "num_gpu_blocks": blocks, "preemption": "swap",
                       "swap_space_gib": 0.001})
    dep = engine_deployment(s, engines[0])
    kv = KVBlockManager(dep.num_blocks, dep.block_size, swap_blocks=dep.swap_blocks)
    sched = Scheduler(dep.scheduler, kv, np.random.default_rng(0))
    reqs = workload_requests(workload(n=n, seed=seed, span_s=0.001, prompt=(16, 48), output=(4, 12)))
    for r in reqs:
        sched.add(r, 0.0)
    tokens = [{} for _ in engines]
    steps = 0
    while sched.has_work:
        batch = sched.schedule(float(steps))
        first, *rest = [e.runner.logits(batch) for e in engines]
        for other in rest:
            torch.testing.assert_close(other, first, rtol=1e-5, atol=2e-6)
        for e in engines:
            e.runner.run(batch)
        steps += 1
        sched.complete(batch, float(steps), None)
        for r in sched.finished:
            for e, kept in zip(engines, tokens, strict=True):
                kept[r.request_id] = list(e.runner.tokens[r.request_id])
                e.runner.release(r)
        sched.finished.clear()
    return reqs, tokens, steps


def test_shards_together_hold_the_tp1_model():
    """Every tensor's slices over the ranks rebuild TP 1's tensor (KV heads replicated when TP exceeds them)."""
    for cfg, tp in ((tiny_config(), 2), (tiny_config(num_kv_heads=1), 2), (tiny_config(num_heads=8), 4)):
        whole = random_state_dict(cfg, 3, torch.float32)
        parts = [random_state_dict(cfg, 3, torch.float32, shard=Shard(cfg, r, tp)) for r in range(tp)]
        for name in hf_names(cfg):
            idx = Shard(cfg, 0, tp).index(name)
            if idx is None:
                assert all(torch.equal(p[name], whole[name]) for p in parts)
                continue
            dim, *_ = idx
            joined = torch.cat([p[name] for p in parts], dim)
            if ("k_proj" in name or "v_proj" in name) and cfg.num_kv_heads < tp:  # rank r: KV head r * kv // tp
                heads = [r * cfg.num_kv_heads // tp for r in range(tp)]
                assert torch.equal(joined, torch.cat([whole[name].narrow(0, h * cfg.head_dim, cfg.head_dim)
                                                      for h in heads])), name
            else:
                assert torch.equal(joined.narrow(dim, 0, whole[name].shape[dim]), whole[name]), name
                assert not joined.narrow(dim, whole[name].shape[dim], joined.shape[dim] - whole[name].shape[dim]).any()


def test_plan_round_trips_the_wire():
    rng = np.random.default_rng(1)
    plan = StepPlan(SwapPlan(out=[(4, [7, 8])], into=[(2, [1, 5, 9])], drop=[11, 12]),
                    ids=rng.integers(0, 97, 7), pos=np.arange(7, dtype=np.int32), slots=rng.integers(0, 99, 7),
                    sample=np.array([3, 5, 6]), n_pre=5, prefill_cu=np.array([0, 2, 5], np.int32),
                    prefill_kvl=np.array([2, 40], np.int32), prefill_table=rng.integers(0, 60, (2, 16), dtype=np.int32),
                    prefill_max_q=3, decode_ctx=np.array([17, 33], np.int32),
                    decode_table=rng.integers(0, 60, (2, 16), dtype=np.int32), decode_q=1, graph=(2, 512, 1))
    header, payload = pack(plan, block_size=16)
    got = unpack(header.tolist(), payload, max_blocks=16)
    width = 3  # the longest context, 40 tokens, needs 3 blocks of 16: only those columns travel
    assert got.swaps == plan.swaps and got.graph == plan.graph
    for f in ("ids", "pos", "slots", "sample", "prefill_cu", "prefill_kvl", "decode_ctx"):
        assert np.array_equal(getattr(got, f), getattr(plan, f)), f
    for f in ("prefill_table", "decode_table"):
        assert np.array_equal(getattr(got, f)[:, :width], getattr(plan, f)[:, :width])
        assert not getattr(got, f)[:, width:].any()
    assert (got.n_pre, got.prefill_max_q, got.decode_q) == (5, 3, 1)


def test_tp2_logits_and_tokens_equal_tp1_through_preemption_and_swaps(variant):
    """Every step of a swap-preempting run (a 5-block pool): TP 2's logits equal TP 1's (fp32), and so do the
    greedy tokens of every request."""
    path, one, two = variant
    reqs, (t1, t2), steps = lockstep(path, [one, two], blocks=5)
    assert sum(r.num_preemptions for r in reqs) > 0 and steps > 10
    assert t1 == t2 and len(t1) == len(reqs)
    if two.model.cfg.architecture == "Qwen2ForCausalLM":
        assert two.model.cfg.num_kv_heads == 1 and two.runner.cache.k[0].shape[2] == 1  # replicated, not split


def test_replay_at_tp2_emits_tp1_tokens(variant):
    path, one, two = variant
    w = workload(n=8, seed=5, output=(1, 8))
    kept = []
    for eng, tp in ((one, 1), (two, 2)):
        s = make_scenario({"model": path, **LIMITS, "tp": tp})
        tokens, release = {}, eng.runner.release
        eng.runner.release = lambda r, release=release, tokens=tokens, t=eng.runner.tokens: (
            tokens.__setitem__(r.request_id, list(t[r.request_id])), release(r))
        try:
            res = replay(s, eng, w)
        finally:
            eng.runner.release = release
        req = res.result.requests
        assert (req.rejected_reason == "").all() and (req.generated_tokens == req.output_tokens).all()
        assert res.result.meta["engine"]["tp"] == tp
        kept.append(tokens)
    assert kept[0] == kept[1] and len(kept[0]) == len(w)


def test_engine_refuses_what_tp_cannot_split(variant):
    path, one, _ = variant
    with pytest.raises(ConfigError, match="TP 3 cannot split .*'s 4 attention heads") as e:
        build_engine(engine_config(path, tp=3))
    assert e.value.field == "tp"
    with pytest.raises(ConfigError, match="speculative decoding runs at TP 1"):
        engine_config(path, tp=2, spec_k=2, draft_model=path)
    with pytest.raises(ConfigError, match="the engine was built for TP 1"):
        engine_deployment(make_scenario({"model": path, **LIMITS, "tp": 2}), one)
    with pytest.raises(ConfigError, match="already runs a tensor-parallel engine"):  # this one's ranks are up
        build_engine(engine_config(path, tp=2))


def cli(*argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


def test_cli_replay_tp2_completes_every_request_like_tp1(tmp_path):
    """``servesim replay --tp 2`` as a user runs it (its own process, which spawns rank 1) against TP 1."""
    path = write_config(VARIANTS["llama"], tmp_path / "model")
    rng = np.random.default_rng(4)
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": np.sort(rng.uniform(0, 0.3, 10)), "input_tokens": rng.integers(8, 80, 10),
                  "output_tokens": rng.integers(2, 12, 10)}).to_csv(trace, index=False)
    args = ["replay", "--device", "cpu", "--model", path, "--gpu", "H100-SXM", "--trace", str(trace),
            "--max-model-len", "256", "--max-num-seqs", "8", "--output-dir"]
    assert cli(*args, str(tmp_path / "tp1")) == 0
    proc = subprocess.run([sys.executable, "-m", "servesim", *args, str(tmp_path / "tp2"), "--tp", "2"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TP 2 (gloo)" in proc.stdout
    runs = {tp: pd.read_parquet(tmp_path / f"tp{tp}" / "requests.parquet") for tp in (1, 2)}
    for tp, req in runs.items():
        assert len(req) == 10 and (req.rejected_reason == "").all()
        assert (req.generated_tokens == req.output_tokens).all()
        assert json.loads((tmp_path / f"tp{tp}" / "run.json").read_text())["engine"]["tp"] == tp
    cols = ["request_id", "input_tokens", "output_tokens", "generated_tokens"]
    pd.testing.assert_frame_equal(runs[1][cols], runs[2][cols])
