"""The engine's quantized formats on the CPU backend: W8A8 and FP8 (activations quantized per token), GPTQ beside
RTN and AWQ, mixed precision per layer group; logits against the unquantized float32 model within stated
tolerances, and `servesim replay --quant w8a8` end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from servesim.cli.main import main
from servesim.engine.calibration_inputs import linear_inputs
from servesim.engine.engine import EngineConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import ActQuantLinear, Linear, LlamaModel
from servesim.engine.weights import build_weights, linear_formats, needs_calibration, random_state_dict
from servesim.errors import ConfigError
from servesim.kernels.quant import W8A8Linear
from servesim.kernels.quant import w8a8 as W
from tests.engine_helpers import Seq, cache_for, schedule_three_steps, tiny_config, write_config

MC = tiny_config(hidden_size=128, intermediate_size=256, head_dim=32)


def _logits(fmt, quantizer="rtn", calib=None, seed=3):
    sd = random_state_dict(MC, seed=seed, dtype=torch.float32)
    model = LlamaModel(MC, build_weights(MC, sd, fmt, calib, quantizer), BACKENDS["torch"], 512)
    g = torch.Generator().manual_seed(0)
    a = Seq(torch.randint(0, MC.vocab_size, (21,), generator=g), [3, 7])
    b = Seq(torch.randint(0, MC.vocab_size, (19,), generator=g), [5, 1])
    return schedule_three_steps(model, cache_for(MC), a, b)


def _err(x, y) -> float:
    return max(((x[k] - y[k]).norm() / x[k].norm()).item() for k in x)


# Relative logit error against float32 on this random-weight model: W8A16 ~1e-2 (as tests/test_engine_model.py
# allows 0.05), W8A8 adds half a step of amax/127 per activation, FP8 (3 mantissa bits) an order more.
@pytest.mark.parametrize("fmt,tol", [("w8a8", 0.05), ("fp8", 0.15)])
def test_activation_quantizing_formats_stay_close_to_float32(fmt, tol):
    ref, got = _logits("bf16"), _logits(fmt)
    err = _err(ref, got)
    assert 0 < err < tol, err
    assert err > _err(ref, _logits("w8a16")) * (1.0 if fmt == "fp8" else 0.0)  # fp8 coarser than int8 weights


def test_cpu_w8a8_linear_quantizes_each_input_row():
    sd = random_state_dict(MC, seed=4, dtype=torch.float32)
    lin = build_weights(MC, sd, "w8a8").layers[0].o
    assert isinstance(lin, ActQuantLinear)
    x = torch.randn(5, MC.q_size)
    x[2] *= 100.0  # a row's scale is its own: the others keep their resolution
    expect = W.fake_quant_per_token(x) @ lin.weight.t()
    assert torch.allclose(lin(x), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.interpret
def test_w8a8_module_runs_the_triton_kernels_as_the_cpu_reference():
    """The module the engine builds on a GPU, under the interpreter, against the CPU path's ActQuantLinear."""
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(5))
    bias = torch.randn(48, generator=torch.Generator().manual_seed(6))
    mod = W8A8Linear.from_float(w, bias.to(torch.bfloat16))
    ref = ActQuantLinear(mod.dequantized_weight(), bias, W.fake_quant_per_token)
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(7))
    y = mod(x.to(torch.bfloat16)).float()
    r = ref(x.to(torch.bfloat16).float())
    assert ((y - r).norm() / r.norm()).item() < 1e-2


def test_mixed_precision_spec_places_each_linear():
    sd = random_state_dict(MC, seed=8, dtype=torch.float32)
    raw = dict(sd)
    w = build_weights(MC, sd, "w4a16,first:1=bf16,last:1=w8a8")
    first, last = w.layers[0], w.layers[-1]
    assert type(first.o) is Linear and torch.equal(first.o.weight, raw["model.layers.0.self_attn.o_proj.weight"])
    assert all(isinstance(getattr(last, n), ActQuantLinear) for n in ("qkv", "o", "gate_up", "down"))
    assert linear_formats(MC, "w4a16,attn=bf16")[0] == {"qkv": "bf16", "o": "bf16", "gate_up": "w4a16",
                                                       "down": "w4a16"}
    err_mixed = _err(_logits("bf16"), _logits("w4a16,attn=bf16"))
    assert 0 < err_mixed < _err(_logits("bf16"), _logits("w4a16"))  # fewer linears in int4: closer


def test_formats_the_engine_does_not_run_are_refused_naming_quant():
    with pytest.raises(ConfigError, match="the engine runs weight formats .* not fp16") as e:
        EngineConfig(weight_format="w4a16,attn=fp16", device="cpu")
    assert e.value.field == "quant"
    with pytest.raises(ConfigError, match="layer range is longer"):
        linear_formats(MC, "w4a16,first:3=bf16")
    with pytest.raises(ConfigError, match="quantizer must be one of rtn, awq, gptq"):
        EngineConfig(quantizer="hqq", device="cpu")
    assert EngineConfig(weight_format="w8a8", quantizer="gptq", device="cpu").weight_format == "w8a8"


def test_calibration_is_needed_where_a_quantizer_uses_it():
    assert needs_calibration(MC, "w4a16", "awq") and not needs_calibration(MC, "w8a8", "awq")
    assert needs_calibration(MC, "w8a8", "gptq") and not needs_calibration(MC, "fp8", "gptq")
    assert not needs_calibration(MC, "bf16", "gptq") and not needs_calibration(MC, "w4a16", "rtn")


@pytest.mark.parametrize("fmt", ["w4a16", "w8a16", "w8a8"])
def test_gptq_gets_each_linears_own_inputs_and_beats_rtn_on_them(fmt):
    """Each linear is quantized against the Hessian of its own calibration inputs: on those inputs (the objective
    GPTQ minimises) its output error is below round-to-nearest's, in every layer; the logits stay within the
    format's tolerance of float32."""
    sd = random_state_dict(MC, seed=3, dtype=torch.float32)
    toks = torch.randint(0, MC.vocab_size, (16, 64), generator=torch.Generator().manual_seed(11))
    calib = linear_inputs(MC, sd, EngineConfig(device="cpu"), torch.device("cpu"), toks, max_rows=1024)
    full, rtn = build_weights(MC, dict(sd)), build_weights(MC, dict(sd), fmt)
    gptq = build_weights(MC, dict(sd), fmt, calib, "gptq")
    for li in range(MC.num_layers):
        for name in ("qkv", "o", "gate_up", "down"):
            x = calib(li, name)
            assert x.shape == (1024, getattr(rtn.layers[li], name).in_features)
            exact = x @ getattr(full.layers[li], name).weight.t()
            e = {k: (x @ getattr(w.layers[li], name).weight.t() - exact).norm().item()
                 for k, w in (("rtn", rtn), ("gptq", gptq))}
            assert e["gptq"] < 0.8 * e["rtn"], (li, name, e)
    assert _err(_logits("bf16"), _logits(fmt, "gptq", calib)) < {"w4a16": 0.35, "w8a16": 0.05, "w8a8": 0.05}[fmt]


def test_replay_cli_runs_w8a8_on_the_cpu(tmp_path, capsys):
    model = write_config(MC, tmp_path / "m")
    rng = np.random.default_rng(0)
    trace = tmp_path / "t.csv"
    pd.DataFrame({"arrival_s": np.sort(rng.uniform(0, 0.2, 6)), "input_tokens": rng.integers(8, 60, 6),
                  "output_tokens": rng.integers(2, 8, 6)}).to_csv(trace, index=False)
    with pytest.raises(SystemExit) as e:
        main(["replay", "--device", "cpu", "--model", model, "--gpu", "H100-SXM", "--trace", str(trace),
              "--max-model-len", "256", "--max-num-seqs", "4", "--quant", "w8a8", "--quantizer", "gptq", "--json"])
    assert e.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    eng = doc["meta"]["engine"]
    assert doc["completed"] == 6 and (eng["weight_format"], eng["quantizer"]) == ("w8a8", "gptq")


@pytest.mark.parametrize("fmt", ["w8a16", "w4a16"])
def test_calibration_builds_its_quantized_linears_through_the_engines_path(fmt):
    from servesim.calibrate.ops import OpBuilder

    out = OpBuilder("cpu").gemm({"format": fmt, "n": 64, "k": 128}, 3)()
    assert out.shape == (3, 64) and torch.isfinite(out).all()
