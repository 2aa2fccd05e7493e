from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from slidefed.client.privacy import (
    PrivacyLedger,
    calibrate_noise,
    charge_round,
    epsilon,
)
from slidefed.common.errors import PrivacyBudgetExhausted


def test_epsilon_matches_opacus_rdp_accountant() -> None:
    history = [(1.0, 0.25, 10), (1.5, 0.1, 20), (0.8, 0.25, 5)]
    acc = RDPAccountant()
    acc.history = list(history)
    assert epsilon(history, 1e-3) == pytest.approx(acc.get_epsilon(1e-3), rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    sigma=st.floats(0.5, 3.0),
    q=st.floats(0.05, 0.5),
    steps=st.integers(1, 50),
    extra=st.integers(1, 50),
)
def test_epsilon_grows_with_steps(
    sigma: float, q: float, steps: int, extra: int
) -> None:
    assert epsilon([(sigma, q, steps)], 1e-4) < epsilon(
        [(sigma, q, steps + extra)], 1e-4
    )


@settings(max_examples=5, deadline=None)
@given(target=st.floats(1.0, 12.0), q=st.floats(0.1, 0.5), steps=st.integers(5, 60))
def test_calibrated_noise_never_overshoots(target: float, q: float, steps: int) -> None:
    prior = [(1.2, 0.25, 10)]
    start = epsilon(prior, 1e-3)
    goal = start + target
    sigma = calibrate_noise(
        prior, sample_rate=q, steps=steps, target_epsilon=goal, delta=1e-3
    )
    assert epsilon([*prior, (sigma, q, steps)], 1e-3) <= goal
    # And it is tight: noticeably less noise would overshoot.
    assert epsilon([*prior, (sigma * 0.9, q, steps)], 1e-3) > goal - 0.5


def _charge(ledger: PrivacyLedger, run_id: int, rnd: int, max_eps: float = 10.0):
    return charge_round(
        ledger,
        run_id=run_id,
        server_round=rnd,
        planned_rounds=3,
        sample_rate=0.25,
        steps=8,
        target_epsilon=4.0,
        max_epsilon=max_eps,
        min_noise_multiplier=0.3,
        delta=1e-3,
        unit="patient",
    )


def test_ledger_composes_rounds_across_restarts_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    charges = [_charge(PrivacyLedger(path), 1, r) for r in (1, 2, 3)]
    # A new process reads the ledger from disk and continues.
    after_run1 = PrivacyLedger(path).load()
    assert len(after_run1.rounds) == 3
    assert charges[-1].epsilon_after <= 4.0 + 1e-9
    assert (
        charges[0].epsilon_after < charges[1].epsilon_after < charges[2].epsilon_after
    )
    second = _charge(PrivacyLedger(path), 2, 1)
    assert second.epsilon_before == pytest.approx(charges[-1].epsilon_after)
    assert second.epsilon_after > charges[-1].epsilon_after


def test_round_past_budget_is_refused_and_not_charged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    for rnd in (1, 2, 3):
        _charge(PrivacyLedger(path), 1, rnd, max_eps=4.0)
    before = PrivacyLedger(path).load()
    with pytest.raises(PrivacyBudgetExhausted, match="max_epsilon"):
        _charge(PrivacyLedger(path), 1, 4, max_eps=4.0)
    # The site lowered its policy below what is already spent: no new run.
    with pytest.raises(PrivacyBudgetExhausted, match="budget spent"):
        _charge(PrivacyLedger(path), 2, 1, max_eps=3.0)
    assert PrivacyLedger(path).load() == before


def test_new_run_gets_only_the_remaining_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    first = [_charge(PrivacyLedger(path), 1, rnd, max_eps=6.0) for rnd in (1, 2, 3)]
    second = [_charge(PrivacyLedger(path), 2, rnd, max_eps=6.0) for rnd in (1, 2, 3)]
    assert second[0].epsilon_before == pytest.approx(first[-1].epsilon_after)
    assert 5.0 < second[-1].epsilon_after <= 6.0
    # A round beyond the plan would go over the site's maximum: refused.
    with pytest.raises(PrivacyBudgetExhausted, match="over the site's max_epsilon"):
        _charge(PrivacyLedger(path), 2, 4, max_eps=6.0)
