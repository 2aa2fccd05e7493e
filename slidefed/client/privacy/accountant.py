"""Epsilon of a DP history, and the noise that keeps a plan within its target.

The math is Opacus's: its Renyi (RDP) accountant by default, its privacy-random-
variable (PRV) accountant when the site asks for it. This module imports Opacus
(and so torch) when it is imported.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from slidefed.client.privacy.ledger import AccountantName, Step
from slidefed.common.errors import PrivacyBudgetExhausted

_ALPHAS: list[float] = [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]
# A coarser grid for calibration: a minimum over fewer orders is an upper bound,
# so noise calibrated on it never overshoots the target.
_CAL_ALPHAS = [
    1.25,
    1.5,
    1.75,
    2,
    2.5,
    3,
    3.5,
    4,
    5,
    6,
    7,
    8,
    10,
    12,
    16,
    20,
    24,
    32,
    48,
    64,
]
_MAX_SIGMA = 1e4


def epsilon(
    history: Sequence[Step],
    delta: float,
    *,
    accountant: AccountantName = "rdp",
    fine: bool = True,
) -> float:
    """Epsilon of the composition of ``history`` at ``delta``.

    ``rdp`` is Opacus's Renyi accountant (conservative, fast); ``prv`` is its
    privacy-random-variable accountant (tighter, an upper bound within 0.01).
    """
    if not history:
        return 0.0
    if accountant == "prv":
        from opacus.accountants import PRVAccountant

        prv = PRVAccountant()
        prv.history = [(float(s), float(q), int(n)) for s, q, n in history]
        return float(prv.get_epsilon(delta))
    alphas = tuple(_ALPHAS if fine else [float(a) for a in _CAL_ALPHAS])
    rdp = None
    for sigma, q, steps in history:
        # RDP is linear in the number of steps: cache one step per (q, sigma).
        part = _unit_rdp(float(q), float(sigma), alphas) * steps
        rdp = part if rdp is None else rdp + part
    eps, _ = get_privacy_spent(orders=list(alphas), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=4096)
def _unit_rdp(q: float, sigma: float, alphas: tuple[float, ...]) -> Any:
    return compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(alphas))


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

    Raises
    ------
    PrivacyBudgetExhausted
        If no noise multiplier up to 1e4 fits.
    """

    def fits(sigma: float) -> bool:
        plan = [*prior, (sigma, sample_rate, steps)]
        return epsilon(plan, delta, accountant=accountant, fine=False) <= target_epsilon

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


__all__ = ["calibrate_noise", "epsilon"]
