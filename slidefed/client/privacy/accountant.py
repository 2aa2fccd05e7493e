"""Epsilon of a DP history, and the noise that keeps a plan within its target.

Every entry of a history is a Poisson-subsampled Gaussian mechanism
``(noise multiplier, sample rate, steps)``; an evaluation is the plain Gaussian
mechanism (sample rate 1, one step). Two valid upper bounds of its composition:

- ``rdp``: Opacus's Renyi accountant (:func:`rdp_epsilon`), conservative and fast;
- ``prv``: Opacus's privacy-random-variable accountant (:func:`prv_epsilon`), the
  *upper* bound that ``PRVAccountant.get_epsilon`` returns (``eps_upper`` of the
  discretised composition at ``eps_error=0.01``, ``delta_error=delta/1000``), tighter
  by 5-15% in practice.

``best`` reports the smaller of the two (:func:`tightest`), and says which. The PRV
bound is computed with Opacus's own building blocks (truncation, discretisation,
FFT composition, ``compute_epsilon``'s upper value; the discretisation and the
self-composition in fewer passes, :mod:`slidefed.client.privacy.prv_grid`),
arranged so that it stays fast on a long history:

- equal ``(sigma, q)`` entries are merged first (:func:`group_history`):
  composition is commutative, and Opacus's discretisation domain depends only on
  the total RDP, the total steps and each distinct mechanism, so the number is the
  one ``PRVAccountant`` gives for the unmerged history (to float noise);
- the RDP curves behind that domain come from the per-step cache of
  :func:`rdp_epsilon`, and the grid is widened symmetrically to a length that FFTs
  fast (a wider truncation domain only shrinks the truncated mass);
- past ``_PRV_POINTS`` grid points (a long history), ``eps_error`` grows so that
  the grid keeps that size: still Opacus's upper bound, looser by about as much;
- past ``_PRV_MAX_GROUPS`` distinct mechanisms, noise multipliers are rounded
  down onto a geometric grid (less noise dominates, so the bound stays valid).

Where PRV cannot be computed (a numerical warning, a zero noise multiplier, too
many mechanisms), only the RDP bound is reported. A few hundred entries of a
handful of mechanisms take about 0.1-0.3 s; a result is cached per merged history.

Calibration stays on RDP (:func:`calibrate_noise`, on a coarse grid of orders): the
reported bound is at most the RDP bound, so a plan calibrated on it never
overshoots by the bound that is reported, nor by the RDP bound an auditor
recomputes.

This module imports Opacus (and so torch) when it is imported.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.prv import Domain
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy.fft import next_fast_len

from slidefed.client.privacy.ledger import AccountantName, Bound, Step
from slidefed.client.privacy.prv_grid import compose, discretize
from slidefed.common.errors import PrivacyBudgetExhausted

_ALPHAS: tuple[float, ...] = tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
# A coarser grid for calibration, a subset of the fine one: a minimum over fewer
# orders is an upper bound, so noise calibrated on it never overshoots the target.
# (It must be a subset: an order outside the fine grid, such as 64, could give a
# lower minimum than the fine grid, and a plan that overshoots by it.)
_CAL_ALPHAS: tuple[float, ...] = tuple(
    a
    for a in _ALPHAS
    if a in (1.2, 1.5, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0)
    or a in (12, 16, 20, 24, 32, 48, 63)
)
_MAX_SIGMA = 1e4
# Opacus's PRVAccountant.get_epsilon defaults.
_PRV_EPS_ERROR = 0.01
_PRV_DELTA_ERROR_RATIO = 1e-3
# The discretisation grows with the square root of the total steps; past this many
# points a coarser eps_error keeps one composition to a fraction of a second.
_PRV_POINTS = 1 << 17
_PRV_MAX_EPS_ERROR = 2.0
# Each distinct (sigma, q) costs one discretisation and one FFT composition. Past
# this many, noise multipliers are rounded *down* onto a geometric grid (a mechanism
# with less noise dominates, so the bound stays valid); if that does not bring them
# under it, only the RDP bound is reported.
_PRV_MAX_GROUPS = 8
_PRV_SIGMA_GRIDS = (1.01, 1.02, 1.05, 1.1)
# Opacus's RDP conversion warns when the best order is at the edge of its grid;
# the bound it returns is still valid (only looser), so this warning is expected.
_EDGE_ORDER = "Optimal order is the"


def group_history(history: Sequence[Step]) -> list[Step]:
    """Merge entries of equal ``(sigma, q)``, summing their steps (first-seen order).

    Composition is commutative, so the merged history has the same privacy loss.
    """
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, n in history:
        key = (float(sigma), float(q))
        steps[key] = steps.get(key, 0) + int(n)
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def rdp_epsilon(history: Sequence[Step], delta: float, *, fine: bool = True) -> float:
    """Opacus's RDP bound of the composition of ``history`` at ``delta``."""
    if not history:
        return 0.0
    alphas = _ALPHAS if fine else _CAL_ALPHAS
    eps, _ = get_privacy_spent(
        orders=list(alphas), rdp=_rdp_curve(history, alphas), delta=delta
    )
    return float(eps)


def _rdp_curve(history: Sequence[Step], alphas: tuple[float, ...]) -> Any:
    rdp = None
    for sigma, q, steps in history:
        # RDP is linear in the number of steps: cache one step per (q, sigma).
        part = _unit_rdp(float(q), float(sigma), alphas) * steps
        rdp = part if rdp is None else rdp + part
    return rdp


@functools.lru_cache(maxsize=4096)
def _unit_rdp(q: float, sigma: float, alphas: tuple[float, ...]) -> Any:
    return compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(alphas))


def prv_epsilon(history: Sequence[Step], delta: float) -> float | None:
    """Opacus's PRV upper bound of the composition of ``history`` at ``delta``.

    The value ``PRVAccountant.get_epsilon(delta)`` returns for the same history
    (merged as :func:`group_history` does), or None where it cannot be computed.
    """
    if not history:
        return 0.0
    groups = group_history(history)
    if any(sigma <= 0 for sigma, _, _ in groups):
        return None
    dominating = _dominating(groups)
    if dominating is None:
        return None
    return _prv_cached(tuple(dominating), float(delta))


def _dominating(groups: list[Step]) -> list[Step] | None:
    """At most ``_PRV_MAX_GROUPS`` mechanisms that dominate ``groups``, or None."""
    if len(groups) <= _PRV_MAX_GROUPS:
        return groups
    for ratio in _PRV_SIGMA_GRIDS:
        rounded: list[Step] = []
        for sigma, q, n in groups:
            k = math.floor(math.log(sigma) / math.log(ratio))
            while ratio**k > sigma:  # never round up, whatever the float error
                k -= 1
            rounded.append((ratio**k, q, n))
        merged = group_history(rounded)
        if len(merged) <= _PRV_MAX_GROUPS:
            return merged
    return None


@functools.lru_cache(maxsize=512)
def _prv_cached(groups: tuple[Step, ...], delta: float) -> float | None:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Masked branches of np.where (log(1 - q) at q = 1 and the like).
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                eps = _prv_upper(groups, delta)
    except (ArithmeticError, RuntimeError, ValueError, MemoryError):
        return None
    if any(_EDGE_ORDER not in str(w.message) for w in caught):
        return None  # a numerical warning: trust only the RDP bound
    if eps is None or not math.isfinite(eps) or eps < 0:
        return None
    return eps


def _prv_upper(groups: tuple[Step, ...], delta: float) -> float | None:
    """Opacus's PRVAccountant.get_epsilon, on the merged history.

    At ``eps_error=0.01`` when the discretisation has at most ``_PRV_POINTS``
    points; a longer history gets the ``eps_error`` that keeps it to that many
    (the bound stays an upper bound, looser by about the difference), up to
    ``_PRV_MAX_EPS_ERROR``.
    """
    delta_error = delta * _PRV_DELTA_ERROR_RATIO
    counts = [n for _, _, n in groups]
    total = sum(counts)
    spread = math.sqrt(total * math.log(12 / delta_error) / 2)
    eps_error = _PRV_EPS_ERROR
    size = _safe_domain_size(groups, eps_error, delta_error)
    if 2 * size * spread / eps_error > _PRV_POINTS:
        eps_error = 2 * size * spread / _PRV_POINTS
        if eps_error > _PRV_MAX_EPS_ERROR:
            return None
        size = _safe_domain_size(groups, eps_error, delta_error)
    domain = _fast_domain(Domain.create_aligned(-size, size, eps_error / spread))
    dprvs = [discretize(sigma, q, domain) for sigma, q, _ in groups]
    composed = compose(dprvs, counts)
    _, _, upper = composed.compute_epsilon(delta, delta_error, eps_error)
    return float(upper)


def _fast_domain(domain: Domain) -> Domain:
    """The same mesh, widened by as many points on each side, to a length that FFTs
    fast (Opacus's composition relies on the aligned, centred grid)."""
    size = domain.size
    while next_fast_len(size, real=True) != size:
        size += 2
    pad = (size - domain.size) // 2 * domain.dt
    return Domain(domain.t_min - pad, domain.t_max + pad, size)


def _safe_domain_size(
    groups: tuple[Step, ...], eps_error: float, delta_error: float
) -> float:
    """Opacus's ``compute_safe_domain_size``, on the cached RDP curves."""
    total = sum(n for _, _, n in groups)
    size = rdp_epsilon(groups, delta_error / 4)
    for sigma, q, _ in groups:
        size = max(size, rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total)))
    return max(size, eps_error) + 3


def tightest(
    history: Sequence[Step], delta: float, *, accountant: AccountantName = "best"
) -> tuple[float, Bound]:
    """The epsilon to report for ``history`` and the bound it is.

    ``rdp``: the RDP bound. ``prv``: the PRV upper bound, or RDP where PRV cannot be
    computed. ``best``: the smaller of the two valid bounds.
    """
    rdp = rdp_epsilon(history, delta)
    if accountant == "rdp" or not history:
        return rdp, "rdp"
    prv = prv_epsilon(history, delta)
    if prv is None or (accountant == "best" and rdp <= prv):
        return rdp, "rdp"
    return prv, "prv"


def epsilon_of(history: Sequence[Step], delta: float, bound: Bound) -> float:
    """Epsilon of ``history`` by one named bound (PRV falling back to RDP)."""
    if bound == "prv":
        prv = prv_epsilon(history, delta)
        if prv is not None:
            return prv
    return rdp_epsilon(history, delta)


def epsilon(
    history: Sequence[Step],
    delta: float,
    *,
    accountant: AccountantName = "rdp",
    fine: bool = True,
) -> float:
    """Epsilon of the composition of ``history`` at ``delta``.

    ``rdp`` is Opacus's Renyi accountant (``fine=False``: on the coarse grid of
    orders that calibration uses, a looser upper bound); ``prv`` its PRV upper
    bound; ``best`` the smaller of the two (:func:`tightest`).
    """
    if accountant == "rdp":
        return rdp_epsilon(history, delta, fine=fine)
    return tightest(history, delta, accountant=accountant)[0]


def calibrate_noise(
    prior: Sequence[Step],
    *,
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    delta: float,
    accountant: AccountantName = "rdp",
) -> float:
    """Smallest noise multiplier (to 1e-3) such that prior + plan stays within target.

    The check is the RDP bound on a coarse grid of orders, whatever ``accountant``
    says: it is above the fine RDP bound, and so above what ``best`` reports, so
    the plan never overshoots the target by them. (``accountant`` is accepted for
    compatibility.)

    Raises
    ------
    PrivacyBudgetExhausted
        If no noise multiplier up to 1e4 fits.
    """
    del accountant
    prior_curve = _rdp_curve(prior, _CAL_ALPHAS) if prior else None

    def fits(sigma: float) -> bool:
        curve = _unit_rdp(float(sample_rate), float(sigma), _CAL_ALPHAS) * steps
        if prior_curve is not None:
            curve = curve + prior_curve
        eps, _ = get_privacy_spent(orders=list(_CAL_ALPHAS), rdp=curve, delta=delta)
        return float(eps) <= target_epsilon

    hi = 1.0
    while not fits(hi):
        hi *= 2
        if hi > _MAX_SIGMA:
            raise PrivacyBudgetExhausted(
                f"no noise multiplier reaches epsilon <= {target_epsilon:.3g} for "
                f"{steps} steps at sample rate {sample_rate:.3g}; raise the run's "
                "target-epsilon or lower num-server-rounds/local-epochs"
            )
    lo = 0.0
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if mid > 0 and fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


__all__ = [
    "calibrate_noise",
    "epsilon",
    "epsilon_of",
    "group_history",
    "prv_epsilon",
    "rdp_epsilon",
    "tightest",
]
