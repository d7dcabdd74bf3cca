"""Weight-format specs: mixed precision per layer group, W8A8 with per-token activation quantization, FP8.

The parser (canonical spellings, one-line errors naming ``quant``), the operators a mixed or W8A8 layer runs
(closed forms in FLOPs and bytes), memory between the pure formats, the prior's borrowed kinds, the calibrated
model over a mixed spec, and the Scenario/CLI boundary.
"""

from __future__ import annotations

import pytest

from servesim.cli.main import main
from servesim.errors import ConfigError
from servesim.hwmodels.calibrated import CalibratedCostModel, ProfileMismatch
from servesim.hwmodels.cost import CostModel
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.memory import stage_weight_bytes
from servesim.hwmodels.models import MODELS, get_weight_format
from servesim.hwmodels.ops import decode_shape, layer_ops, prefill_shape, step_flops_bytes
from servesim.hwmodels.placement import Placement
from servesim.hwmodels.precision import parse_quant
from servesim.hwmodels.prior import BORROWED_KINDS, prior_for
from servesim.hwmodels.profile import load_profile, shipped_profiles
from servesim.sim.config import make_scenario

LLAMA = MODELS["Llama-3.1-8B"]  # 32 layers, h 4096, qkv 4096 -> 6144, MLP 14336


@pytest.mark.parametrize(("spec", "canonical"), [
    ("bf16", "bf16"),
    ("W4A16", "w4a16"),
    ("w4a16,mlp=w4a16", "w4a16"),
    ("mlp=w4a16", "bf16,mlp=w4a16"),
    ("w4a16, attn = bf16", "w4a16,attn=bf16"),
    ("w4a16,qkv=bf16,o=bf16", "w4a16,attn=bf16"),
    ("w4a16,o=bf16", "w4a16,o=bf16"),
    ("w4a16,last:2=bf16,first:2=bf16", "w4a16,first:2=bf16,last:2=bf16"),
    ("bf16,first:2=bf16", "bf16"),  # a range that changes nothing
    ("attn=bf16,mlp=w8a8", "bf16,mlp=w8a8"),
])
def test_specs_have_one_canonical_spelling(spec, canonical):
    assert parse_quant(spec).name == canonical
    assert make_scenario({"quant": spec}).quant == canonical


@pytest.mark.parametrize(("spec", "needle"), [
    ("w4a17", "unknown weight format 'w4a17'; closest: w4a16"),
    ("w4a16,atn=bf16", "unknown layer group 'atn'; closest: attn"),
    ("w4a16,attn=bf17", "unknown weight format 'bf17'"),
    ("w4a16,bf16", "'bf16' is not GROUP=FORMAT"),
    ("w4a16,,attn=bf16", "empty term"),
    ("w4a16,attn=bf16,qkv=w8a16", "qkv given two formats (bf16, w8a16)"),
    ("w4a16,first:0=bf16", "give first:N once, N >= 1"),
    ("w4a16,first:40=bf16", "longer than the model's 32 layers"),
    ("w4a16,first:20=bf16,last:20=w8a16", "overlap in a 32-layer model"),
])
def test_bad_specs_are_one_line_naming_quant(spec, needle):
    with pytest.raises(ConfigError) as err:
        make_scenario({"quant": spec})
    assert err.value.field == "quant" and needle in str(err.value) and "\n" not in str(err.value)


def test_layer_groups_split_the_layers():
    spec = parse_quant("w4a16,attn=bf16,first:2=bf16,last:1=w8a16")
    groups = spec.layer_groups(32)
    assert [round(f * 32) for f, _ in groups] == [29, 2, 1]
    assert groups[0][1] == {"qkv": "bf16", "o": "bf16", "gate_up": "w4a16", "down": "w4a16"}
    assert spec.layer_formats(0, 32)["down"] == "bf16" and spec.layer_formats(31, 32)["qkv"] == "w8a16"


def test_mixed_layers_sum_to_the_model():
    """first:2 + last:2 in bf16, the rest W4A16: every GEMM's FLOPs are the model's, its weights the layers'
    shares of each format, and the bf16 layers' GEMMs are their own operators (``name@bf16``)."""
    ops = {op.name: op for op in layer_ops(LLAMA, 1, "w4a16,first:2=bf16,last:2=bf16")}
    w4, bf = get_weight_format("w4a16"), get_weight_format("bf16")
    shapes = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
    for name, (k, n) in shapes.items():
        main_op, edge = ops[name], ops[f"{name}@bf16"]
        assert (main_op.kind, edge.kind) == ("gemm_w4a16", "gemm")
        assert (main_op.fraction, edge.fraction) == (28 / 32, 4 / 32)
        assert main_op.flops["new_tokens"] + edge.flops["new_tokens"] == pytest.approx(2 * k * n)
        assert main_op.const_bytes + edge.const_bytes == pytest.approx(
            28 / 32 * w4.matrix_bytes(k, n) + 4 / 32 * bf.matrix_bytes(k, n))
    assert ops["norm_act"].fraction == pytest.approx(1.0)  # format-free operators are whole again
    bytes_ = stage_weight_bytes(LLAMA, weight_format="w4a16,first:2=bf16,last:2=bf16")
    assert stage_weight_bytes(LLAMA, weight_format="w4a16") < bytes_ < stage_weight_bytes(LLAMA)
    assert LLAMA.weight_bytes("w4a16,first:2=bf16,last:2=bf16") == pytest.approx(bytes_, rel=1e-6)


def test_attention_in_bf16_costs_exactly_its_weights():
    mixed = stage_weight_bytes(LLAMA, weight_format="w4a16,attn=bf16")
    delta = mixed - stage_weight_bytes(LLAMA, weight_format="w4a16")
    w4, bf = get_weight_format("w4a16"), get_weight_format("bf16")
    per_layer = sum(bf.matrix_bytes(k, n) - w4.matrix_bytes(k, n) for k, n in ((4096, 6144), (4096, 4096)))
    assert delta == pytest.approx(32 * per_layer)


def test_w8a8_quantizes_activations_per_token_and_runs_int8_gemms():
    ops = {op.name: op for op in layer_ops(LLAMA, 1, "w8a8")}
    assert {ops[n].kind for n in ("qkv", "o", "gate_up", "down")} == {"gemm_w8a8"}
    assert ops["qkv"].compute_dtype == "int8"
    # int8 input (1 B), bf16 output, int8 weights + fp32 per-channel scales
    assert ops["qkv"].bytes["new_tokens"] == 4096 * 1 + 6144 * 2
    assert ops["qkv"].const_bytes == 4096 * 6144 + 6144 * 4
    # one quantization kernel per linear: read the bf16 row, write int8 + one fp32 scale
    for name, k in {"qkv": 4096, "o": 4096, "gate_up": 4096, "down": 14336}.items():
        q = ops[f"act_quant_{name}"]
        assert q.kind == "elementwise" and q.parts == (("act_quant", 3 * k + 4),)
    f, b = step_flops_bytes(prefill_shape(1000), LLAMA, weight_format="w8a8")["act_quant_down"]
    assert (f, b) == (0, 32 * 1000 * (3 * 14336 + 4))
    w8a16 = step_flops_bytes(decode_shape(8, 100), LLAMA, weight_format="w8a16")
    assert not any(n.startswith("act_quant") for n in w8a16)
    assert "act_quant_qkv" not in {op.name for op in layer_ops(LLAMA, 1, "w8a8,attn=bf16")}


def test_new_kinds_borrow_documented_parameters():
    prior = prior_for(get_gpu("H200"))
    for kind, (source, _) in BORROWED_KINDS.items():
        k, src = prior.kernel(kind), prior.kernel(source)
        assert (k.floor_s, k.eff_compute, k.eff_memory, k.sharpness) == (src.floor_s, src.eff_compute, src.eff_memory,
                                                                         src.sharpness)
        assert k.source.startswith(f"borrowed from {source}") and "no measurements" in k.source
    # a long W8A8 prefill is compute bound at the int8 peak: about twice as fast in its GEMMs as bf16
    h200 = get_gpu("H200")
    bf = CostModel(Placement(LLAMA, h200, weight_format="bf16")).step_time(prefill_shape(8192))
    i8 = CostModel(Placement(LLAMA, h200, weight_format="w8a8")).step_time(prefill_shape(8192))
    assert i8.bound["gate_up"] == "compute" and 0.45 < i8.op_s["gate_up"] / bf.op_s["gate_up"] < 0.55


def test_calibrated_model_prices_a_mixed_spec_from_its_formats():
    prof = load_profile(shipped_profiles()["H200"])
    place = lambda q: Placement(LLAMA, get_gpu("H200"), weight_format=q)  # noqa: E731
    cost = {q: CalibratedCostModel(place(q), prof) for q in ("bf16", "w4a16", "w4a16,attn=bf16", "w4a16,mlp=w4a16")}
    for shape in (decode_shape(16, 2000), prefill_shape(1024), prefill_shape(4096)):
        t = {q: c.step_time(shape) for q, c in cost.items()}
        assert t["w4a16,mlp=w4a16"] == t["w4a16"]  # the same spec, the same bits
        mixed = t["w4a16,attn=bf16"].op_s  # each GEMM from its own format's tables
        assert (mixed["qkv"], mixed["o"]) == (t["bf16"].op_s["qkv"], t["bf16"].op_s["o"])
        assert (mixed["gate_up"], mixed["down"]) == (t["w4a16"].op_s["gate_up"], t["w4a16"].op_s["down"])
    # host time and step fits come from the spec's main format (w4a16 here): above its eager floor, the step lies
    # between the two formats'
    t = {q: c.step_time_s(prefill_shape(4096)) for q, c in cost.items()}
    assert t["bf16"] < t["w4a16,attn=bf16"] < t["w4a16"]
    with pytest.raises(ProfileMismatch, match="quantizes activations per token"):
        CalibratedCostModel(place("w8a8"), prof)


def test_cli_takes_a_mixed_spec(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--quant", "w4a16,attn=bf16,first:2=bf16", "--num-requests", "20", "--json"])
    assert exit_.value.code == 0 and '"quant": "w4a16,attn=bf16,first:2=bf16"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--quant", "w4a16,mpl=bf16", "--num-requests", "20"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "field 'quant'" in err and "closest: mlp" in err
