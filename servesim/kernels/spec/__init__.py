"""Speculative-decoding verification: one fused pass over the target logits that accepts or rejects each
draft token (rejection sampling, or greedy at temperature 0) and samples the correction or bonus token.

* ``verify``: the Triton kernels and the :func:`verify` launcher;
* ``sampling``: the in-kernel noise (counter-based hash) and the two-level Gumbel race;
* ``ref``: the torch/numpy reference (:func:`verify_ref`) that draws the same noise, and ``verify_bytes``.
"""

from .ref import verify_bytes, verify_ref
from .verify import verify

__all__ = ["verify", "verify_bytes", "verify_ref"]
