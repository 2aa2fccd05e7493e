"""The auditor's own accountant: RDP of the sampled Gaussian mechanism, pure Python.

An auditor must not take a site's word for its epsilon, and the auditor's install
has no Opacus, numpy or scipy. This module recomputes the composed epsilon of a
DP history (noise multiplier, sample rate, steps) from the Renyi-DP of the
Poisson-subsampled Gaussian mechanism at integer orders (Mironov, Talwar and Zhang,
"Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019, section 3.3)
and converts it to (epsilon, delta) with the conversion of Balle et al. (2020,
"Hypothesis testing interpretations and Renyi differential privacy").

It evaluates the orders 1.1, 1.2, ..., 10.9 and 12, ..., 63 (the grid sites use),
the integer ones by the binomial sum and the fractional ones by the series with
complementary error functions of the same paper, so that a site's honest RDP claim
and the auditor's recomputation agree to floating-point noise
(:data:`RELATIVE_SLACK`).
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Sequence

ORDERS: tuple[float, ...] = (*(1 + x / 10 for x in range(1, 100)), *range(12, 64))
"""The Renyi orders the auditor evaluates."""

RELATIVE_SLACK = 1e-6
"""Relative difference allowed between a site's RDP claim and the recomputation."""

Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps)


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _rdp_integer(sigma: float, q: float, order: int) -> float:
    log_a = -math.inf
    for i in range(order + 1):
        term = (
            _log_binom(order, i)
            + i * math.log(q)
            + (order - i) * math.log1p(-q)
            + (i * i - i) / (2 * sigma**2)
        )
        log_a = _log_add(log_a, term)
    return log_a / (order - 1)


def _log_erfc(x: float) -> float:
    """log(erfc(x)), also where erfc(x) underflows (its asymptotic series)."""
    if x < 25.0:
        value = math.erfc(x)
        return math.log(value) if value > 0 else -math.inf
    inv = 1.0 / (x * x)
    return (
        -x * x
        - math.log(x)
        - 0.5 * math.log(math.pi)
        + math.log1p(-0.5 * inv + 0.75 * inv * inv)
    )


_MAX_TERMS = 100_000
"""Terms of the fractional-order series summed at most (sample rates near 0.5 with
a large noise multiplier need tens of thousands)."""


def _rdp_fractional(sigma: float, q: float, order: float) -> float:
    """The series of section 3.3 for a non-integer order, summed in log space.

    The generalised binomial coefficients change sign past ``order``, so the
    positive and the negative terms are accumulated apart.

    Raises
    ------
    ArithmeticError
        If a term is not a number or the series has not converged after
        :data:`_MAX_TERMS` terms.
    """
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    root = math.sqrt(2) * sigma
    positive, negative = -math.inf, -math.inf
    log_coef, sign, i = 0.0, 1.0, 0
    while True:
        j = order - i
        log_first = (
            log_coef
            + i * math.log(q)
            + j * math.log1p(-q)
            + (i * i - i) / (2 * sigma**2)
            + math.log(0.5)
            + _log_erfc((i - z0) / root)
        )
        log_second = (
            log_coef
            + j * math.log(q)
            + i * math.log1p(-q)
            + (j * j - j) / (2 * sigma**2)
            + math.log(0.5)
            + _log_erfc((z0 - j) / root)
        )
        if math.isnan(log_first) or math.isnan(log_second) or i > _MAX_TERMS:
            raise ArithmeticError("the series does not converge in floating point")
        term = _log_add(log_first, log_second)
        if sign > 0:
            positive = _log_add(positive, term)
        else:
            negative = _log_add(negative, term)
        if max(log_first, log_second) < -30.0:  # the terms left add under e^-30
            break
        factor = (order - i) / (i + 1)
        sign *= 1.0 if factor > 0 else -1.0
        log_coef += math.log(abs(factor))
        i += 1
    if negative == -math.inf:
        return positive / (order - 1)
    return (positive + math.log1p(-math.exp(negative - positive))) / (order - 1)


def _gaussian_rdp(sigma: float, order: float) -> float:
    """``order / (2 sigma^2)``, the RDP of the Gaussian mechanism, without overflow.

    Subsampling never adds to it (Renyi divergence is jointly quasi-convex), so it
    bounds the sampled mechanism at any sample rate.
    """
    try:
        return order / (2 * sigma**2)
    except ArithmeticError:  # sigma**2 overflows, or underflows to 0
        return order / (2 * sigma) / sigma


@functools.lru_cache(maxsize=65536)
def rdp_step(sigma: float, q: float, order: float) -> float:
    """Renyi-DP at ``order`` of one step of the Poisson-sampled Gaussian mechanism.

    Where the series cannot be evaluated in floating point (a noise multiplier so
    small or so large that its square leaves the float range, or a fractional
    order whose series does not converge within :data:`_MAX_TERMS` terms), the
    result is an upper bound: the RDP at the next integer order, else the
    Gaussian mechanism's (infinite for no noise at all). It is never NaN.
    """
    if not sigma > 0:
        return math.inf
    if not q > 0:
        return 0.0
    if q >= 1:
        return _gaussian_rdp(sigma, order)
    if float(order).is_integer():
        return _checked(lambda: _rdp_integer(sigma, q, int(order)), sigma, order)
    # RDP does not decrease with the order, so the next integer order bounds it.
    return _checked(
        lambda: _rdp_fractional(sigma, q, order),
        sigma,
        order,
        fallback=lambda: rdp_step(sigma, q, float(math.ceil(order))),
    )


def _checked(
    compute: Callable[[], float],
    sigma: float,
    order: float,
    *,
    fallback: Callable[[], float] | None = None,
) -> float:
    """``compute()``, or an upper bound where it fails in floating point."""
    try:
        value = compute()
    except (ArithmeticError, ValueError):
        value = math.nan
    if math.isnan(value) and fallback is not None:
        value = fallback()
    return _gaussian_rdp(sigma, order) if math.isnan(value) else value


_BELOW: tuple[float, ...] = tuple(order - 1 for order in ORDERS)
_LOG_ORDER: tuple[float, ...] = tuple(math.log(order) for order in ORDERS)
_LOG_RATIO: tuple[float, ...] = tuple(math.log((order - 1) / order) for order in ORDERS)


@functools.lru_cache(maxsize=64)
def _delta_terms(delta: float) -> tuple[float, ...]:
    """``(log(delta) + log(order)) / (order - 1)`` for each order."""
    log_delta = math.log(delta)
    return tuple(
        (log_delta + log_order) / below
        for log_order, below in zip(_LOG_ORDER, _BELOW, strict=True)
    )


def _epsilon_of(rdp: Sequence[float], delta: float) -> float:
    """Epsilon at ``delta`` of the per-order RDP ``rdp`` (the best order's).

    Balle et al.'s conversion, ``rdp - (log(delta) + log(order)) / (order - 1) +
    log((order - 1) / order)``, term for term as Opacus writes it; an order whose
    RDP is infinite gives an infinite epsilon, so the minimum passes it over.
    """
    terms = map(operator.add, map(operator.sub, rdp, _delta_terms(delta)), _LOG_RATIO)
    best: float = min(terms)
    return max(best, 0.0)


@functools.lru_cache(maxsize=4096)
def _unit_rdp(sigma: float, q: float) -> tuple[float, ...]:
    """The RDP of one step at every order of :data:`ORDERS`."""
    return tuple(rdp_step(sigma, q, order) for order in ORDERS)


class Composition:
    """A DP history composed step by step: the per-order RDP sums so far.

    :meth:`add` and :meth:`epsilon` each cost one pass over :data:`ORDERS` (the
    RDP of one step is cached per noise multiplier and sample rate), so a log of
    ``n`` charges is composed in ``O(n)``, with the epsilon after each charge,
    rather than by recomposing the whole history each time.

    Examples
    --------
    >>> history = Composition()
    >>> history.add(1.0, 0.01, 1000)
    >>> history.epsilon(1e-5) == epsilon([(1.0, 0.01, 1000)], 1e-5)
    True
    """

    __slots__ = ("_history", "_rdp", "_steps")

    def __init__(self) -> None:
        self._rdp: list[float] = [0.0] * len(ORDERS)
        self._steps = 0
        self._history: list[tuple[float, float, int]] = []

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The (noise multiplier, sample rate, steps) composed so far."""
        return list(self._history)

    @property
    def steps(self) -> int:
        """The number of steps composed so far."""
        return self._steps

    def add(self, sigma: float, q: float, steps: int) -> None:
        """Compose ``steps`` steps of noise ``sigma`` at sample rate ``q``.

        A count of zero or less composes nothing.
        """
        n = int(steps)
        if n <= 0:
            return
        unit = _unit_rdp(float(sigma), float(q))
        scaled = map(operator.mul, itertools.repeat(n), unit)
        self._rdp = list(map(operator.add, self._rdp, scaled))
        self._steps += n
        self._history.append((float(sigma), float(q), n))

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` of everything composed so far (an upper bound)."""
        if not self._steps:
            return 0.0
        return _epsilon_of(self._rdp, float(delta))


def epsilon(history: Iterable[Step], delta: float) -> float:
    """Epsilon at ``delta`` of the composition of ``history`` (an upper bound)."""
    grouped: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        if int(n) > 0:
            key = (float(s), float(q))
            grouped[key] = grouped.get(key, 0) + int(n)
    composed = Composition()
    for (s, q), n in grouped.items():
        composed.add(s, q, n)
    return composed.epsilon(delta)


def agrees(claimed: float, recomputed: float) -> bool:
    """Whether a site's RDP claim equals the auditor's recomputation.

    An infinite (or NaN) value agrees only with the very same value.
    """
    if not (math.isfinite(claimed) and math.isfinite(recomputed)):
        return claimed == recomputed
    return abs(claimed - recomputed) <= RELATIVE_SLACK * max(recomputed, 1.0)


def over_budget(recomputed: float, maximum: float) -> bool:
    """Whether the recomputed epsilon exceeds ``maximum``."""
    return recomputed > maximum + RELATIVE_SLACK * max(maximum, 1.0)


def history_of(charges: Sequence[tuple[float, float, int]]) -> list[Step]:
    """The history as plain tuples (for callers holding records)."""
    return [(float(s), float(q), int(n)) for s, q, n in charges]


__all__ = [
    "ORDERS",
    "RELATIVE_SLACK",
    "Composition",
    "agrees",
    "epsilon",
    "history_of",
    "over_budget",
    "rdp_step",
]
