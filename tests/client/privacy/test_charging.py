from pathlib import Path

import pytest

from slidefed.client.privacy.accountant import epsilon
from slidefed.client.privacy.charging import charge_round
from slidefed.client.privacy.ledger import PrivacyLedger
from slidefed.common.errors import PrivacyBudgetExhausted


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


def test_second_run_that_fits_continues_the_composition(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    first = [_charge_run(path, 1, rnd, target=3.0, max_eps=6.0) for rnd in (1, 2, 3)]
    second = [_charge_run(path, 2, rnd, target=2.5, max_eps=6.0) for rnd in (1, 2, 3)]
    assert second[0].epsilon_before == pytest.approx(first[-1].epsilon_after)
    assert first[-1].epsilon_after < second[-1].epsilon_after <= 3.0 + 2.5
    # A round beyond the plan would go over the site's maximum: refused.
    refused = None
    for rnd in range(4, 40):
        try:
            _charge_run(path, 2, rnd, target=2.5, max_eps=6.0)
        except PrivacyBudgetExhausted as exc:
            refused = str(exc)
            break
    assert refused is not None
    assert "over the site's max_epsilon" in refused
    assert epsilon(PrivacyLedger(path).load().history(), 1e-4) <= 6.0


def _charge_run(path: Path, run_id: int, rnd: int, *, target: float, max_eps: float):
    return charge_round(
        PrivacyLedger(path),
        run_id=run_id,
        server_round=rnd,
        planned_rounds=3,
        sample_rate=0.2,
        steps=10,
        target_epsilon=target,
        max_epsilon=max_eps,
        min_noise_multiplier=0.3,
        delta=1e-4,
        unit="patient",
    )


def test_run_asking_more_than_the_maximum_trains_within_it_then_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.json"
    charges = [_charge_run(path, 1, r, target=5.0, max_eps=1.0) for r in (1, 2, 3)]
    assert charges[-1].epsilon_after <= 1.0
    with pytest.raises(PrivacyBudgetExhausted):
        _charge_run(path, 1, 4, target=5.0, max_eps=1.0)


def test_second_run_that_does_not_fit_is_refused_before_anything_leaves(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.json"
    first = [_charge_run(path, 1, r, target=0.6, max_eps=1.0) for r in (1, 2, 3)]
    assert 0.5 < first[-1].epsilon_after <= 0.6
    with pytest.raises(PrivacyBudgetExhausted, match="lower target-epsilon"):
        _charge_run(path, 2, 1, target=0.6, max_eps=1.0)
    ledger = PrivacyLedger(path).load()
    assert [r.run_id for r in ledger.rounds] == [1, 1, 1]
    assert ledger.run(2) is None


def test_a_crash_after_charging_never_lowers_the_spend(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _charge_run(path, 1, 1, target=2.0, max_eps=5.0)
    spent = epsilon(PrivacyLedger(path).load().history(), 1e-4)
    # The process dies before releasing; the coordinator retries the round.
    _charge_run(path, 1, 1, target=2.0, max_eps=5.0)
    assert epsilon(PrivacyLedger(path).load().history(), 1e-4) > spent
