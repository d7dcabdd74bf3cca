"""Speculative decoding, the simulator side: how many tokens one verification step emits.

A draft model proposes ``k`` tokens; the target verifies them in one step of ``1 + k`` tokens and keeps
the longest accepted prefix plus one token of its own (the correction on a rejection, the bonus token
when all ``k`` are accepted). With each draft token accepted independently with probability ``alpha``
and acceptance stopping at the first rejection, the tokens emitted per step are ``1 + min(G, k)`` with
``G`` geometric (``P(G >= j) = alpha**j``), whose mean is ``(1 - alpha**(k+1)) / (1 - alpha)``
(Leviathan et al., 2023). Draft and verification *costs* come from the cost model, not from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from servesim.errors import ConfigError


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
    """Draws the tokens emitted per sequence per verification step (each in ``1 .. k+1``)."""

    k: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent draws of tokens emitted by one verification step, int64."""
        ...

    def mean_emitted_tokens(self) -> float:
        """Expected tokens emitted per sequence per verification step."""
        ...


@dataclass(frozen=True)
class IIDAcceptance:
    """Every draft token accepted independently with probability ``alpha``; stop at the first rejection."""

    alpha: float
    k: int

    def __post_init__(self) -> None:
        _check_k(self.k)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"must lie in [0, 1], got {self.alpha}", field="spec.alpha")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of ``1 + min(Geometric, k)``, vectorized."""
        return _emitted_tokens(rng.random(n), self.alpha, self.k)

    def mean_emitted_tokens(self) -> float:
        """``(1 - α^(k+1)) / (1 - α)``."""
        return expected_accepted_tokens(self.alpha, self.k)


@dataclass(frozen=True)
class PerRequestAcceptance:
    """Each request draws its own ``α ~ Beta(mean·c, (1 − mean)·c)`` at admission, then behaves iid.

    ``alpha_concentration`` (c) sets the spread: large c gives every request nearly ``alpha_mean``;
    small c mixes easy requests (α near 1) with hard ones (α near 0) at the same mean.
    """

    k: int
    alpha_mean: float
    alpha_concentration: float

    def __post_init__(self) -> None:
        _check_k(self.k)
        if not 0.0 < self.alpha_mean < 1.0:
            raise ConfigError(f"must lie in (0, 1), got {self.alpha_mean}", field="spec.alpha_mean")
        if not self.alpha_concentration > 0.0:
            raise ConfigError(
                f"must be > 0, got {self.alpha_concentration}", field="spec.alpha_concentration"
            )

    @property
    def beta_params(self) -> tuple[float, float]:
        """The Beta distribution's ``(a, b)``."""
        c = self.alpha_concentration
        return self.alpha_mean * c, (1.0 - self.alpha_mean) * c

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
        return _emitted_tokens(rng.random(alphas.shape), alphas, self.k)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws from the marginal: a fresh α for each, then one step."""
        return self.sample_for(rng, self.draw_alphas(rng, n))

    def mean_emitted_tokens(self) -> float:
        """``E[(1 - α^(k+1)) / (1 - α)] = Σ_{j=0..k} E[α^j]`` with Beta moments ``Π (a+i)/(a+b+i)``."""
        a, b = self.beta_params
        total, moment = 1.0, 1.0
        for i in range(self.k):
            moment *= (a + i) / (a + b + i)
            total += moment
        return total


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"must be an integer >= 1, got {k!r}", field="spec.k")


@dataclass(frozen=True)
class SpecConfig:
    """Speculative decoding: a draft model proposing ``k`` tokens per step and how they are accepted.

    Give either ``alpha`` (iid per-token acceptance) or ``alpha_mean`` with ``alpha_concentration``
    (a per-request acceptance rate drawn from a Beta distribution).
    """

    draft_model: str
    k: int
    alpha: float | None = None
    alpha_mean: float | None = None
    alpha_concentration: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.draft_model, str) or not self.draft_model.strip():
            raise ConfigError("must name a draft model", field="spec.draft_model")
        _check_k(self.k)
        per_request = self.alpha_mean is not None or self.alpha_concentration is not None
        if self.alpha is not None and per_request:
            raise ConfigError(
                "give either alpha (iid) or alpha_mean and alpha_concentration (per request), not both",
                field="spec.alpha",
            )
        if self.alpha is None and not per_request:
            raise ConfigError("give alpha, or alpha_mean and alpha_concentration", field="spec.alpha")
        if per_request and self.alpha_mean is None:
            raise ConfigError("required with alpha_concentration", field="spec.alpha_mean")
        if per_request and self.alpha_concentration is None:
            raise ConfigError("required with alpha_mean", field="spec.alpha_concentration")
        self.acceptance_model()  # validates the numbers, naming the field

    def acceptance_model(self) -> IIDAcceptance | PerRequestAcceptance:
        """The acceptance model these settings describe."""
        if self.alpha is not None:
            return IIDAcceptance(alpha=self.alpha, k=self.k)
        return PerRequestAcceptance(
            k=self.k, alpha_mean=float(self.alpha_mean), alpha_concentration=float(self.alpha_concentration)
        )


ACCEPTANCE_MODELS = {"iid": IIDAcceptance, "per_request": PerRequestAcceptance}
