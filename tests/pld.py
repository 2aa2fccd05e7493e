"""An independent accountant for tests: Google's dp-accounting, privacy loss distributions.

slidefed's sites bound epsilon with Opacus (RDP or PRV) and the auditor with its own
RDP code (:mod:`slidefed.audit.accountant`). Neither may grade its own work, so the
tests also compose a site's DP history with dp-accounting's PLD accountant, a
different method from another code base, and check that the site's epsilon is at
least that (each is an upper bound of the true epsilon; PLD's, with its pessimistic
discretisation, is close to it).
"""

from __future__ import annotations

from collections.abc import Iterable

import dp_accounting
from dp_accounting import pld

from slidefed.client.privacy.ledger import Ledger

SLACK = 1e-6
"""How far below the PLD epsilon a site's bound may be and still count as above it."""


def pld_epsilon(history: Iterable[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of a DP history by dp-accounting's PLD accountant.

    Parameters
    ----------
    history : Iterable[tuple[float, float, int]]
        ``(noise multiplier, sample rate, steps)`` of each release: ``steps``
        steps of the Poisson-subsampled Gaussian mechanism.
    delta : float
        The delta to convert at.

    Returns
    -------
    float
        The epsilon (0.0 for an empty history).
    """
    accountant = pld.PLDAccountant()
    for sigma, q, steps in history:
        if int(steps) <= 0:
            continue
        step = dp_accounting.PoissonSampledDpEvent(
            float(q), dp_accounting.GaussianDpEvent(float(sigma))
        )
        accountant.compose(dp_accounting.SelfComposedDpEvent(step, int(steps)))
    return float(accountant.get_epsilon(delta))


def ledger_pld_epsilon(ledger: Ledger, *, rounds: int | None = None) -> float:
    """The PLD epsilon of a site's ledger (its first ``rounds`` rounds) at its delta.

    Raises
    ------
    ValueError
        If the ledger has no delta (nothing was charged).
    """
    if ledger.delta is None:
        raise ValueError("the ledger has no delta: nothing was charged to it")
    history = ledger.history()
    return pld_epsilon(history if rounds is None else history[:rounds], ledger.delta)


__all__ = ["SLACK", "ledger_pld_epsilon", "pld_epsilon"]
