"""The roofline prior: its soft combination, the shipped parameter file, families and borrowing, the API that
other cost models call, and the catalog file's errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from servesim.errors import InputError
from servesim.hwmodels.gpus import GPUS, get_gpu
from servesim.hwmodels.models import MODELS
from servesim.hwmodels.ops import layer_ops
from servesim.hwmodels.prior import (
    ALLREDUCE_MODES,
    BORROWED_KINDS,
    DEFAULT_FAMILY,
    KINDS,
    PRIOR_FILE,
    load_prior,
    op_time_s,
    prior_for,
    priors,
    soft,
)

times = st.floats(0.0, 1.0, allow_nan=False)


@given(times, times, st.floats(0.0, 1.0))
def test_soft_lies_between_max_and_sum(a, m, c):
    t = soft(a, m, c)
    assert max(a, m) * (1 - 1e-12) <= t <= (a + m) * (1 + 1e-12)
    assert soft(0.0, m, c) == m  # memory-only kernels are exactly their memory term
    assert soft(np.array([a]), np.array([m]), c)[0] == pytest.approx(t, rel=1e-12, abs=1e-300)


def test_soft_is_monotone_and_smooth_at_the_ridge():
    x = np.linspace(0.0, 2.0, 2001)
    for c in (0.0, 0.5, 1.0):
        t = soft(x, 1.0, c)
        assert np.all(np.diff(t) >= 0)
        assert np.max(np.abs(np.diff(t, 2))) < 1e-5  # no kink where the two terms cross
    assert soft(1.0, 1.0, 1.0) == 1.5 and soft(1.0, 1.0, 0.0) == 2.0


def test_shipped_prior_covers_every_kind_family_and_mode():
    table = priors()
    assert DEFAULT_FAMILY in table and {"ampere", "ampere-gddr", "hopper"} <= set(table)
    for fam, p in table.items():
        assert set(p.kernels) == set(KINDS) | set(BORROWED_KINDS) and set(p.allreduce) == set(ALLREDUCE_MODES), fam
        for kind, k in p.kernels.items():
            assert 0 <= k.floor_s < 20e-6 and 0 < k.eff_memory <= 1.5 and 0 <= k.sharpness <= 1, (fam, kind)
    prov = table["hopper"].provenance
    assert {"data", "fitted", "command", "servesim_commit"} <= set(prov)
    assert "7d47513363ec447a741ac5e47241580b47724fbf" in prov["data"]


def test_every_catalog_gpu_has_a_prior_and_unmeasured_families_say_so():
    for gpu in GPUS.values():
        p = prior_for(gpu)
        assert p.family in priors()
    assert prior_for(get_gpu("H200")).family == "hopper" and not prior_for(get_gpu("H200")).borrowed_for
    b200 = prior_for(get_gpu("B200"))
    assert b200.family == "hopper" and b200.borrowed_for == "blackwell"
    assert prior_for(get_gpu("L40S")).family == "ampere-gddr"
    assert prior_for(get_gpu("MI300X")).family == DEFAULT_FAMILY
    assert "A40" in prior_for(get_gpu("A40")).measured_on


def test_a_gpu_without_a_family_gets_the_pooled_default(tmp_path):
    from servesim.hwmodels.gpus import load_gpus_yaml

    f = tmp_path / "g.yaml"
    f.write_text("X1:\n  memory_gib: 24\n  hbm_tbps: 1\n  tflops: {bf16: 100}\n  sm_count: 60\n"
                 "  interconnect_gbps: 64\n  pcie_gbps: 64\n  tdp_w: 300\n  usd_per_hour: 1\n  source: test\n")
    gpu = load_gpus_yaml(f)["X1"]
    assert gpu.family == "" and prior_for(gpu).family == DEFAULT_FAMILY


def test_kernel_api_matches_the_formula():
    """What another cost model calls: kernel_s(kind, flops, bytes, gpu) and op_time_s(op, flops, bytes, gpu)."""
    gpu = get_gpu("H100-SXM")
    p = prior_for(gpu)
    k = p.kernel("gemm")
    flops, nbytes = 2 * 256 * 4096 * 4096, 2 * (256 * 4096 * 2 + 4096 * 4096)
    a, m = flops / (gpu.peak_flops_per_s("bf16") * k.eff_compute), nbytes / (gpu.hbm_bytes_per_s * k.eff_memory)
    want = k.floor_s + a + m - k.sharpness * a * m / (a + m)
    assert p.kernel_s("gemm", flops, nbytes, gpu) == pytest.approx(want, rel=1e-12)  # no shape: no wave term
    o = next(op for op in layer_ops(MODELS["Llama-3.1-8B"]) if op.name == "o")  # M = 256, N = 4096
    aw = a * k.wave_factor(256, 4096, gpu.sm_count)
    want = k.floor_s + aw + m - k.sharpness * aw * m / (aw + m)
    assert op_time_s(o, flops, nbytes, gpu)[0] == pytest.approx(want, rel=1e-12)
    assert p.kernel_s("gemm", flops, nbytes, gpu, "bf16", 0.0, 256, 4096) == pytest.approx(want, rel=1e-12)
    # arrays in, arrays out (the calibrated model extrapolates whole grids)
    grid = p.kernel_s("gemm", np.array([flops, 2 * flops]), np.array([nbytes, nbytes]), gpu)
    assert grid.shape == (2,) and grid[1] > grid[0]
    with pytest.raises(KeyError, match="no operator kind"):
        p.kernel("conv")


def test_norm_act_is_priced_per_kernel():
    """norm_act launches four kernels: four floors, each kernel with its own efficiency."""
    gpu = get_gpu("H100-SXM")
    p = prior_for(gpu)
    op = next(op for op in layer_ops(MODELS["Llama-3.1-8B"]) if op.name == "norm_act")
    assert [k for k, _ in op.parts] == ["norm", "norm", "act", "rope"]
    assert sum(b for _, b in op.parts) == op.bytes["new_tokens"]
    t, bound = op_time_s(op, 0.0, op.bytes["new_tokens"] * 1, gpu)  # one token
    assert bound == "floor"
    floors = sum(p.kernel(k).floor_s for k, _ in op.parts)
    rows = sum(b / p.kernel(k).row_bytes_per_s for k, b in op.parts)
    assert t == pytest.approx(floors + rows, rel=1e-9)  # one token: each kernel's row term, not its bytes


def test_collectives_by_mode():
    gpu = get_gpu("H100-SXM")
    p = prior_for(gpu)
    small, large = 16 * 1024, 64 * 2**20
    assert p.collective_s(small, gpu, "custom") < p.collective_s(small, gpu, "nccl") / 3
    assert p.collective_s(large, gpu, "custom") == p.collective_s(large, gpu, "nccl")  # NCCL wins big messages
    with pytest.raises(ValueError, match="all-reduce mode"):
        p.collective_s(small, gpu, "gloo")


def _write(tmp_path, text: str):
    f = tmp_path / "prior.yaml"
    f.write_text(text)
    return f


def test_prior_file_errors_name_the_field(tmp_path):
    good = PRIOR_FILE.read_text()
    assert set(load_prior(_write(tmp_path, good))) == set(priors())
    with pytest.raises(InputError, match="families"):
        load_prior(_write(tmp_path, "provenance: {}\n"))
    with pytest.raises(InputError, match=r"families\.hopper\.kernels\.gemm\.floor_us"):
        load_prior(_write(tmp_path, _bad_gemm_floor(good)))
    with pytest.raises(InputError, match=r"sharpness"):
        load_prior(_write(tmp_path, good.replace("sharpness: ", "sharpness: 7", 1)))
    with pytest.raises(InputError, match=r"borrow\.ada"):
        load_prior(_write(tmp_path, good.replace("ada: ampere-gddr", "ada: volta")))
    with pytest.raises(InputError, match="cannot read"):
        load_prior(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="not valid YAML"):
        load_prior(_write(tmp_path, "families: [\n"))


def _bad_gemm_floor(text: str) -> str:
    """The catalog with hopper's gemm floor made non-numeric."""
    head, hopper = text.split("\n  hopper:\n", 1)
    return head + "\n  hopper:\n" + hopper.replace("floor_us: ", "floor_us: fast", 1)


def test_catalog_floors_are_physical():
    """Floors of a few µs, not zero and not milliseconds, for every fitted kernel kind."""
    for fam in ("ampere", "ampere-gddr", "hopper", DEFAULT_FAMILY):
        p = priors()[fam]
        for kind in ("gemm", "attn_decode"):
            assert 1e-6 < p.kernel(kind).floor_s < 10e-6, (fam, kind)
        assert p.kernel("norm").row_bytes_per_s < math.inf


def test_l2_term_closed_form():
    """Elementwise kernels: the L2-resident part of the working set (l2_fraction of the GPU's L2) streams
    l2_speedup times faster; beyond it, HBM; no L2 known, no term."""
    from servesim.hwmodels.prior import KernelPrior

    bw, l2 = 2e12, 40 * 2**20
    k = KernelPrior(0.0, eff_memory=0.5, l2_speedup=2.0, l2_fraction=0.5)
    cap = 20 * 2**20
    assert k.memory_s(10 * 2**20, bw, l2) == pytest.approx(10 * 2**20 / (bw * 0.5) / 2, rel=1e-12)
    assert k.memory_s(100 * 2**20, bw, l2) == pytest.approx((100 * 2**20 - cap) / (bw * 0.5) + cap / bw, rel=1e-12)
    assert k.memory_s(cap, bw, l2) == pytest.approx(cap / bw, rel=1e-12)  # continuous where the set outgrows L2
    assert k.memory_s(10 * 2**20, bw, 0) == 10 * 2**20 / (bw * 0.5)
    assert k.memory_s(10 * 2**20, bw, l2, fraction=0.25) == pytest.approx(  # a quarter of the layers: a quarter
        (10 * 2**20 - cap / 4) / (bw * 0.5) + cap / 4 / bw, rel=1e-12)  # of each launch's bytes in the average
    sizes = np.geomspace(1e3, 1e9, 50)
    t = k.time_s(0.0, sizes, 1e15, bw, 0.0, l2)
    assert np.all(np.diff(t) > 0) and np.all(t <= sizes / (bw * 0.5))


def test_shipped_l2_terms_are_elementwise_and_physical():
    from servesim.hwmodels.prior import L2_KINDS

    for fam, p in priors().items():
        for kind, k in p.kernels.items():
            if kind not in L2_KINDS:
                assert k.l2_speedup == 1.0 and k.l2_fraction == 0.0, (fam, kind)
            else:
                assert 1.0 <= k.l2_speedup < 4 and 0.0 <= k.l2_fraction <= 2, (fam, kind)
    assert get_gpu("H100-SXM").l2_bytes == 50 * 2**20 and get_gpu("A40").l2_bytes == 6 * 2**20


def test_l2_fields_only_on_elementwise_kinds(tmp_path):
    good = PRIOR_FILE.read_text()
    bad = good.replace("      gemm:\n        floor_us:", "      gemm:\n        l2_speedup: 1.5\n        floor_us:", 1)
    with pytest.raises(InputError, match=r"kernels\.gemm\.l2_speedup"):
        load_prior(_write(tmp_path, bad))
    with pytest.raises(InputError, match=r"l2_speedup"):
        load_prior(_write(tmp_path, good.replace("l2_speedup: 1.", "l2_speedup: 0.", 1)))


def test_wave_factor_closed_form():
    """A GEMM's tiles run in waves of SM-count tiles: wave = waves·SMs·tm·tn/(M·N), to the power β."""
    from servesim.hwmodels.prior import KernelPrior

    k = KernelPrior(0.0, wave_exponent=1.0)  # 128 x 128 tiles
    n, sms = 4096, 132  # 32 column tiles
    assert k.wave_factor(128, n, sms) == pytest.approx(132 * 128 * 128 / (128 * 4096))  # 32 tiles: one wave
    assert k.wave_factor(528, n, sms) == pytest.approx(2 * 132 * 128 * 128 / (528 * 4096))  # 160 tiles: two
    assert k.wave_factor(4224, n, sms) == pytest.approx(1.0)  # 33 x 32 = 1056 tiles: eight full waves
    m = np.arange(1, 9000, dtype=float)
    q = k.wave_factor(m, n, sms)
    assert np.all(q >= 1 - 1e-12) and np.all(np.diff(q * m) >= -1e-9)  # the work done never shrinks with M
    np.testing.assert_allclose(q[::97], [k.wave_factor(x, n, sms) for x in m[::97]], rtol=1e-12)
    np.testing.assert_allclose(k.wave_factor(m, np.full_like(m, n), np.full_like(m, sms)), q, rtol=1e-12)
    assert np.all(k.wave_factor(m, np.zeros_like(m), np.full_like(m, sms)) == 1.0)  # width unknown: no term
    half = KernelPrior(0.0, wave_exponent=0.5)
    assert half.wave_factor(528, n, sms) == pytest.approx(k.wave_factor(528, n, sms) ** 0.5)
    assert KernelPrior(0.0).wave_factor(528, n, sms) == 1.0 and k.wave_factor(528, 0, sms) == 1.0


def test_gemm_ops_get_the_wave_term_through_every_path():
    """op_time_s (the breakdown), kernel_s with the GEMM's shape, and the cost model's hot path agree, at tile
    boundaries too; MoE experts and MLA's fused query path have no known N and get none."""
    from dataclasses import replace

    from servesim.hwmodels.cost import CostModel
    from servesim.hwmodels.ops import BatchShape
    from servesim.hwmodels.placement import Placement

    gpu = get_gpu("H100-SXM")
    base = prior_for(gpu)
    p = replace(base, kernels={**base.kernels, "gemm": replace(base.kernel("gemm"), wave_exponent=0.4)})
    flat = replace(base, kernels={**base.kernels, "gemm": replace(base.kernel("gemm"), wave_exponent=0.0)})
    model = MODELS["Llama-3.1-8B"]
    o = next(op for op in layer_ops(model) if op.name == "o")
    assert o.out_width == model.hidden_size and o.in_width == model.q_size
    for m in (1, 127, 128, 129, 528, 4096):
        flops, nbytes = o.evaluate({"new_tokens": m, "touched_experts": 0.0})
        t, _ = op_time_s(o, flops, nbytes, gpu, p)
        assert t == pytest.approx(p.kernel_s("gemm", flops, nbytes, gpu, "bf16", 0.0, m, o.out_width), rel=1e-12)
        assert t > op_time_s(o, flops, nbytes, gpu, flat)[0]  # never below a full wave's work
    cm = CostModel(Placement(model, gpu, 2, 1, "bf16", "bf16"), prior=p)
    for m in (1, 128, 256, 1024, 1056, 4096):
        shape = BatchShape(prefill_seqs=1, prefill_tokens=m, prefill_attn_pairs=m * (m + 1) / 2,
                           prefill_ctx_tokens=m, sampled_tokens=1)
        assert cm.step_time_s(shape) == pytest.approx(cm.step_time(shape).total_s, rel=1e-12)
    moe = [op for op in layer_ops(MODELS["Mixtral-8x7B"]) if op.name in ("gate_up", "down")]
    assert moe and all(op.out_width == 0 for op in moe)
    mla = next(op for op in layer_ops(MODELS["DeepSeek-V2-Lite"]) if op.name == "qkv")
    assert mla.out_width == 0


def test_wave_fields_only_on_gemm_kinds(tmp_path):
    good = PRIOR_FILE.read_text()

    def with_field(kind: str, line: str) -> str:
        return good.replace(f"      {kind}:\n        floor_us:", f"      {kind}:\n        {line}\n        floor_us:", 1)

    bad = with_field("norm", "wave_exponent: 0.3")
    with pytest.raises(InputError, match=r"kernels\.norm\.wave_exponent"):
        load_prior(_write(tmp_path, bad))
    bad = re.sub(r"wave_exponent: [0-9.]+", "wave_exponent: 1.5", good, count=1)
    with pytest.raises(InputError, match=r"kernels\.gemm\.wave_exponent"):
        load_prior(_write(tmp_path, bad))


def test_block_terms_closed_form():
    """One-block-per-token kernels: the row term runs in waves of blocks_per_sm · SMs tokens, and each block's
    fixed cost adds tokens · block / SMs to the bytes term; neither without an SM count."""
    from servesim.hwmodels.prior import KernelPrior

    bw, sms, row = 3e12, 132, 16384.0
    k = KernelPrior(1e-6, eff_memory=0.5, row_bytes_per_s=8e9, blocks_per_sm=2)
    one = row / 8e9
    for m, waves in ((1, 1), (264, 1), (265, 2), (528, 2), (529, 3)):
        assert k.row_waves(m, sms) == waves
        assert k.time_s(0.0, row * m * 1e-6, 1e15, bw, row, 0.0, 1.0, m, sms) == pytest.approx(1e-6 + waves * one)
    m = np.arange(1, 3000, dtype=float)
    np.testing.assert_array_equal(k.row_waves(m, np.full_like(m, sms)), [k.row_waves(x, sms) for x in m])
    t = k.time_s(0.0, row * m, 1e15, bw, row, 0.0, 1.0, m, sms)
    assert np.all(np.diff(t) >= 0) and t[-1] == pytest.approx(1e-6 + row * m[-1] / (bw * 0.5))  # bytes-bound
    assert k.row_waves(10_000, 0) == 1.0 and KernelPrior(0.0).row_waves(10_000, sms) == 1.0
    b = KernelPrior(0.0, eff_memory=0.5, block_s=0.2e-6)
    assert b.time_s(0.0, 1e6, 1e15, bw, 0.0, 0.0, 1.0, 2640, sms) == pytest.approx(1e6 / (bw * 0.5) + 20 * 0.2e-6)
    assert b.time_s(0.0, 1e6, 1e15, bw) == pytest.approx(1e6 / (bw * 0.5))  # no tokens given: no block term


def test_block_terms_agree_through_every_path():
    """op_time_s (the breakdown), kernel_s and the cost model's hot path agree with the block terms on, at the
    wave boundaries too (fused norm_act parts, TP shards whose rows shrink)."""
    from dataclasses import replace

    from servesim.hwmodels.cost import CostModel
    from servesim.hwmodels.ops import BatchShape
    from servesim.hwmodels.placement import Placement

    gpu = get_gpu("H100-SXM")
    base = prior_for(gpu)
    kinds = {kind: replace(base.kernel(kind), block_s=0.3e-6, blocks_per_sm=2) for kind in ("norm", "act", "rope")}
    p = replace(base, kernels={**base.kernels, **kinds})
    model = MODELS["Llama-3.1-8B"]
    for tp in (1, 4):
        cm = CostModel(Placement(model, gpu, tp, 1, "bf16", "bf16"), prior=p)
        plain = CostModel(Placement(model, gpu, tp, 1, "bf16", "bf16"), prior=base)
        for m in (1, 263, 264, 265, 528, 529, 4096):
            shape = BatchShape(prefill_seqs=1, prefill_tokens=m, prefill_attn_pairs=m * (m + 1) / 2,
                               prefill_ctx_tokens=m, sampled_tokens=1)
            st = cm.step_time(shape)
            assert cm.step_time_s(shape) == pytest.approx(st.total_s, rel=1e-12)
            more = st.op_s["norm_act"] - plain.step_time(shape).op_s["norm_act"]
            assert more > 0 if m >= 528 else more >= 0  # a row-bound launch pays no per-block cost
    act = kinds["act"]
    assert p.kernel_s("act", 0.0, 1e6, gpu, "bf16", 1e3, 1000) == pytest.approx(
        act.time_s(0.0, 1e6, gpu.peak_flops_per_s("bf16"), gpu.hbm_bytes_per_s, 1e3, gpu.l2_bytes, 1.0, 1000,
                   gpu.sm_count), rel=1e-12)


def test_block_fields_only_on_elementwise_kinds(tmp_path):
    good = PRIOR_FILE.read_text()
    for field in ("block_us: 0.2", "blocks_per_sm: 2"):
        bad = good.replace("      gemm:\n        floor_us:", f"      gemm:\n        {field}\n        floor_us:", 1)
        with pytest.raises(InputError, match=rf"kernels\.gemm\.{field.split(':')[0]}"):
            load_prior(_write(tmp_path, bad))
    assert any(k.blocks_per_sm == 2 for k in priors()["hopper"].kernels.values())  # RMSNorm's two blocks per SM


def test_wave_factor_takes_the_cheapest_candidate_tile():
    """With several candidate tiles the wave term is the least padded work over them, a smaller tile paying
    (largest area / its area)^γ: the heuristic's choice, never below one full wave of the chosen tile."""
    from servesim.hwmodels.prior import KernelPrior

    tiles = ((64, 128), (128, 128), (128, 256))
    k = KernelPrior(0.0, wave_exponent=1.0, tiles=tiles, tile_penalty=0.5)
    n, sms = 5504, 132  # 43 column tiles of 128, 22 of 256
    # M = 768: 128 x 256 tiles fill exactly one wave (6 x 22 = 132), the best of the three
    assert k.wave_factor(768, n, sms) == pytest.approx(132 * 128 * 256 / (768 * n))
    # M = 64: one row of 64 x 128 tiles (43 tiles, one wave) at twice the area penalty of 128 x 256... (4^0.5)
    q64 = 132 * 64 * 128 / (64 * n) * 2.0
    q128 = 132 * 128 * 128 / (64 * n) * 2**0.5
    q256 = 132 * 128 * 256 / (64 * n)
    assert k.wave_factor(64, n, sms) == pytest.approx(min(q64, q128, q256))
    m = np.arange(1, 5000, dtype=float)
    q = k.wave_factor(m, n, sms)
    np.testing.assert_allclose(q[::53], [k.wave_factor(x, n, sms) for x in m[::53]], rtol=1e-12)
    np.testing.assert_allclose(k.wave_factor(m, np.full_like(m, n), np.full_like(m, sms)), q, rtol=1e-12)
    assert np.all(q >= 1 - 1e-12)
    one = KernelPrior(0.0, wave_exponent=1.0, tiles=((128, 256),))
    assert np.all(q <= one.wave_factor(m, n, sms) + 1e-12)  # more candidates never cost more


def test_tile_fields_in_the_prior_file(tmp_path):
    good = PRIOR_FILE.read_text()
    assert priors()["hopper"].kernel("gemm").tiles[0] == (64, 128)
    bad = good.replace("        tiles:\n", "        tile_m: 128\n        tiles:\n", 1)
    with pytest.raises(InputError, match=r"kernels\.gemm\.tiles"):
        load_prior(_write(tmp_path, bad))
    bad = re.sub(r"        tiles:\n(        - - \d+\n          - \d+\n)+", "        tiles: [64, 128]\n", good, count=1)
    with pytest.raises(InputError, match=r"kernels\.gemm\.tiles"):
        load_prior(_write(tmp_path, bad))
    bad = good.replace("      norm:\n        floor_us:", "      norm:\n        tile_penalty: 0.3\n        floor_us:", 1)
    with pytest.raises(InputError, match=r"kernels\.norm\.tile_penalty"):
        load_prior(_write(tmp_path, bad))
