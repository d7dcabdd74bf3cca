"""Speculative decoding, the simulator side: how many tokens one verification step emits.

A draft model proposes ``k`` tokens (``spec_k``); the target verifies them in one step of ``1 + k`` tokens
and keeps the longest accepted prefix plus one token of its own (the correction on a rejection, the bonus
token when all ``k`` are accepted). With each draft token accepted independently with probability ``alpha``
(``spec_alpha``) and acceptance stopping at the first rejection, the tokens emitted per step are
``1 + min(G, k)`` with ``G`` geometric (``P(G >= j) = alpha**j``), whose mean is
``(1 - alpha**(k+1)) / (1 - alpha)`` (Leviathan et al., 2023). Draft and verification *costs* come from the
cost model, not from here.

The fields carry the names of the ``Scenario`` fields they come from (``spec_k``, ``spec_alpha``,
``spec_alpha_concentration``), which is where user values are validated; these classes only assert.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from servesim.hwmodels.calibrated import GRAPH_MAX_SEQS
from servesim.hwmodels.ops import BatchShape


def expected_accepted_tokens(alpha: float, k: int) -> float:
    """Mean tokens emitted per verification step, bonus token included: ``(1 - α^(k+1)) / (1 - α)``.

    Equals ``k + 1`` at ``α = 1`` (the limit) and 1 at ``α = 0``.
    """
    if alpha >= 1.0:
        return float(k + 1)
    return float((1.0 - alpha ** (k + 1)) / (1.0 - alpha))


def _emitted_tokens(u: np.ndarray, alphas: np.ndarray | float, k: int) -> np.ndarray:
    """Inverse-CDF draw: leading accepts = min(floor(log u / log α), k), so P(accepts >= j) = α^j.

    α = 0 gives log α = -inf and 0 accepts; α = 1 gives log α = +0 and a ratio of -inf, which can
    only arise there, so it maps to k. Works element-wise for one α per sequence.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        accepts = np.floor(np.log(u) / np.log(alphas))
    accepts = np.nan_to_num(accepts, nan=0.0, posinf=float(k), neginf=float(k))
    return 1 + np.minimum(accepts, k).astype(np.int64)


@runtime_checkable
class AcceptanceModel(Protocol):
    """Draws the tokens emitted per sequence per verification step (each in ``1 .. spec_k+1``)."""

    spec_k: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent draws of tokens emitted by one verification step, int64."""
        ...

    def mean_emitted_tokens(self) -> float:
        """Expected tokens emitted per sequence per verification step."""
        ...


@dataclass(frozen=True)
class IIDAcceptance:
    """Every draft token accepted independently with probability ``spec_alpha``; stop at the first rejection."""

    spec_alpha: float
    spec_k: int

    def __post_init__(self) -> None:
        assert _is_k(self.spec_k) and 0.0 <= self.spec_alpha <= 1.0, (self.spec_k, self.spec_alpha)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of ``1 + min(Geometric, k)``, vectorized."""
        return _emitted_tokens(rng.random(n), self.spec_alpha, self.spec_k)

    def mean_emitted_tokens(self) -> float:
        """``(1 - α^(k+1)) / (1 - α)``."""
        return expected_accepted_tokens(self.spec_alpha, self.spec_k)


@dataclass(frozen=True)
class PerRequestAcceptance:
    """Each request draws its own ``α ~ Beta(mean·c, (1 − mean)·c)`` at admission, then behaves iid; the mean
    is ``spec_alpha``.

    ``spec_alpha_concentration`` (c) sets the spread: large c gives every request nearly ``spec_alpha``;
    small c mixes easy requests (α near 1) with hard ones (α near 0) at the same mean.
    """

    spec_k: int
    spec_alpha: float
    spec_alpha_concentration: float

    def __post_init__(self) -> None:
        assert _is_k(self.spec_k) and 0.0 < self.spec_alpha < 1.0 and self.spec_alpha_concentration > 0.0, self

    @property
    def beta_params(self) -> tuple[float, float]:
        """The Beta distribution's ``(a, b)``."""
        c = self.spec_alpha_concentration
        return self.spec_alpha * c, (1.0 - self.spec_alpha) * c

    def draw_alpha(self, rng: np.random.Generator) -> float:
        """One request's acceptance rate (call once, at admission)."""
        a, b = self.beta_params
        return float(rng.beta(a, b))

    def draw_alphas(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` requests' acceptance rates at once."""
        a, b = self.beta_params
        return rng.beta(a, b, size=n)

    def sample_for(self, rng: np.random.Generator, alphas: np.ndarray) -> np.ndarray:
        """One verification step for sequences with the given acceptance rates, vectorized."""
        alphas = np.asarray(alphas, dtype=np.float64)
        return _emitted_tokens(rng.random(alphas.shape), alphas, self.spec_k)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws from the marginal: a fresh α for each, then one step."""
        return self.sample_for(rng, self.draw_alphas(rng, n))

    def mean_emitted_tokens(self) -> float:
        """``E[(1 - α^(k+1)) / (1 - α)] = Σ_{j=0..k} E[α^j]`` with Beta moments ``Π (a+i)/(a+b+i)``."""
        a, b = self.beta_params
        total, moment = 1.0, 1.0
        for i in range(self.spec_k):
            moment *= (a + i) / (a + b + i)
            total += moment
        return total


def _is_k(k: int) -> bool:
    return not isinstance(k, bool) and isinstance(k, (int, np.integer)) and k >= 1


@dataclass(frozen=True)
class SpecConfig:
    """Speculative decoding: a draft model proposing ``spec_k`` tokens per step, accepted with rate
    ``spec_alpha`` — iid per token, or (with ``spec_alpha_concentration``) per request from a Beta
    distribution of mean ``spec_alpha``."""

    draft_model: str
    spec_k: int
    spec_alpha: float
    spec_alpha_concentration: float | None = None

    def __post_init__(self) -> None:
        assert self.draft_model and _is_k(self.spec_k), self

    def acceptance_model(self) -> IIDAcceptance | PerRequestAcceptance:
        """The acceptance model these settings describe."""
        if self.spec_alpha_concentration is None:
            return IIDAcceptance(spec_alpha=self.spec_alpha, spec_k=self.spec_k)
        return PerRequestAcceptance(self.spec_k, self.spec_alpha, self.spec_alpha_concentration)


def draft_step_s(draft_cost, shape: BatchShape, spec_k: int, target_cost=None) -> float:
    """The draft model's share of a speculative step of ``shape`` (the target's verification shape), as the engine
    runs it. A pure-decode step is one CUDA graph (``engine/spec_graph.py``): a catch-up pass of 2 tokens a
    sequence and ``spec_k - 1`` passes of one, their device time alone (the step's host time is the target's).
    Any other step runs every pass as an eager step of its own: the draft over the prefill chunks (each chunk's
    last row sampled), the catch-up (one token a sequence: two only after a step that accepted every draft) and
    the ``spec_k - 1`` passes, their eager floor and gap scaled by the draft's kernel launches per pass against
    ``target_cost``'s (calibrated models; 1 otherwise). Contexts are the verification's (``spec_k`` tokens
    more than the draft's passes read at most)."""
    n = shape.decode_seqs
    one = BatchShape(decode_seqs=n, decode_query_tokens=n, decode_ctx_tokens=shape.decode_ctx_tokens,
                     sampled_tokens=n, decode_ctx_max=shape.decode_ctx_max)
    if n and not shape.prefill_tokens and n <= GRAPH_MAX_SEQS:
        two = replace(one, decode_query_tokens=2 * n)
        return draft_cost.pass_s(two, True) + (spec_k - 1) * draft_cost.pass_s(one, True)
    scale = eager_scale(draft_cost, target_cost)
    t = spec_k * draft_cost.pass_s(one, False, scale) if n else 0.0
    if shape.prefill_tokens:
        pre = BatchShape(prefill_seqs=shape.prefill_seqs, prefill_tokens=shape.prefill_tokens,
                         prefill_attn_pairs=shape.prefill_attn_pairs, prefill_ctx_tokens=shape.prefill_ctx_tokens,
                         sampled_tokens=shape.prefill_seqs)
        t += draft_cost.pass_s(pre, False, scale)
    return t


def eager_scale(draft_cost, target_cost) -> float:
    """Kernel launches of one draft pass over the target's: an eager pass's floor is the host launching it."""
    a, b = getattr(draft_cost, "launches", 0), getattr(target_cost, "launches", 0)
    return a / b if a and b else 1.0
