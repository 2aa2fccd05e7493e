import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slidefed.client.privacy.accountant import epsilon, prv_epsilon, rdp_epsilon
from slidefed.client.privacy.charging import Charge, charge_round
from slidefed.client.privacy.evaluation_charging import (
    EvaluationRefused,
    charge_evaluation,
)
from slidefed.client.privacy.ledger import AccountantName, PrivacyLedger, Unit
from slidefed.common.errors import PolicyViolation, PrivacyBudgetExhausted


def _charge(
    ledger: PrivacyLedger, run_id: int, rnd: int, max_eps: float = 10.0
) -> Charge:
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


def _charge_run(
    path: Path,
    run_id: int,
    rnd: int,
    *,
    target: float,
    max_eps: float,
    planned_rounds: int = 3,
    steps: int = 10,
    unit: Unit = "patient",
    accountant: AccountantName = "rdp",
    input_sha256: str = "",
    eval_noise_multiplier: float = 0.0,
    planned_evaluations: int = 0,
) -> Charge:
    return charge_round(
        PrivacyLedger(path),
        run_id=run_id,
        server_round=rnd,
        planned_rounds=planned_rounds,
        sample_rate=0.2,
        steps=steps,
        target_epsilon=target,
        max_epsilon=max_eps,
        min_noise_multiplier=0.3,
        delta=1e-4,
        unit=unit,
        accountant=accountant,
        input_sha256=input_sha256,
        eval_noise_multiplier=eval_noise_multiplier,
        planned_evaluations=planned_evaluations,
    )


def _evaluate(
    path: Path,
    run_id: int,
    rnd: int,
    *,
    key: str = "",
    max_eps: float = 10.0,
    per_round: int = 1,
    per_run: int | None = 3,
    sigma: float = 4.0,
    accountant: AccountantName = "rdp",
    unit: Unit = "patient",
) -> Charge:
    return charge_evaluation(
        PrivacyLedger(path),
        run_id=run_id,
        server_round=rnd,
        noise_multiplier=sigma,
        max_epsilon=max_eps,
        delta=1e-4,
        unit=unit,
        accountant=accountant,
        input_sha256=key,
        max_per_round=per_round,
        max_per_run=per_run,
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
    for rnd in (1, 2):
        _charge(PrivacyLedger(path), 1, rnd, max_eps=4.0)
    before = PrivacyLedger(path).load()
    # The site lowered its maximum below what the next round would bring.
    with pytest.raises(PrivacyBudgetExhausted, match="over the site's max_epsilon"):
        _charge(PrivacyLedger(path), 1, 3, max_eps=before.rounds[-1].epsilon_after)
    # ... and below what is already spent: no new run.
    with pytest.raises(PrivacyBudgetExhausted, match="budget spent"):
        _charge(PrivacyLedger(path), 2, 1, max_eps=1.0)
    assert PrivacyLedger(path).load() == before


def test_second_run_that_fits_continues_the_composition(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    first = [_charge_run(path, 1, rnd, target=3.0, max_eps=6.0) for rnd in (1, 2, 3)]
    second = [_charge_run(path, 2, rnd, target=2.5, max_eps=6.0) for rnd in (1, 2, 3)]
    assert second[0].epsilon_before == pytest.approx(first[-1].epsilon_after)
    assert first[-1].epsilon_after < second[-1].epsilon_after <= 3.0 + 2.5
    # A round beyond the plan is refused, though the site maximum would allow it.
    with pytest.raises(PrivacyBudgetExhausted, match="planned 3 rounds"):
        _charge_run(path, 2, 4, target=2.5, max_eps=6.0)
    assert epsilon(PrivacyLedger(path).load().history(), 1e-4) <= 3.0 + 2.5


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


def test_a_replay_is_not_charged_and_reports_the_anchor_now(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    first = _charge_run(path, 1, 1, target=2.0, max_eps=5.0, input_sha256="a")
    _charge_run(path, 1, 2, target=2.0, max_eps=5.0, input_sha256="b")
    replay = _charge_run(path, 1, 1, target=2.0, max_eps=5.0, input_sha256="a")
    ledger = PrivacyLedger(path).load()
    assert replay.replay
    assert len(ledger.rounds) == 2
    assert replay.noise_multiplier == first.noise_multiplier
    assert (replay.ledger_rounds, replay.ledger_sha256) == ledger.anchor()


def test_the_unit_of_a_dataset_cannot_change(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    # Before any charge the unit is free (a new dataset); the first charge fixes it.
    _charge_run(path, 1, 1, target=2.0, max_eps=5.0, unit="group")
    before = PrivacyLedger(path).load()
    with pytest.raises(PolicyViolation) as refused:
        _charge_run(path, 1, 2, target=2.0, max_eps=5.0, unit="tile")
    assert not isinstance(refused.value, PrivacyBudgetExhausted)
    message = str(refused.value)
    assert "'group'" in message
    assert "'tile'" in message
    assert "\n" not in message
    assert "one dataset keeps one privacy unit" in message
    with pytest.raises(PolicyViolation, match="'group'"):
        _evaluate(path, 1, 1, unit="patient")
    assert PrivacyLedger(path).load() == before
    assert PrivacyLedger(path).load().unit == "group"


def test_no_round_beyond_the_runs_plan_even_under_the_site_maximum(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.json"
    # Issue 13: a 2-round run at target 4 took rounds 3-9 up to epsilon 9.77.
    for rnd in (1, 2):
        _charge_run(path, 1, rnd, target=4.0, max_eps=10.0, planned_rounds=2)
    for rnd in (3, 9):
        with pytest.raises(PrivacyBudgetExhausted) as refused:
            _charge_run(path, 1, rnd, target=4.0, max_eps=10.0, planned_rounds=9)
        assert str(refused.value) == (
            f"run 1 planned 2 rounds at its grant (epsilon 4); round {rnd} refused; "
            "start a new run"
        )
    ledger = PrivacyLedger(path).load()
    assert len(ledger.rounds) == 2
    assert epsilon(ledger.history(), 1e-4) <= 4.0


def test_a_round_dearer_than_planned_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _charge_run(path, 1, 1, target=2.0, max_eps=10.0, steps=10)
    with pytest.raises(PrivacyBudgetExhausted, match="more than its grant covers"):
        _charge_run(path, 1, 2, target=2.0, max_eps=10.0, steps=20)
    # Fewer steps cost less than the plan: within the grant.
    assert _charge_run(path, 1, 2, target=2.0, max_eps=10.0, steps=5).steps == 5


def test_the_evaluation_reserve_raises_the_training_noise(tmp_path: Path) -> None:
    plain = _charge_run(tmp_path / "a.json", 1, 1, target=3.0, max_eps=10.0)
    reserved = _charge_run(
        tmp_path / "b.json",
        1,
        1,
        target=3.0,
        max_eps=10.0,
        eval_noise_multiplier=4.0,
        planned_evaluations=3,
    )
    assert reserved.noise_multiplier > plain.noise_multiplier
    plan = PrivacyLedger(tmp_path / "b.json").load().run(1)
    assert plan is not None
    assert (plan.planned_evaluations, plan.eval_noise_multiplier) == (3, 4.0)
    # The whole plan (3 rounds, 3 evaluations) stays within the grant.
    whole = [(reserved.noise_multiplier, 0.2, 30), (4.0, 1.0, 3)]
    assert rdp_epsilon(whole, 1e-4) <= 3.0
    for rnd in (2, 3):
        _charge_run(tmp_path / "b.json", 1, rnd, target=3.0, max_eps=10.0)
        _evaluate(tmp_path / "b.json", 1, rnd)
    _evaluate(tmp_path / "b.json", 1, 1)
    assert epsilon(PrivacyLedger(tmp_path / "b.json").load().history(), 1e-4) <= 3.0


def test_a_reserve_larger_than_the_grant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PrivacyBudgetExhausted, match="cannot cover its 50 evaluations"):
        _charge_run(
            tmp_path / "l.json",
            1,
            1,
            target=1.0,
            max_eps=10.0,
            eval_noise_multiplier=2.0,
            planned_evaluations=50,
        )
    assert not (tmp_path / "l.json").exists()


def test_an_evaluation_is_a_charged_gaussian_release(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    train = _charge_run(path, 1, 1, target=2.0, max_eps=10.0)
    charge = _evaluate(path, 1, 1, key="k1")
    assert not charge.replay
    assert (charge.noise_multiplier, charge.sample_rate, charge.steps) == (4.0, 1.0, 1)
    assert charge.epsilon_before == pytest.approx(train.epsilon_after)
    assert charge.epsilon_after > train.epsilon_after
    ledger = PrivacyLedger(path).load()
    assert [r.kind for r in ledger.rounds] == ["train", "evaluate"]
    assert ledger.history()[-1] == (4.0, 1.0, 1)
    assert charge.epsilon_after == pytest.approx(rdp_epsilon(ledger.history(), 1e-4))
    assert (charge.ledger_rounds, charge.ledger_sha256) == ledger.anchor()


def test_an_evaluation_replay_is_not_charged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    first = _evaluate(path, 1, 1, key="model-a")
    again = _evaluate(path, 1, 1, key="model-a")
    assert again.replay
    assert not first.replay
    assert again.epsilon_after == pytest.approx(first.epsilon_after)
    assert len(PrivacyLedger(path).load().rounds) == 1
    # A training round with the same key is another release.
    _charge_run(path, 1, 1, target=2.0, max_eps=10.0, input_sha256="model-a")
    assert len(PrivacyLedger(path).load().rounds) == 2
    # Another model in the same round is a new evaluation: past the round's cap.
    with pytest.raises(EvaluationRefused, match="max_evaluations_per_round = 1"):
        _evaluate(path, 1, 1, key="model-b")


def test_evaluations_are_capped_per_round_and_per_run(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _evaluate(path, 1, 1, per_round=2, per_run=3)
    _evaluate(path, 1, 1, per_round=2, per_run=3)
    with pytest.raises(EvaluationRefused, match="2 evaluation\\(s\\) in round 1"):
        _evaluate(path, 1, 1, per_round=2, per_run=3)
    _evaluate(path, 1, 2, per_round=2, per_run=3)
    with pytest.raises(EvaluationRefused, match="max_evaluations_per_run = 3") as cap:
        _evaluate(path, 1, 3, per_round=2, per_run=3)
    assert isinstance(cap.value, PolicyViolation)
    assert not isinstance(cap.value, PrivacyBudgetExhausted)
    assert len(PrivacyLedger(path).load().rounds) == 3
    # The caps are per run.
    assert not _evaluate(path, 2, 1, per_round=2, per_run=3).replay
    with pytest.raises(EvaluationRefused, match="max_evaluations_per_round = 0"):
        _evaluate(path, 3, 1, per_round=0)
    with pytest.raises(EvaluationRefused, match="must be > 0"):
        _evaluate(path, 3, 1, sigma=0.0)


def test_an_evaluation_over_the_site_maximum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _evaluate(path, 1, 1, sigma=1.0, max_eps=6.0)
    before = PrivacyLedger(path).load()
    with pytest.raises(PrivacyBudgetExhausted, match="over the site's max_epsilon"):
        _evaluate(path, 1, 2, sigma=1.0, max_eps=before.rounds[0].epsilon_after)
    assert PrivacyLedger(path).load() == before


@pytest.mark.parametrize("accountant", ["rdp", "prv", "best"])
def test_the_charge_names_the_bound_it_reports(
    tmp_path: Path, accountant: AccountantName
) -> None:
    path = tmp_path / "ledger.json"
    charge = _charge_run(path, 1, 1, target=4.0, max_eps=10.0, accountant=accountant)
    history = PrivacyLedger(path).load().history()
    rdp, prv = rdp_epsilon(history, 1e-4), prv_epsilon(history, 1e-4)
    assert prv is not None
    assert prv < rdp
    assert charge.epsilon_rdp == pytest.approx(rdp)
    assert charge.accountant == ("rdp" if accountant == "rdp" else "prv")
    if accountant == "rdp":
        assert charge.epsilon_after == pytest.approx(rdp)
    else:
        assert charge.epsilon_after == pytest.approx(min(rdp, prv))
        assert charge.epsilon_round == pytest.approx(charge.epsilon_after)
    assert charge.epsilon_before == 0.0
    assert PrivacyLedger(path).load().accountant == accountant


def test_best_reports_rdp_when_it_is_the_tighter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slidefed.client.privacy import accountant

    # Where PRV's upper bound is the looser (or cannot be computed), best is RDP.
    monkeypatch.setattr(
        accountant,
        "prv_epsilon",
        lambda history, delta: rdp_epsilon(history, delta) + 1,
    )
    best = _charge_run(
        tmp_path / "a.json", 1, 1, target=4.0, max_eps=9.0, accountant="best"
    )
    assert best.accountant == "rdp"
    assert best.epsilon_after == pytest.approx(best.epsilon_rdp)
    monkeypatch.setattr(accountant, "prv_epsilon", lambda history, delta: None)
    prv = _charge_run(
        tmp_path / "b.json", 1, 1, target=4.0, max_eps=9.0, accountant="prv"
    )
    assert prv.accountant == "rdp"
    assert prv.epsilon_after == pytest.approx(prv.epsilon_rdp)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 2000),
    batch_size=st.sampled_from([4, 8, 16]),
    epochs=st.integers(1, 3),
)
def test_steps_charged_are_ceil_n_over_b_per_epoch_at_rate_one_over_that(
    n: int, batch_size: int, epochs: int
) -> None:
    per_epoch = -(-n // batch_size)  # ceil(N / B), in exact integer arithmetic
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ledger.json"
        charge = charge_round(
            PrivacyLedger(path),
            run_id=1,
            server_round=1,
            planned_rounds=2,
            sample_rate=1 / per_epoch,
            steps=per_epoch * epochs,
            target_epsilon=8.0,
            max_epsilon=10.0,
            min_noise_multiplier=0.3,
            delta=1e-5,
            unit="patient",
        )
        row = PrivacyLedger(path).load().rounds[0]
    assert charge.steps == row.steps == per_epoch * epochs
    assert charge.sample_rate == row.sample_rate == 1 / per_epoch


def test_a_grant_is_the_target_capped_at_the_maximum_and_never_a_remainder(
    tmp_path: Path,
) -> None:
    # What docs/privacy.md says: a target above max_epsilon is granted the maximum;
    # a target above what remains is refused, never granted the remainder.
    fresh = tmp_path / "fresh.json"
    last = [
        _charge_run(fresh, 1, r, target=12.0, max_eps=8.0, planned_rounds=2)
        for r in (1, 2)
    ][-1]
    assert 7.5 < last.epsilon_after <= 8.0 + 1e-9
    spent = tmp_path / "spent.json"
    for r in (1, 2, 3):
        first = _charge_run(spent, 1, r, target=5.0, max_eps=8.0)
    with pytest.raises(PrivacyBudgetExhausted, match="lower target-epsilon to at most"):
        _charge_run(
            spent,
            2,
            1,
            target=first.epsilon_max - first.epsilon_after + 0.5,
            max_eps=8.0,
        )
    assert len(PrivacyLedger(spent).load().rounds) == 3
