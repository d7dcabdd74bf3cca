"""The token buckets of the engine's piecewise CUDA graphs, torch-free: the one rule the engine pads steps to
(``servesim/engine/piecewise.py``) and the calibrated cost model prices them at (``hwmodels/calibrated.py``).

A step with a prefill chunk of ``n`` tokens (with its decodes) runs padded to the smallest bucket ``T >= n``:
multiples of 16 below 512, then sixteen buckets per octave (steps of 32 to 1,024, of 64 to 2,048, ...), then the
largest, ``max_num_batched_tokens + max_num_seqs`` (a full chunk budget beside every running sequence's decode)
or :data:`PIECEWISE_MAX_TOKENS`, whichever is smaller.
Padding is at most 15 rows below 512 and under 1/16 of the step above it: the first H200 runs padded to powers of
two, and a 1,100-token step ran 2,048 rows, which cost more than the host time the graphs saved. Past the largest
bucket the step runs eagerly. The LM head of a piecewise
step runs over ``min(T, max_num_seqs)`` rows: every row a step samples is a sequence's.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

FIRST_BUCKET = 16
# Steps with more rows than this run eagerly. Measured on the H200 with Llama-3.1-8B (bench/results/
# step_breakdown-h200-2026-12-04.md, one chunk beside 16 decodes): eager steps are host-bound near 22-24 ms up to
# ~768 tokens, where piecewise steps take 10-16 ms; at 768 both take 22-25 ms, and past it the GPU hides the eager
# launches while the pieces still pay their padding and the gaps between graphs (1,024: 26.8 vs 28.7 ms; 1,536:
# 39.3 vs 43.5 ms).
PIECEWISE_MAX_TOKENS = 768


def doubling(start: int, top: int) -> tuple[int, ...]:
    """``start`` doubled while below ``top``, then ``top``: the graphs' bucket ladders."""
    out, x = [], start
    while x < top:
        out.append(x)
        x *= 2
    return (*out, top)


def piece_buckets(max_tokens: int) -> tuple[int, ...]:
    """Padded token counts below ``max_tokens`` (16-row steps to 512, then 16 per octave), then ``max_tokens``."""
    out, x = [], FIRST_BUCKET
    while x < max_tokens:
        out.append(x)
        x += max(FIRST_BUCKET, 1 << (x.bit_length() - 5))  # 1/16 of the octave x is in, at least 16 rows
    return (*out, max_tokens)


def piecewise_max_tokens(max_num_batched_tokens: int, max_num_seqs: int, cap: int = PIECEWISE_MAX_TOKENS) -> int:
    """The largest bucket: a full chunk budget and a decode of every other running sequence, at most ``cap``."""
    return min(max_num_batched_tokens + max_num_seqs, cap)


@dataclass(frozen=True)
class PieceBuckets:
    """The buckets of an engine with ``max_tokens`` as its largest and ``max_seqs`` sequences at most."""

    max_tokens: int
    max_seqs: int
    buckets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.max_seqs < 1:
            raise ValueError(f"piecewise buckets need positive limits, got {self.max_tokens}, {self.max_seqs}")
        object.__setattr__(self, "buckets", piece_buckets(self.max_tokens))

    @classmethod
    def for_limits(cls, max_num_batched_tokens: int, max_num_seqs: int) -> PieceBuckets:
        """The buckets of an engine serving with these scheduler limits."""
        return cls(piecewise_max_tokens(max_num_batched_tokens, max_num_seqs), max_num_seqs)

    @property
    def largest(self) -> int:
        return self.buckets[-1]

    def bucket(self, n: int) -> int | None:
        """The bucket of a step of ``n`` tokens, or None (past the largest: eager)."""
        i = bisect_left(self.buckets, n)
        return self.buckets[i] if i < len(self.buckets) else None

    def sample_rows(self, t: int) -> int:
        """Rows the LM head of bucket ``t`` runs over."""
        return min(t, self.max_seqs)
