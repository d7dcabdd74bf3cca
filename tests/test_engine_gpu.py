"""The engine on a CUDA GPU: bf16 logits against transformers with identical weights, CUDA-graph decode equal
to eager decode, quantized formats close to bf16, and a short trace replay (marker ``gpu``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from servesim.engine.engine import EngineConfig, build_engine
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import LlamaModel
from servesim.engine.replay import replay
from servesim.engine.weights import build_weights, random_state_dict
from servesim.sim.config import make_scenario
from tests.engine_helpers import Seq, cache_for, hf_model, schedule_three_steps, tiny_config, write_config

pytestmark = pytest.mark.gpu

SHAPES = {  # GPU-sized tiny models, and the Llama-3.1-8B layer shape with 2 layers
    "small": dict(hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, intermediate_size=1536,
                  vocab_size=1000),
    "8b-2-layers": dict(hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336,
                        vocab_size=128256, rope_theta=500000.0),
}


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bf16_logits_match_transformers(arch, shape):
    torch.manual_seed(0)
    mc = tiny_config(arch, **SHAPES[shape])
    sd = random_state_dict(mc, seed=1, dtype=torch.bfloat16, device="cuda")
    hf = hf_model(mc, sd, dtype=torch.bfloat16, device="cuda")
    model = LlamaModel(mc, build_weights(mc, dict(sd), "bf16"), BACKENDS["triton"], 512)
    a = Seq(torch.randint(0, mc.vocab_size, (21,), device="cuda"), [3, 7])
    b = Seq(torch.randint(0, mc.vocab_size, (19,), device="cuda"), [5, 1])
    got = schedule_three_steps(model, cache_for(mc, dtype=torch.bfloat16, device="cuda"), a, b)
    with torch.no_grad():
        ref = {"a": hf(a.ids[None]).logits[0].float(), "b": hf(b.ids[None]).logits[0].float()}
    for (name, p), logits in got.items():
        r = ref[name][p]
        err = ((logits.float() - r).norm() / r.norm()).item()
        assert err < 2e-2, (name, p, err)


@pytest.fixture(scope="module")
def small_model_path(tmp_path_factory):
    return write_config(tiny_config(**SHAPES["small"], max_position_embeddings=4096), tmp_path_factory.mktemp("m"))


def _replay(path, graphs: bool, fmt="bf16", kv="bf16", blocks=None, spread_s=0.3, piecewise=False, **sc):
    s = make_scenario({"model": path, "max_model_len": 1024, "max_num_batched_tokens": 512, "max_num_seqs": 16,
                       "quant": fmt, "kv_dtype": kv, "num_gpu_blocks": blocks, **sc})
    eng = build_engine(EngineConfig(model=path, weight_format=fmt, kv_dtype=kv, max_model_len=1024,
                                    max_num_batched_tokens=512, max_num_seqs=16, cuda_graphs=graphs,
                                    num_gpu_blocks=blocks or 400, piecewise_graphs=piecewise))
    rng = np.random.default_rng(0)
    import pandas as pd

    from servesim.sim.workload import Workload
    df = pd.DataFrame({"arrival_s": np.sort(rng.uniform(0, spread_s, 24)), "input_tokens": rng.integers(10, 300, 24),
                       "output_tokens": rng.integers(5, 60, 24)})
    kept = {}
    release = eng.runner.release
    eng.runner.release = lambda r: (kept.__setitem__(r.request_id, list(eng.runner.tokens[r.request_id])), release(r))
    res = replay(s, eng, Workload(name="t", requests=df, source="test"))
    return (res, kept, eng) if piecewise else (res, kept)


def test_graph_decode_step_matches_the_eager_step(small_model_path):
    """The captured decode graph samples what the eager forward of the same step samples (a different token
    only where two logits tie within bf16 rounding)."""
    from servesim.hwmodels.ops import BatchShape
    from servesim.sim.request import Batch, Request

    eng = build_engine(EngineConfig(model=small_model_path, max_model_len=1024, max_num_batched_tokens=512,
                                    max_num_seqs=16, num_gpu_blocks=400, capture_at_start=False))
    runner = eng.runner
    reqs = []
    for i, ctx in enumerate([5, 37, 300, 700, 64, 129]):
        r = Request(i, 0.0, ctx, 100)
        r.block_ids = list(range(i * 50, i * 50 + -(-ctx // 16)))
        reqs.append(r)
    ctx = np.array([r.prompt_tokens for r in reqs])
    batch = Batch([], reqs, ctx, 1, BatchShape(
        decode_seqs=len(reqs), decode_query_tokens=len(reqs), decode_ctx_tokens=int(ctx.sum()),
        sampled_tokens=len(reqs)))
    ids, pos, slots, sample, *_ = runner._inputs(batch)
    from servesim.engine.model import AttentionMeta

    dev = "cuda"
    meta = AttentionMeta(num_prefill_tokens=0, decode_kv_lens=torch.tensor(ctx, dtype=torch.int32, device=dev),
                         decode_block_tables=torch.from_numpy(runner._table(reqs, len(reqs))).to(dev),
                         decode_max_kv_len=int(ctx.max()))
    logits = eng.model.forward(torch.from_numpy(ids).to(dev), torch.from_numpy(pos).to(dev),
                               torch.from_numpy(slots).to(dev), meta, eng.runner.cache,
                               torch.from_numpy(sample).to(dev)).float()
    runner.run(batch)
    assert runner.stats.graph
    got = torch.tensor([runner.tokens[r.request_id][-1] for r in reqs], device=dev)
    best = logits.max(dim=-1).values
    chosen = logits.gather(1, got[:, None])[:, 0]
    assert ((best - chosen) <= 0.02 * best.abs().clamp_min(1.0)).all()
    assert (got == logits.argmax(dim=-1)).float().mean() >= 0.5


def test_piecewise_step_matches_the_eager_step(small_model_path):
    """A mixed step replayed as piecewise graphs (7 tokens padded to 16): the eager step's logits within bf16
    rounding, the same argmax but at near-ties."""
    from tests.test_engine_piecewise import mixed_batch, zero_cache

    eng = build_engine(EngineConfig(model=small_model_path, max_model_len=1024, max_num_batched_tokens=512,
                                    max_num_seqs=16, num_gpu_blocks=400, piecewise_graphs=True))
    runner = eng.runner
    zero_cache(eng)
    assert set(runner.pieces.graphs) == set(runner.pieces.buckets)  # captured at start
    assert eng.timings_s["graph_capture_s"] > 0 and eng.memory.graph_pool_bytes > 0
    batch = mixed_batch()
    eager = runner.logits(batch).float()
    piece = runner.logits(batch, piecewise=True).float().clone()
    err = ((piece - eager).norm(dim=-1) / eager.norm(dim=-1)).max().item()
    assert err < 0.02, err
    assert (piece.argmax(-1) == eager.argmax(-1)).float().mean() >= 2 / 3


def test_piecewise_replay_emits_the_eager_tokens(small_model_path):
    """A short replay with piecewise graphs: every step with a prefill chunk ran piecewise (the iteration log's
    column), pure decodes as decode graphs; the first token of each request (a prefill step's) is the eager
    replay's but at near-ties in bf16."""
    pw, t_pw, _ = _replay(small_model_path, graphs=True, piecewise=True)
    eager, t_eager = _replay(small_model_path, graphs=True)
    assert pw.result.summary["completed"] == 24
    it, pre = pw.iterations, pw.iterations.prefill_tokens > 0
    assert it.piecewise[pre].all() and not it.piecewise[~pre].any() and it.graph[~pre].all()
    assert not eager.iterations.piecewise.any()
    req = pw.result.requests.set_index("request_id")
    first = [t_pw[r][p] == t_eager[r][p] for r, p in req.input_tokens.items()]
    assert np.mean(first) >= 0.9


# Relative logit error against the bf16 model at the small shape: the CPU tests' bounds (tests/test_engine_quant.py)
@pytest.mark.parametrize("fmt,tol", [("w8a8", 0.05), ("fp8", 0.15), ("w4a16,attn=bf16", 0.35)])
def test_activation_quantizing_and_mixed_formats_stay_close_to_bf16(fmt, tol):
    from servesim.kernels.quant import Fp8Linear, W8A8Linear

    mc = tiny_config(**SHAPES["small"])
    sd = random_state_dict(mc, seed=3, dtype=torch.bfloat16, device="cuda")
    base = LlamaModel(mc, build_weights(mc, dict(sd), "bf16"), BACKENDS["triton"], 512)
    quant = LlamaModel(mc, build_weights(mc, dict(sd), fmt), BACKENDS["triton"], 512)
    kind = {"w8a8": W8A8Linear, "fp8": Fp8Linear}.get(fmt)
    assert kind is None or isinstance(quant.w.layers[0].qkv, kind)
    a = Seq(torch.randint(0, mc.vocab_size, (21,), device="cuda"), [3, 7])
    b = Seq(torch.randint(0, mc.vocab_size, (19,), device="cuda"), [5, 1])
    x = schedule_three_steps(base, cache_for(mc, dtype=torch.bfloat16, device="cuda"), a, b)
    y = schedule_three_steps(quant, cache_for(mc, dtype=torch.bfloat16, device="cuda"), a, b)
    for key in x:
        err = ((x[key].float() - y[key].float()).norm() / x[key].float().norm()).item()
        assert 0 < err < tol, (key, err)


@pytest.mark.parametrize("fmt,kv", [("w8a16", "bf16"), ("w4a16", "bf16"), ("bf16", "fp8"), ("w8a8", "bf16"),
                                    ("fp8", "bf16"), ("w4a16,first:1=bf16", "bf16")])
def test_formats_replay_completes(small_model_path, fmt, kv):
    res, _ = _replay(small_model_path, graphs=True, fmt=fmt, kv=kv)
    assert res.result.summary["completed"] == 24


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_preemption_storm_on_gpu(small_model_path, preemption):
    # every request arrives at once: a fast GPU finishes early requests before later ones arrive in a spread
    # trace, and the storm (preemptions) then depends on timing; a burst forces it
    res, _ = _replay(small_model_path, graphs=True, blocks=40, spread_s=0.0, preemption=preemption)
    req = res.result.requests
    assert (req.generated_tokens == req.output_tokens).all() and req.num_preemptions.sum() > 0


# -- speculative decoding under CUDA graphs (engine/spec_graph.py) ----------------------------------------------
SPEC_K = 3


@pytest.fixture(scope="module")
def spec_models(tmp_path_factory):
    """A small target with saved weights, and two drafts: the target itself (every draft accepted: the catch-up
    takes two tokens each step) and a smaller random model (mostly rejected: one token)."""
    from servesim.engine.weights import save_state_dict

    root = tmp_path_factory.mktemp("spec")
    target = tiny_config(**SHAPES["small"], max_position_embeddings=4096)
    other = tiny_config(**{**SHAPES["small"], "intermediate_size": 512}, num_layers=1, max_position_embeddings=4096)
    save_state_dict(random_state_dict(target, seed=21, dtype=torch.bfloat16), target, root / "target")
    save_state_dict(random_state_dict(other, seed=22, dtype=torch.bfloat16), other, root / "draft")
    return {"same": str(root / "target"), "other": str(root / "draft"), "target": str(root / "target")}


def _spec_replay(models, which: str, graphs: bool, fixed: bool | None = None, mode="greedy"):
    """Every request at t = 0 (no step waits on the clock: the same steps whatever they take); ``fixed``: the
    fixed-shape steps without CUDA graphs (run uncaptured)."""
    import pandas as pd

    from servesim.sim.workload import Workload

    target, draft = models["target"], models[which]
    sc = {"model": target + "/config.json", "max_model_len": 1024, "max_num_batched_tokens": 512, "max_num_seqs": 16,
          "num_gpu_blocks": 400, "spec_k": SPEC_K, "draft_model": draft + "/config.json", "spec_alpha": 0.7}
    eng = build_engine(EngineConfig(model=target + "/config.json", weights=target, max_model_len=1024,
                                    max_num_batched_tokens=512, max_num_seqs=16, cuda_graphs=graphs,
                                    num_gpu_blocks=400, spec_k=SPEC_K, draft_model=draft + "/config.json",
                                    draft_weights=draft, spec_mode=mode))
    if fixed is not None:
        eng.runner.static_spec = fixed
    rng = np.random.default_rng(1)
    n = 12
    df = pd.DataFrame({"arrival_s": np.zeros(n), "input_tokens": rng.integers(10, 200, n),
                       "output_tokens": rng.integers(20, 60, n)})
    kept = {}
    release = eng.runner.release
    eng.runner.release = lambda r: (kept.__setitem__(r.request_id, list(eng.runner.tokens[r.request_id])), release(r))
    res = replay(make_scenario(sc), eng, Workload(name="t", requests=df, source="test"))
    req = res.result.requests.set_index("request_id")
    return res, {rid: t[: int(req.input_tokens[rid] + req.output_tokens[rid])] for rid, t in kept.items()}, eng


@pytest.mark.parametrize("which", ["same", "other"])
def test_spec_graph_replays_its_fixed_shape_step_exactly(spec_models, which):
    """Speculative decode steps replayed as CUDA graphs emit, bit for bit, the tokens of the same fixed-shape
    steps launched without capture, with the same acceptance step for step; every pure-decode step replays a
    graph and every mixed step runs eagerly."""
    graph, t_graph, _ = _spec_replay(spec_models, which, graphs=True)
    plain, t_plain, _ = _spec_replay(spec_models, which, graphs=False, fixed=True)
    assert graph.result.summary["completed"] == 12
    assert t_graph == t_plain
    cols = ["prefill_tokens", "decode_seqs", "sampled_tokens"]
    assert graph.iterations[cols].equals(plain.iterations[cols])
    it = graph.iterations
    pure = (it.prefill_tokens == 0) & (it.decode_seqs > 0)
    assert it.graph[pure].all() and not it.graph[~pure].any() and pure.mean() > 0.5
    assert not plain.iterations.graph.any()
    if which == "same":  # the draft is the target: nearly every draft accepted (bf16 near-ties aside)
        req = graph.result.requests
        assert (req.generated_tokens.sum() - len(req)) / it.decode_seqs.sum() > 2.5


@pytest.mark.parametrize("which", ["same", "other"])
def test_spec_graph_and_eager_speculation_emit_greedy_tokens(spec_models, which):
    """Graph and eager speculation both emit the target's greedy tokens: each output token's logit, from one
    eager pass of the target over the whole sequence, is the row's maximum within bf16 rounding (the graph's
    verification cuts attention into other splits and runs other GEMM row counts than the eager step, and the
    teacher-forced pass others again, so near-ties may fall either way; a wrong token sits ~1.5 standard
    deviations of the logits, about 0.7 here, below the maximum)."""
    from servesim.engine.model import AttentionMeta

    graph, t_graph, eng = _spec_replay(spec_models, which, graphs=True)
    eager, t_eager, _ = _spec_replay(spec_models, which, graphs=False)
    assert graph.iterations.graph.any() and not eager.iterations.graph.any()
    req = graph.result.requests.set_index("request_id")
    mc, dev = eng.model.cfg, "cuda"
    for tokens in (t_graph, t_eager):
        for rid, toks in tokens.items():
            p, n = int(req.input_tokens[rid]), len(toks)
            cache = cache_for(mc, blocks=-(-n // 16), dtype=torch.bfloat16, device=dev)
            meta = AttentionMeta(num_prefill_tokens=n,
                                 prefill_cu_seqlens=torch.tensor([0, n], dtype=torch.int32, device=dev),
                                 prefill_kv_lens=torch.tensor([n], dtype=torch.int32, device=dev),
                                 prefill_block_tables=torch.arange(-(-n // 16), dtype=torch.int32,
                                                                   device=dev)[None],
                                 prefill_max_q_len=n)
            ids = torch.tensor(toks, device=dev)
            logits = eng.model.forward(ids, torch.arange(n, dtype=torch.int32, device=dev),
                                       torch.arange(n, device=dev), meta, cache,
                                       torch.arange(p - 1, n - 1, device=dev)).float()
            best = logits.max(dim=-1).values
            chosen = logits.gather(1, ids[p:, None])[:, 0]
            assert ((best - chosen) <= 0.05 * best.abs().clamp_min(1.0)).all(), rid


def test_controlled_speculation_replays_graphs(spec_models):
    """The validation suite's mode (acceptance drawn with alpha, real draft and verification passes) under CUDA
    graphs: the same steps and tokens as the uncaptured fixed-shape steps, every request complete."""
    graph, t_graph, eng = _spec_replay(spec_models, "other", graphs=True, mode="controlled")
    plain, t_plain, _ = _spec_replay(spec_models, "other", graphs=False, fixed=True, mode="controlled")
    assert (graph.result.requests.generated_tokens == graph.result.requests.output_tokens).all()
    assert t_graph == t_plain
    it = graph.iterations
    pure = (it.prefill_tokens == 0) & (it.decode_seqs > 0)
    assert it.graph[pure].all()
    assert {k[2] for k in eng.runner.graphs} == {SPEC_K + 1}  # captured at start: speculative graphs only
    assert eng.timings_s["graph_capture_s"] > 0 and eng.memory.graph_pool_bytes > 0
