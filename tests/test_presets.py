"""Engine presets: each one's defining behaviour, through the scheduler seam and through ``simulate``.

llama.cpp slots refuse a request over the slot context and reserve every slot's context; TensorRT-LLM's
guaranteed_no_evict never preempts where max_utilization does, and its in-flight batching mixes whole prompts
with decodes; static batches admit nothing mid-batch; vLLM chunks prompts beside decodes and reuses cached
prefixes. Plus the preset mechanics: given values win, the GPU picks vLLM's limits, a bad name is one line.
"""

from __future__ import annotations

import json

import pytest

from servesim.cli.main import main
from servesim.errors import ConfigError
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.memory import plan_memory
from servesim.hwmodels.models import get_model
from servesim.hwmodels.placement import Placement
from servesim.sim.config import make_scenario
from servesim.sim.deployment import build_deployment
from servesim.sim.presets import PRESETS
from servesim.sim.request import Request, State
from servesim.sim.scheduler import SchedulerConfig
from servesim.sim.simulator import simulate
from tests.scheduler_invariants import Invariants
from tests.serving_driver import drive


def _csv(tmp_path, rows: list[tuple[float, int, int]]) -> str:
    path = tmp_path / "trace.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(f"{a},{i},{o}\n" for a, i, o in rows))
    return str(path)


def _checked(config: SchedulerConfig, reqs: list[Request], num_blocks: int, **kv):
    inv = Invariants(config)
    sched, trace = drive(config, reqs, num_blocks, check=inv.check, **kv)
    inv.finish(sched, reqs, kv.get("swap_blocks", 0))
    return sched, trace


# -- llama.cpp --------------------------------------------------------------------------------------------------
def test_llamacpp_refuses_a_request_over_the_slot_context(tmp_path):
    trace = _csv(tmp_path, [(0.0, 300, 20), (0.1, 8000, 500), (0.2, 100, 10)])  # 8,500 > the 8,192-token slot
    r = simulate(make_scenario({"preset": "llamacpp", "trace": trace}))
    rows = r.requests.set_index("request_id")
    assert "context of a slot" in rows.loc[1, "rejected_reason"] and "8,500" in rows.loc[1, "rejected_reason"]
    assert rows.loc[[0, 2], "rejected_reason"].fillna("").eq("").all()
    # every slot reserves its whole context: the pool is exactly 4 slots x 8192 tokens, whatever the GPU holds
    dep = build_deployment(make_scenario({"preset": "llamacpp", "trace": trace}))
    assert dep.num_blocks == 4 * 8192 // 16 < dep.memory.kv_blocks


def test_llamacpp_slots_bound_concurrency_not_kv():
    """Five short requests on four slots: four run at once though the pool could hold all five many times over;
    the fifth is admitted only when a slot frees."""
    cfg = SchedulerConfig(batching="chunked", admission="slots", max_num_seqs=4, max_model_len=256,
                          max_num_batched_tokens=2048)
    reqs = [Request(i, 0.0, 20, 5 + i) for i in range(5)]
    sched, trace = _checked(cfg, reqs, num_blocks=4 * 16)
    assert max(len(b.decode) + len(b.prefill) for b in trace.batches) == 4
    assert reqs[4].first_scheduled_s >= min(r.finish_s for r in reqs[:4])


def test_llamacpp_slots_that_do_not_fit_are_a_config_error():
    with pytest.raises(ConfigError, match="slots of 131,072 tokens") as err:
        build_deployment(make_scenario({"preset": "llamacpp", "max_model_len": 131072, "max_num_seqs": 16}))
    assert err.value.field == "max_num_seqs"


# -- TensorRT-LLM ---------------------------------------------------------------------------------------------
def _crowd() -> list[Request]:
    """Eight long-output requests at once on a pool that holds their prompts but not all of their outputs."""
    return [Request(i, 0.0, 64, 120) for i in range(8)]


@pytest.mark.parametrize("batching", ["inflight", "chunked", "continuous", "static"])
def test_guaranteed_no_evict_never_preempts_where_max_utilization_does(batching):
    base = dict(batching=batching, max_num_seqs=8, max_model_len=512, max_num_batched_tokens=1024)
    greedy, _ = _checked(SchedulerConfig(admission="max_utilization", **base), _crowd(), num_blocks=40)
    assert greedy.num_preemptions > 0  # the pool (40 blocks) is short of 8 x 12 = 96 blocks at the end
    reqs = _crowd()
    safe, trace = _checked(SchedulerConfig(admission="guaranteed_no_evict", **base), reqs, num_blocks=40)
    assert safe.num_preemptions == 0 and all(r.state == State.FINISHED for r in reqs)
    # three requests' whole lives (12 blocks each) fit in 40 blocks: never more than three run at once
    assert max(len(b.decode) + len(b.prefill) for b in trace.batches) == 3


def test_inflight_batching_mixes_whole_prompts_with_decodes():
    cfg = SchedulerConfig(batching="inflight", admission="guaranteed_no_evict", max_num_seqs=8, max_model_len=512,
                          max_num_batched_tokens=512)
    reqs = [Request(0, 0.0, 100, 30), Request(1, 0.05, 400, 5), Request(2, 0.06, 500, 5)]
    _, trace = _checked(cfg, reqs, num_blocks=200)
    mixed = [b for b in trace.batches if b.prefill and b.decode]
    assert mixed and all(ch.tokens == ch.request.prompt_tokens for b in trace.batches for ch in b.prefill)
    # request 2's 500-token prompt waits for a step whose decodes leave it room in the 512-token budget
    assert all(b.num_tokens <= 512 for b in trace.batches)


def test_tensorrt_llm_memory_is_a_fraction_of_what_the_weights_leave():
    model, gpu = get_model("Llama-3.1-70B"), get_gpu("H200")
    place = Placement(model, gpu, weight_format="fp8", kv_dtype="fp8")
    vllm, trt = (plan_memory(place, 0.9, fraction_of=f) for f in ("total", "free"))
    assert trt.weights_bytes == vllm.weights_bytes and trt.kv_blocks > vllm.kv_blocks
    free = gpu.memory_bytes - trt.weights_bytes - trt.activation_bytes - trt.runtime_bytes
    assert trt.kv_cache_bytes == pytest.approx(0.9 * free, abs=trt.kv_bytes_per_block)
    s = make_scenario({"preset": "tensorrt-llm"})
    assert (s.quant, s.kv_dtype, s.batching, s.admission) == ("fp8", "fp8", "inflight", "guaranteed_no_evict")


# -- static (HF generate) -------------------------------------------------------------------------------------
def test_static_batches_admit_nothing_mid_batch(tmp_path):
    rows = [(0.0, 200, 40), (0.0, 100, 10), (0.01, 50, 5), (0.3, 80, 5), (0.4, 60, 5)]
    r = simulate(make_scenario({"preset": "static", "trace": _csv(tmp_path, rows), "profile": "roofline"}))
    req = r.requests.set_index("request_id")
    first = req.loc[[0, 1]]  # the batch that starts at 0 (request 2 arrives 10 ms later, during its prefill)
    for late in (2, 3, 4):
        assert req.loc[late, "first_scheduled_s"] >= first["finish_s"].max()
    # host time per step: ~21 ms of eager PyTorch, so a 40-token answer takes at least 40 x 21 ms
    assert req.loc[0, "finish_s"] - req.loc[0, "first_scheduled_s"] > 40 * 0.021


# -- vLLM -----------------------------------------------------------------------------------------------------
def test_vllm_chunks_prompts_beside_decodes_and_reuses_prefixes():
    s = make_scenario({"preset": "vllm"})
    assert (s.batching, s.prefix_caching, s.preemption, s.max_num_batched_tokens, s.max_num_seqs) == (
        "chunked", True, "recompute", 8192, 1024)  # the H200: >= 70 GiB and not an A100
    a100 = make_scenario({"preset": "vllm", "gpu": "A100-80GB-SXM"})
    assert (a100.max_num_batched_tokens, a100.max_num_seqs) == (2048, 256)
    cfg = SchedulerConfig(batching="chunked", max_num_seqs=8, max_model_len=4096, max_num_batched_tokens=256)
    shared = tuple(range(20))
    reqs = [Request(0, 0.0, 640, 40, hash_ids=shared, hash_block_tokens=32),
            Request(1, 0.2, 700, 5, hash_ids=shared + (99, 98), hash_block_tokens=32)]
    _, trace = _checked(cfg, reqs, num_blocks=200, prefix_caching=True)
    assert any(b.prefill and b.decode for b in trace.batches)  # request 1's chunks run beside request 0's decodes
    assert any(ch.tokens < ch.request.prompt_tokens and not ch.completes for b in trace.batches for ch in b.prefill)
    assert reqs[1].cached_tokens == 624  # 39 full blocks of its prompt were cached by request 0


# -- mechanics ------------------------------------------------------------------------------------------------
def test_given_values_win_over_the_preset_and_names_are_canonical():
    s = make_scenario({"preset": "TensorRT-LLM", "quant": "bf16", "max_num_seqs": 64})
    assert (s.preset, s.quant, s.kv_dtype, s.max_num_seqs) == ("tensorrt-llm", "bf16", "fp8", 64)
    with pytest.raises(ConfigError, match="unknown engine preset 'vlm'; closest: vllm") as err:
        make_scenario({"preset": "vlm"})
    assert err.value.field == "preset"
    assert set(PRESETS) == {"vllm", "tensorrt-llm", "llamacpp", "static"}


def test_compare_across_presets_on_one_workload(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--presets", "vllm,llamacpp,static", "--num-requests", "40", "--profile", "roofline",
              "--json"])
    code = exit_.value.code
    docs = json.loads(capsys.readouterr().out)
    assert code == 0 and set(docs) == {"vllm", "llamacpp", "static"}
    ttft = {k: v["summary"]["mean_ttft_ms"] for k, v in docs.items()}
    assert ttft["vllm"] < ttft["llamacpp"] and ttft["vllm"] < ttft["static"]  # 4 slots and static batches queue
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--presets", "vllm,trt", "--num-requests", "5"])
    assert exit_.value.code == 2 and "field 'presets'" in capsys.readouterr().err
