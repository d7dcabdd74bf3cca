"""Speculative decoding in the engine, on the CPU backend: greedy verification emits exactly the tokens of plain
greedy decoding whatever the draft (a draft equal to the target is always accepted), the controlled mode emits
the acceptance model's mean, and swapping preserves the draft's cache too. The fixed-shape steps that CUDA graphs
capture (engine/spec_graph.py), run uncaptured here: their inputs, padding and masking, when a step takes them,
and that they emit the eager path's tokens with the same acceptance."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from servesim.engine import spec_graph
from servesim.engine.engine import EngineConfig, build_engine
from servesim.engine.replay import replay
from servesim.engine.weights import random_state_dict, save_state_dict
from servesim.sim.config import make_scenario
from servesim.sim.spec import expected_accepted_tokens
from tests.engine_helpers import tiny_config
from tests.test_engine_replay import workload

torch = pytest.importorskip("torch")

K = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    target, other = tiny_config(), tiny_config(num_layers=1, intermediate_size=64)
    save_state_dict(random_state_dict(target, seed=11), target, root / "target")
    save_state_dict(random_state_dict(other, seed=12), other, root / "draft")
    return str(root / "target"), str(root / "draft")


def run(models, draft: str | None, blocks=None, mode="greedy", alpha=0.7, n=10, seed=0, span_s=0.01, static=False,
        output=(8, 30), **sc):
    """Replay a short workload; ``static``: speculative steps in the fixed shapes the CUDA graphs capture, run
    uncaptured (``res.static_steps`` counts them)."""
    target, _ = models
    spec = {"spec_k": K, "draft_model": draft + "/config.json", "spec_alpha": alpha} if draft else {}
    s = make_scenario({"model": target + "/config.json", "max_model_len": 256, "max_num_batched_tokens": 64,
                       "max_num_seqs": 8, "num_gpu_blocks": blocks, **spec, **sc})
    eng = build_engine(EngineConfig(model=target + "/config.json", weights=target, device="cpu", max_model_len=256,
                                    max_num_batched_tokens=64, max_num_seqs=8, num_gpu_blocks=blocks, spec_k=K if draft
                                    else 0, draft_model=draft + "/config.json" if draft else None,
                                    draft_weights=draft, spec_mode=mode, spec_alpha=alpha, seed=seed))
    kept, static_steps = {}, []
    runner = eng.runner
    release, fixed = runner.release, runner._run_spec_static
    runner.release = lambda r: (kept.__setitem__(r.request_id, list(runner.tokens[r.request_id])), release(r))
    runner._run_spec_static = lambda batch, key, t0: (static_steps.append(key), fixed(batch, key, t0))[1]
    runner.static_spec = static
    res = replay(s, eng, workload(n=n, span_s=span_s, prompt=(10, 40), output=output, seed=4))
    res.static_steps = static_steps
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


def test_fixed_shape_inputs_place_every_row_and_pad_the_rest():
    """Three sequences in a graph batch of 4, k = 3, 16-token blocks: the verification rows p0 .. p0+k, the
    catch-up rows p0-1, p0 (the first written only when the draft is two behind), the draft passes at p0+1 ..
    p0+k-1, and padding rows that write nowhere and attend over enough keys."""
    k, b, bs = 3, 4, 16
    table = np.zeros((b, 6), np.int32)
    table[:3, :3] = [[10, 11, 12], [20, 21, 22], [30, 31, 32]]
    ctx = np.array([20, 35, 17])  # with the step's k + 1 tokens: p0 = 16, 31, 13
    tokens = [list(range(100, 100 + c)) for c in ctx - k]  # the last emitted token sits at p0
    got = spec_graph.step_inputs(table, ctx, tokens, np.array([1, 2, 1]), k, bs)

    def slot(i, p):
        return int(table[i, p // bs]) * bs + p % bs

    p0 = [16, 31, 13]
    assert got["last"].tolist() == [116, 131, 113, 0]
    assert got["vpos"].reshape(b, k + 1).tolist() == [[p + j for j in range(k + 1)] for p in p0] + [[0, 1, 2, 3]]
    assert got["vslots"].reshape(b, k + 1).tolist() == [[slot(i, p + j) for j in range(k + 1)]
                                                       for i, p in enumerate(p0)] + [[-1] * (k + 1)]
    assert slot(1, 32) == 22 * bs  # sequence 1's drafts cross into its third block
    assert got["vkvl"].tolist() == [20, 35, 17, k + 1]
    assert got["cids"].reshape(b, 2).tolist() == [[115, 116], [130, 131], [112, 113], [0, 0]]
    assert got["cpos"].reshape(b, 2).tolist() == [[15, 16], [30, 31], [12, 13], [0, 1]]
    assert got["cslots"].reshape(b, 2).tolist() == [[-1, slot(0, 16)], [slot(1, 30), slot(1, 31)],
                                                    [-1, slot(2, 13)], [-1, -1]]
    assert got["ckvl"].tolist() == [17, 32, 14, 2]
    assert got["dpos"].tolist() == [[17, 32, 14, 0], [18, 33, 15, 0]]
    assert got["dslots"].tolist() == [[slot(0, 17), slot(1, 32), slot(2, 14), -1],
                                      [slot(0, 18), slot(1, 33), slot(2, 15), -1]]
    assert got["dkvl"].tolist() == [[18, 33, 15, 1], [19, 34, 16, 1]]
    # the device buffers hold exactly these fields, each a view into one of two packed arrays
    static = spec_graph.StaticStep(b, k, 6, torch.device("cpu"))
    static.load(got)
    for name, want in got.items():
        assert static.v[name].tolist() == want.tolist(), name
        base = static.i64 if static.v[name].dtype == torch.int64 else static.i32
        assert (static.v[name].data_ptr() - base.data_ptr()) % spec_graph.ALIGN_BYTES == 0, name  # a tensor's own
    assert static.v["csample"].tolist() == [1, 3, 5, 7] and static.v["vsample"].tolist() == list(range(16))
    longer = [list(range(100, 100 + c)) for c in ctx - 1]
    one = spec_graph.step_inputs(table, ctx, longer, np.array([1, 1, 1]), 1, bs)  # k = 1: no draft passes
    assert one["dpos"].shape == (0, b) and one["vpos"].reshape(b, 2)[0].tolist() == [18, 19]


def test_a_step_takes_the_fixed_shape_only_when_the_batch_allows(models):
    """Pure-decode batches in the buckets take the fixed-shape step (batch 3 -> 4, context bucket 256); mixed
    batches, more decodes than the largest graph batch, a context past the buckets, a draft more than two
    tokens behind and temperature sampling run eagerly."""
    from servesim.hwmodels.ops import BatchShape
    from servesim.sim.request import Batch, PrefillChunk, Request

    target, draft = models
    eng = build_engine(EngineConfig(model=target + "/config.json", weights=target, device="cpu", max_model_len=256,
                                    max_num_batched_tokens=64, max_num_seqs=8, spec_k=K,
                                    draft_model=draft + "/config.json", draft_weights=draft))
    runner = eng.runner

    def batch(n, ctx=40, prefill=False):
        reqs = [Request(i, 0.0, 30, 50) for i in range(n)]
        chunks = [PrefillChunk(Request(99, 0.0, 8, 4), 8, 0)] if prefill else []
        return Batch(chunks, reqs, np.full(n, ctx), K + 1, BatchShape(decode_seqs=n))

    assert runner._spec_key(batch(3)) == (4, 256, K + 1)
    assert runner._spec_key(batch(8)) == (8, 256, K + 1)
    assert runner._spec_key(batch(3, prefill=True)) is None
    assert runner._spec_key(batch(9)) is None
    assert runner._spec_key(batch(3, ctx=300)) is None
    runner.spec.drafted[1] = 40 - (K + 1) - 1  # KV below p0 - 1: two behind, the catch-up holds it
    assert runner._spec_key(batch(3)) is not None
    runner.spec.drafted[1] -= 1
    assert runner._spec_key(batch(3)) is None
    runner.spec.drafted.clear()
    runner.temperature = 0.5
    assert runner._spec_key(batch(3)) is None


@pytest.mark.parametrize("which", ["same", "other"])
def test_fixed_shape_steps_emit_the_eager_paths_tokens(models, which):
    """The fixed-shape steps emit the eager path's tokens with the same acceptance, step for step; a draft
    equal to the target, accepted every step, catches up two tokens each time (the first catch-up row
    written), another one mostly one (the first row masked)."""
    draft = models[0] if which == "same" else models[1]
    eager, t_eager = run(models, draft, span_s=0.0)  # every request at 0: the same steps whatever they take
    fixed, t_fixed = run(models, draft, span_s=0.0, static=True)
    assert eager.static_steps == []  # the eager path is the default without CUDA graphs
    pure = fixed.iterations[(fixed.iterations.prefill_tokens == 0) & (fixed.iterations.decode_seqs > 0)]
    assert len(fixed.static_steps) == len(pure) > 0
    assert {key[0] for key in fixed.static_steps} >= {1, 2}
    assert outputs(fixed, t_fixed) == outputs(eager, t_eager)
    cols = ["prefill_tokens", "decode_seqs", "sampled_tokens"]
    assert fixed.iterations[cols].equals(eager.iterations[cols])


@pytest.mark.parametrize("preemption", ["swap", "recompute"])
def test_fixed_shape_steps_survive_preemption(models, preemption):
    plain, t_plain = run(models, None)
    tight, t_tight = run(models, models[1], blocks=10, preemption=preemption, swap_space_gib=0.001, static=True)
    assert tight.result.requests.num_preemptions.sum() > 0 and tight.static_steps
    assert outputs(tight, t_tight) == outputs(plain, t_plain)


@pytest.mark.interpret
def test_fixed_shape_steps_on_the_triton_kernels(models, monkeypatch):
    """The same under the Triton interpreter (float16): the kernels a GPU runs — decode attention of two and of
    1 + k tokens a sequence, its splits cut per sequence, KV writes that skip slot -1 — give the eager path's
    tokens and steps."""
    import servesim.engine.engine as eng_mod
    from servesim.engine.kernels import BACKENDS, TRITON

    cache = eng_mod._cache
    monkeypatch.setitem(BACKENDS, "torch", TRITON)
    monkeypatch.setattr(eng_mod, "_dtype", lambda cfg: torch.float16)
    monkeypatch.setattr(eng_mod, "_cache", lambda *a: (c := cache(*a)) and replace(
        c, k=[t.half() for t in c.k], v=[t.half() for t in c.v]))
    eager, t_eager = run(models, models[1], n=3, span_s=0.0, output=(6, 10))
    fixed, t_fixed = run(models, models[1], n=3, span_s=0.0, output=(6, 10), static=True)
    assert fixed.static_steps and outputs(fixed, t_fixed) == outputs(eager, t_eager)
    assert fixed.iterations.sampled_tokens.equals(eager.iterations.sampled_tokens)
