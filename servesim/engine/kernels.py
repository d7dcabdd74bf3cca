"""The two kernel backends a forward pass runs on: the project's Triton kernels, or their torch references.

``TRITON`` is what the engine runs on a GPU (and what calibration times). ``TORCH`` runs the float32 torch
references (``*_ref``) of the same kernels, so a tiny model can be served on a CPU with the same code path
(CI replays a trace this way) and the Triton path can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from servesim.kernels import elementwise as ew
from servesim.kernels.attention import decode as dec
from servesim.kernels.attention import kv_cache as kvc
from servesim.kernels.attention import prefill as pre


@dataclass(frozen=True)
class Backend:
    name: str
    rms_norm: Callable
    rotary: Callable
    silu_mul: Callable
    write_kv: Callable
    prefill_attention: Callable
    decode_attention: Callable


def _prefill_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens, max_q_len=None, out=None, **scales):
    out[:] = pre.prefill_attention_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, kv_lens, **scales).to(out.dtype)
    return out


def _decode_ref(q, k_cache, v_cache, block_tables, kv_lens, max_kv_len=None, out=None, num_splits=None, counters=None,
                split_per_seq=False, **scales):
    out.view(q.shape)[:] = dec.decode_attention_ref(q, k_cache, v_cache, block_tables, kv_lens, **scales).to(out.dtype)
    return out


TRITON = Backend("triton", ew.rms_norm, ew.rotary, ew.silu_mul, kvc.write_kv, pre.prefill_attention,
                 dec.decode_attention)
TORCH = Backend(
    "torch",
    rms_norm=lambda x, w, eps, residual=None, out=None: _into(out, ew.rms_norm_ref(x, w, eps, residual)),
    rotary=ew.rotary_ref,
    silu_mul=lambda gu, out=None: _into(out, ew.silu_mul_ref(gu)),
    write_kv=kvc.write_kv_ref,
    prefill_attention=_prefill_ref,
    decode_attention=_decode_ref,
)
BACKENDS = {"triton": TRITON, "torch": TORCH}


def _into(out: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    if out is None:
        return value
    out.copy_(value)
    return out
