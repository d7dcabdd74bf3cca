"""Read a local HuggingFace ``config.json`` into :class:`ModelSpec` fields (no network, no transformers).

Handles ``text_config`` nesting (multimodal wrappers), an explicit ``head_dim`` (null means
hidden/heads), MoE keys (``num_local_experts`` / ``num_experts`` / ``n_routed_experts``,
``num_experts_per_tok``, ``moe_intermediate_size``; shared experts as ``shared_expert_intermediate_size``
(Qwen2-MoE) or ``n_shared_experts`` (DeepSeek); dense layers from ``first_k_dense_replace`` /
``moe_layer_freq`` (DeepSeek) or ``mlp_only_layers`` / ``decoder_sparse_step`` (Qwen-MoE)), multi-head
latent attention (``kv_lora_rank``, ``q_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``,
``v_head_dim``), ``torch_dtype`` / ``dtype`` and ``tie_word_embeddings`` (default false, as in the Llama,
Mistral and Qwen2 config classes).
"""

from __future__ import annotations

import json
from pathlib import Path

from servesim.errors import InputError

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
_QKV_BIAS_TYPES = {"qwen2", "qwen2_moe"}  # these architectures always have q/k/v bias
_ENCODER_TYPES = {"bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta", "albert"}


def _architectures(d: dict, file: str) -> list[str]:
    archs = d.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise InputError(f"expected a list of class names, got {archs!r}", file=file, field="architectures")
    return archs


def _check_decoder_only(top: dict, cfg: dict, file: str) -> None:
    """Refuse what is not a decoder-only causal LM: servesim models autoregressive serving of such models."""
    if top.get("is_encoder_decoder") or cfg.get("is_encoder_decoder"):
        arch = ", ".join(_architectures(top, file)) or str(top.get("model_type", "?"))
        raise InputError(f"{arch} is an encoder-decoder model; servesim takes decoder-only causal LMs",
                         file=file, field="is_encoder_decoder")
    archs = _architectures(top, file) or _architectures(cfg, file)
    if archs and not any(str(a).endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")) for a in archs):
        raise InputError(f"{', '.join(map(str, archs))} is not a decoder-only causal LM; servesim takes "
                         "architectures such as LlamaForCausalLM", file=file, field="architectures")
    if str(top.get("model_type", "")).lower() in _ENCODER_TYPES:
        raise InputError(f"model_type {top['model_type']!r} is an encoder; servesim takes decoder-only causal LMs",
                         file=file, field="model_type")


MAX_SIZE = 2**31  # any width, count or length of a real model is far below it
MAX_LAYERS = 100_000


def _int(cfg: dict, keys: tuple[str, ...], file: str, default: int | None = None) -> int:
    for key in keys:
        if cfg.get(key) is not None:
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"expected a positive integer, got {value!r}", file=file, field=key)
            limit = MAX_LAYERS if key in ("num_hidden_layers", "n_layer") else MAX_SIZE
            if value > limit:
                raise InputError(f"{value:,} is too large (at most {limit:,})", file=file, field=key)
            return value
    if default is None:
        raise InputError("missing", file=file, field=keys[0])
    return default


def _count(cfg: dict, key: str, file: str) -> int:
    """A non-negative integer key (0 when absent or null)."""
    value = cfg.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"expected a non-negative integer, got {value!r}", file=file, field=key)
    if value > MAX_SIZE:
        raise InputError(f"{value:,} is too large (at most {MAX_SIZE:,})", file=file, field=key)
    return value


def _dense_layers(cfg: dict, layers: int, file: str) -> int:
    """How many layers of an MoE model keep a dense MLP (layer i is MoE as the HF modeling code decides)."""
    if "first_k_dense_replace" in cfg or "moe_layer_freq" in cfg:  # DeepSeek
        first, freq = _count(cfg, "first_k_dense_replace", file), _count(cfg, "moe_layer_freq", file) or 1
        return sum(1 for i in range(layers) if not (i >= first and i % freq == 0))
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise InputError(f"expected a list of layer indices, got {only!r}", file=file, field="mlp_only_layers")
    step = _count(cfg, "decoder_sparse_step", file) or 1  # Qwen-MoE
    return sum(1 for i in range(layers) if i in only or (i + 1) % step)


def _mla_fields(cfg: dict, file: str) -> dict:
    """Multi-head latent attention (DeepSeek-V2/V3) sizes, or {} for ordinary attention."""
    rank = _count(cfg, "kv_lora_rank", file)
    if not rank:
        return {}
    nope, rope = _int(cfg, ("qk_nope_head_dim",), file), _int(cfg, ("qk_rope_head_dim",), file)
    return dict(
        kv_lora_rank=rank,
        q_lora_rank=_count(cfg, "q_lora_rank", file),
        qk_rope_head_dim=rope,
        v_head_dim=_int(cfg, ("v_head_dim",), file, default=nope),
        head_dim=nope + rope,
    )


def read_hf_config(path: str | Path) -> dict:
    """The :class:`~servesim.hwmodels.models.ModelSpec` fields of a HuggingFace ``config.json``; errors name
    the file and the key. Only decoder-only causal LMs are accepted (an encoder, an encoder-decoder or a
    masked LM is refused with its architecture named)."""
    file = str(path)
    try:
        top = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=file) from None
    except UnicodeDecodeError:
        raise InputError("not a text file (not UTF-8)", file=file) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} at line {exc.lineno}", file=file) from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits; nesting past the stack
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise InputError(f"not valid JSON: {what}", file=file) from None
    if not isinstance(top, dict):
        raise InputError("expected a JSON object", file=file)
    cfg = top.get("text_config") or top
    if not isinstance(cfg, dict):
        raise InputError("expected an object", file=file, field="text_config")
    _check_decoder_only(top, cfg, file)

    hidden = _int(cfg, ("hidden_size", "n_embd", "d_model"), file)
    heads = _int(cfg, ("num_attention_heads", "n_head"), file)
    head_dim = _int(cfg, ("head_dim",), file, default=hidden // heads)
    if cfg.get("head_dim") is None and hidden % heads:
        raise InputError(
            f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}; give head_dim",
            file=file,
            field="head_dim",
        )
    kv_heads = _int(cfg, ("num_key_value_heads",), file, default=heads)
    if heads % kv_heads:
        raise InputError(
            f"num_attention_heads {heads} is not a multiple of {kv_heads}",
            file=file,
            field="num_key_value_heads",
        )
    experts = _int(cfg, ("num_local_experts", "num_experts", "n_routed_experts"), file, default=0)
    top_k = _int(cfg, ("num_experts_per_tok",), file) if experts else 0
    if top_k > experts:
        raise InputError(
            f"{top_k} experts per token but only {experts} experts", file=file, field="num_experts_per_tok"
        )
    moe_inter = _int(cfg, ("moe_intermediate_size",), file, default=0) if experts else 0
    inter = _int(cfg, ("intermediate_size", "ffn_dim", "n_inner"), file, default=moe_inter or None)
    layers = _int(cfg, ("num_hidden_layers", "n_layer"), file)
    shared = dense = 0
    if experts:
        shared = _count(cfg, "shared_expert_intermediate_size", file) or (
            _count(cfg, "n_shared_experts", file) * (moe_inter or inter)
        )
        dense = _dense_layers(cfg, layers, file)
        if dense == layers:
            raise InputError("every layer is dense: no layer uses the experts", file=file,
                             field="first_k_dense_replace" if "first_k_dense_replace" in cfg else "mlp_only_layers")
    mla = _mla_fields(cfg, file)

    raw_dtype = cfg.get("torch_dtype") or cfg.get("dtype") or top.get("torch_dtype") or top.get("dtype")
    raw_dtype = "bfloat16" if raw_dtype is None else str(raw_dtype).removeprefix("torch.")
    if raw_dtype not in _DTYPES:
        raise InputError(
            f"unknown dtype {raw_dtype!r}; expected one of {sorted(_DTYPES)}", file=file, field="torch_dtype"
        )
    tied = cfg.get("tie_word_embeddings", top.get("tie_word_embeddings", False))
    if not isinstance(tied, bool):
        raise InputError(f"expected true or false, got {tied!r}", file=file, field="tie_word_embeddings")
    model_type = str(cfg.get("model_type") or top.get("model_type") or "")
    name = Path(path).parent.name or Path(path).stem
    return dict(
        name=name,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=mla.pop("head_dim", head_dim),
        intermediate_size=inter,
        vocab_size=_int(cfg, ("vocab_size",), file),
        tied_embeddings=tied,
        num_experts=experts,
        experts_per_token=top_k,
        moe_intermediate_size=moe_inter,
        qkv_bias=bool(cfg.get("attention_bias") or cfg.get("qkv_bias")) or model_type in _QKV_BIAS_TYPES,
        dtype=_DTYPES[raw_dtype],
        max_position_embeddings=_int(cfg, ("max_position_embeddings",), file, 0),
        source=file,
        shared_expert_intermediate_size=shared,
        num_dense_layers=dense,
        **mla,
    )
