"""Model weights: random for any config (shape-faithful timing without downloads), or a local HuggingFace
safetensors directory; linear layers fused (q/k/v, gate/up) and optionally quantized with the project's quantizers
(W8A16, W4A16, W8A8 by RTN, AWQ for int4, GPTQ; FP8 by per-channel scaling), one format or mixed precision per
layer group. Tensors use HuggingFace's names until :func:`build_weights` fuses them,
so the correctness tests load the very same state dict into ``transformers``.

Under tensor parallelism each rank holds a :class:`Shard` of every tensor: the rows of its query heads, KV
heads and MLP share in the column-parallel q/k/v and gate/up projections, the matching columns of the
row-parallel O and down projections, its block of the LM head's vocabulary rows (zero rows pad the last block);
embeddings and norms whole. Random weights are drawn tensor by tensor exactly as at TP 1 and cut, so the ranks
together hold the TP-1 model of the same seed; safetensors are read slice by slice (a rank never loads the
whole model)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from servesim.engine.config import EngineModelConfig
from servesim.engine.model import ActQuantLinear, Layer, Linear, Weights
from servesim.errors import ConfigError, InputError
from servesim.hwmodels.precision import QuantSpec, parse_quant

WEIGHT_FORMATS = ("bf16", "w8a16", "w4a16", "w8a8", "fp8")  # any spec over these (hwmodels.precision)
QUANTIZERS = ("rtn", "awq", "gptq")
INIT_STD = 0.02


def hf_names(cfg: EngineModelConfig) -> dict[str, tuple[int, ...]]:
    """HuggingFace parameter names of ``cfg`` with their shapes."""
    h, q, kv, i, v = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size, cfg.vocab_size
    names = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.tied_embeddings:
        names["lm_head.weight"] = (v, h)
    for li in range(cfg.num_layers):
        p = f"model.layers.{li}."
        names.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                      p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                      p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                      p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                      p + "mlp.down_proj.weight": (h, i)})
        if cfg.qkv_bias:
            names.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                          p + "self_attn.v_proj.bias": (kv,)})
    return names


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``tp``: which rows or columns of each HF tensor of ``cfg`` (the whole model) it holds."""

    cfg: EngineModelConfig
    rank: int
    tp: int

    def index(self, name: str) -> tuple[int, int, int, int] | None:
        """(dim, start, stop, length after padding) of ``name``'s slice on this rank; None: held whole."""
        c, r, tp = self.cfg, self.rank, self.tp
        part = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
        hd = c.head_dim
        if part.startswith(("self_attn.q_proj.", "self_attn.o_proj.")):
            n = c.num_heads // tp * hd
            return (1 if "o_proj" in part else 0, r * n, (r + 1) * n, n)
        if part.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            heads = max(c.num_kv_heads // tp, 1)
            first = r * c.num_kv_heads // tp if c.num_kv_heads < tp else r * heads  # replicated below tp heads
            return (0, first * hd, (first + heads) * hd, heads * hd)
        if part.startswith(("mlp.gate_proj.", "mlp.up_proj.", "mlp.down_proj.")):
            n = c.intermediate_size // tp
            return (1 if "down_proj" in part else 0, r * n, (r + 1) * n, n)
        if name == "lm_head.weight":
            n = -(-c.vocab_size // tp)
            return (0, min(r * n, c.vocab_size), min((r + 1) * n, c.vocab_size), n)
        return None

    def cut(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """This rank's part of the whole tensor ``t`` (a copy, so the whole tensor can be freed)."""
        idx = self.index(name)
        if idx is None:
            return t
        dim, a, b, _ = idx
        return self.pad(name, t.narrow(dim, a, b - a)).clone(memory_format=torch.contiguous_format)

    def pad(self, name: str, part: torch.Tensor) -> torch.Tensor:
        """``part`` with the zero rows that fill the last block of the vocabulary."""
        dim, a, b, n = self.index(name)
        if b - a == n:
            return part
        shape = list(part.shape)
        shape[dim] = n - (b - a)
        return torch.cat([part, part.new_zeros(shape)], dim)

    def vocab_rows(self, embed: torch.Tensor) -> torch.Tensor:
        """The LM head of tied embeddings: this rank's block of the embedding's rows."""
        return self.cut("lm_head.weight", embed)


def random_state_dict(cfg: EngineModelConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      device: str | torch.device = "cpu", shard: Shard | None = None) -> dict[str, torch.Tensor]:
    """Random weights in HF naming: N(0, 0.02) matrices and biases, norm weights near 1 (``shard``: this rank's
    parts of the same draws)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in hf_names(cfg).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        else:
            t = INIT_STD * torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        out[name] = (shard.cut(name, t) if shard else t).to(dtype)
    return out


def load_state_dict(path: str | Path, cfg: EngineModelConfig, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu", shard: Shard | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a local HF model directory's ``*.safetensors`` files, checked against ``cfg`` (``shard``:
    only this rank's slices are read)."""
    from safetensors import safe_open

    root = Path(path)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise InputError("no *.safetensors files", file=str(root))
    want = hf_names(cfg)
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for name in [n for n in h.keys() if n in want and n not in out]:  # noqa: SIM118
                sl = h.get_slice(name)
                got = tuple(sl.get_shape())
                if got != want[name]:
                    raise InputError(f"shape {got}, expected {want[name]}", file=str(root), field=name)
                idx = shard.index(name) if shard else None
                if idx is None:
                    t = sl[:]
                else:
                    dim, lo, hi, _ = idx
                    t = shard.pad(name, sl[lo:hi] if dim == 0 else sl[:, lo:hi])
                out[name] = t.to(device=device, dtype=dtype)
    missing = [n for n in want if n not in out]
    if missing:
        raise InputError("missing tensor", file=str(root), field=missing[0])
    return {name: out[name] for name in want}


def save_state_dict(sd: dict[str, torch.Tensor], cfg: EngineModelConfig, path: str | Path) -> None:
    """Write ``sd`` and ``config.json`` as a HuggingFace model directory."""
    from safetensors.torch import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(cfg.hf_config_dict(), indent=1))


def _quantized(weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, quantizer: str = "rtn",
               x_calib: torch.Tensor | None = None):
    """The linear layer in ``fmt`` by ``quantizer`` (AWQ: int4 only; GPTQ: int4 and int8; the others RTN), on
    ``x_calib`` (its input activations) where the quantizer uses them. Off CUDA a quantized layer runs its
    reference: the dequantized weight (and, for W8A8 and FP8, the input quantized per token and back)."""
    if fmt == "bf16":
        return Linear(weight, bias)
    from servesim.kernels.quant import Fp8Linear, QuantLinear, W8A8Linear
    from servesim.kernels.quant import fp8 as F8
    from servesim.kernels.quant import quantize as Q
    from servesim.kernels.quant import w8a8 as W8

    gptq = quantizer == "gptq" and fmt != "fp8"
    if gptq and x_calib is None:
        raise ValueError("GPTQ needs calibration inputs")
    if fmt == "fp8":
        q = Fp8Linear.from_float(weight, bias)
    elif fmt in ("w8a16", "w8a8"):
        codes, scale = _gptq(weight, x_calib, 8) if gptq else Q.quantize_int8_per_channel(weight)
        q = (W8A8Linear(codes, scale, bias) if fmt == "w8a8" else
             QuantLinear(weight.shape[1], weight.shape[0], "int8", Q.pack_int8(codes), scale, None, bias))
    elif gptq:
        codes, scales, zeros = _gptq(weight, x_calib, 4)
        q = QuantLinear(weight.shape[1], weight.shape[0], "int4", Q.pack_int4(codes),
                        Q.pack_scales_zeros(scales, zeros), GPTQ_GROUP, bias)
    else:
        q = QuantLinear.from_float(weight, "int4", bias=bias, x_calib=x_calib if quantizer == "awq" else None)
    if weight.device.type == "cuda":
        return q
    scaled = q.dequantized_weight()
    if getattr(q, "input_scale", None) is not None:
        scaled = scaled / q.input_scale[None, :]
    if fmt in ("w8a8", "fp8"):
        act = W8.fake_quant_per_token if fmt == "w8a8" else F8.fake_quant_fp8_per_token
        return ActQuantLinear(scaled.to(weight.dtype), bias, act)
    return Linear(scaled.to(weight.dtype), bias)


GPTQ_GROUP = 128


def _gptq(weight: torch.Tensor, x_calib: torch.Tensor, bits: int):
    from servesim.kernels.quant.gptq import gptq_quantize, hessian

    return gptq_quantize(weight.float(), hessian(x_calib.to(weight.device)), bits, GPTQ_GROUP)


def engine_spec(weight_format: str) -> QuantSpec:
    """The parsed spec (``hwmodels.precision``: one format, or mixed precision per layer group); ConfigError naming
    ``quant`` for a bad spec or a format the engine does not run."""
    spec = parse_quant(weight_format)
    bad = [f for f in spec.formats() if f not in WEIGHT_FORMATS]
    if bad:
        raise ConfigError(f"the engine runs weight formats {', '.join(WEIGHT_FORMATS)} (and specs over them), "
                          f"not {', '.join(bad)}", field="quant")
    return spec


def linear_formats(cfg: EngineModelConfig, weight_format: str) -> list[dict[str, str]]:
    """The format of each linear (qkv, o, gate_up, down) of every layer under a spec (:func:`engine_spec`; a layer
    range the model does not have is a ConfigError too)."""
    spec = engine_spec(weight_format)
    spec.check_layers(cfg.num_layers)
    return [spec.layer_formats(li, cfg.num_layers) for li in range(cfg.num_layers)]


def needs_calibration(cfg: EngineModelConfig, weight_format: str, quantizer: str) -> bool:
    """Whether ``quantizer`` uses the linears' input activations for any linear of the spec."""
    used = {f for layer in linear_formats(cfg, weight_format) for f in layer.values()}
    if quantizer == "awq":
        return "w4a16" in used
    return quantizer == "gptq" and bool(used - {"bf16", "fp8"})


def build_weights(cfg: EngineModelConfig, sd: dict[str, torch.Tensor], weight_format: str = "bf16",
                  calib: Callable[[int, str], torch.Tensor | None] | None = None, quantizer: str = "rtn",
                  tied_head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Weights:
    """Fuse q/k/v and gate/up and quantize the linear layers (LM head and embeddings stay in ``sd``'s dtype).

    ``weight_format`` is a spec (``hwmodels.precision``): one format, or mixed precision per layer group.
    ``quantizer`` is rtn, awq or gptq; ``calib(layer, name)`` returns the calibration activations feeding linear
    ``name`` (qkv, o, gate_up, down) of a layer, which AWQ and GPTQ need. Consumes ``sd`` (tensors are dropped
    as they are fused). ``tied_head(embed)``: the LM head of tied embeddings (under TP, :meth:`Shard.vocab_rows`;
    else the embedding).
    """
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {quantizer!r}")
    formats = linear_formats(cfg, weight_format)
    layers = []
    for li in range(cfg.num_layers):
        p = f"model.layers.{li}."
        take = lambda n, p=p: sd.pop(p + n)  # noqa: E731
        qkv = torch.cat([take("self_attn.q_proj.weight"), take("self_attn.k_proj.weight"),
                         take("self_attn.v_proj.weight")])
        bias = None
        if cfg.qkv_bias:
            bias = torch.cat([take("self_attn.q_proj.bias"), take("self_attn.k_proj.bias"),
                              take("self_attn.v_proj.bias")])
        gate_up = torch.cat([take("mlp.gate_proj.weight"), take("mlp.up_proj.weight")])
        fmt = formats[li]

        def lin(name, w, b=None, li=li, fmt=fmt):
            x = calib(li, name) if calib is not None and fmt[name] != "bf16" else None
            return _quantized(w, b, fmt[name], quantizer, x)

        layers.append(Layer(
            input_norm=take("input_layernorm.weight"),
            qkv=lin("qkv", qkv, bias),
            o=lin("o", take("self_attn.o_proj.weight")),
            post_norm=take("post_attention_layernorm.weight"),
            gate_up=lin("gate_up", gate_up),
            down=lin("down", take("mlp.down_proj.weight")),
        ))
        del qkv, gate_up
    embed = sd.pop("model.embed_tokens.weight")
    head = (tied_head(embed) if tied_head else embed) if cfg.tied_embeddings else sd.pop("lm_head.weight")
    return Weights(embed=embed, layers=layers, norm=sd.pop("model.norm.weight"), lm_head=Linear(head))
