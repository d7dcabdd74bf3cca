"""Speculative decoding in the engine, on the CPU backend: greedy verification emits exactly the tokens of plain
greedy decoding whatever the draft (a draft equal to the target is always accepted), the controlled mode emits
the acceptance model's mean, and swapping preserves the draft's cache too."""

from __future__ import annotations

import pytest

from servesim.engine.engine import EngineConfig, build_engine
from servesim.engine.replay import replay
from servesim.engine.weights import random_state_dict, save_state_dict
from servesim.sim.config import make_scenario
from servesim.sim.spec import expected_accepted_tokens
from tests.engine_helpers import tiny_config
from tests.test_engine_replay import workload

K = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    target, other = tiny_config(), tiny_config(num_layers=1, intermediate_size=64)
    save_state_dict(random_state_dict(target, seed=11), target, root / "target")
    save_state_dict(random_state_dict(other, seed=12), other, root / "draft")
    return str(root / "target"), str(root / "draft")


def run(models, draft: str | None, blocks=None, mode="greedy", alpha=0.7, n=10, seed=0, span_s=0.01, **sc):
    target, _ = models
    spec = {"spec_k": K, "draft_model": draft + "/config.json", "spec_alpha": alpha} if draft else {}
    s = make_scenario({"model": target + "/config.json", "max_model_len": 256, "max_num_batched_tokens": 64,
                       "max_num_seqs": 8, "num_gpu_blocks": blocks, **spec, **sc})
    eng = build_engine(EngineConfig(model=target + "/config.json", weights=target, device="cpu", max_model_len=256,
                                    max_num_batched_tokens=64, max_num_seqs=8, num_gpu_blocks=blocks, spec_k=K if draft
                                    else 0, draft_model=draft + "/config.json" if draft else None,
                                    draft_weights=draft, spec_mode=mode, spec_alpha=alpha, seed=seed))
    kept = {}
    release = eng.runner.release
    eng.runner.release = lambda r: (kept.__setitem__(r.request_id, list(eng.runner.tokens[r.request_id])), release(r))
    res = replay(s, eng, workload(n=n, span_s=span_s, prompt=(10, 40), output=(8, 30), seed=4))
    return res, {k: v[: len(v)] for k, v in kept.items()}


def outputs(res, tokens):
    """Each request's prompt + output tokens as the scheduler counted them (extra speculative tokens past the
    output length are not emitted)."""
    req = res.result.requests.set_index("request_id")
    return {rid: t[: int(req.input_tokens[rid] + req.output_tokens[rid])] for rid, t in tokens.items()}


@pytest.mark.parametrize("which", ["same", "other"])
def test_greedy_speculation_emits_the_tokens_of_greedy_decoding(models, which):
    plain, t_plain = run(models, None)
    spec, t_spec = run(models, models[0] if which == "same" else models[1])
    assert (spec.result.requests.generated_tokens == spec.result.requests.output_tokens).all()
    assert outputs(spec, t_spec) == outputs(plain, t_plain)
    it = spec.iterations
    dec = it[it.decode_seqs > 0]
    per_step = (dec.sampled_tokens / dec.decode_seqs).median()
    assert per_step == K + 1  # every decoding sequence verifies 1 + k tokens
    steps_spec, steps_plain = len(spec.iterations), len(plain.iterations)
    if which == "same":  # a draft equal to the target is always accepted: about k + 1 tokens per step
        assert steps_spec < 0.5 * steps_plain
    assert spec.result.meta["engine"]["speculation"]["mode"] == "greedy"


def test_controlled_mode_emits_the_acceptance_models_mean(models):
    res, _ = run(models, models[1], mode="controlled", alpha=0.6, n=16)
    req = res.result.requests
    assert (req.generated_tokens == req.output_tokens).all()
    it = res.iterations
    dec = it[(it.decode_seqs > 0) & (it.prefill_tokens == 0)]
    # tokens emitted by decode steps = generated tokens minus the first token of each request (from its prefill)
    emitted = req.generated_tokens.sum() - len(req)
    steps = dec.decode_seqs.sum() + (it[(it.decode_seqs > 0) & (it.prefill_tokens > 0)].decode_seqs.sum())
    mean = emitted / steps
    want = expected_accepted_tokens(0.6, K)
    assert abs(mean / want - 1) < 0.15  # a short run; the last steps are clipped at each request's output length
    assert "controlled" in res.result.meta["engine"]["speculation"]["mode"]


@pytest.mark.parametrize("preemption", ["swap", "recompute"])
def test_preempted_speculation_keeps_its_tokens(models, preemption):
    plain, t_plain = run(models, None)
    tight, t_tight = run(models, models[1], blocks=10, preemption=preemption, swap_space_gib=0.001)
    assert tight.result.requests.num_preemptions.sum() > 0
    assert outputs(tight, t_tight) == outputs(plain, t_plain)


def test_controlled_acceptance_same_seed_same_bytes(models):
    """Every request arrives at 0, so no step waits on the clock and the seed alone decides what is accepted: the
    same seed gives the same steps and tokens, byte for byte; another seed other ones."""
    def steps(seed):
        res, tokens = run(models, models[1], mode="controlled", alpha=0.6, n=6, seed=seed, span_s=0.0)
        it = res.iterations
        counts = it[["prefill_tokens", "decode_seqs", "sampled_tokens"]].to_numpy(dtype="int64").tobytes()
        return counts, repr(sorted(outputs(res, tokens).items())).encode()

    a = steps(5)
    assert a == steps(5)
    assert a[0] != steps(6)[0]
