"""Charging a round to the ledger before it trains: the site's budget policy.

A round is charged (written atomically to disk) before training starts, so a
crash can only over-count. The first round of a run plans it: the run is granted
its target epsilon, capped at the site maximum, or refused up front. A site never
hands a run less budget than it planned for, since that would silently train with
far more noise than the researcher designed.

A round asked again with the same global model (``input_sha256``), after a crash
or a coordinator restart, is a replay: training is seeded by run, site and round,
so it releases the very same update, and it is not charged twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from slidefed.client.privacy.accountant import calibrate_noise, epsilon
from slidefed.client.privacy.ledger import (
    AccountantName,
    Ledger,
    LedgerRound,
    LedgerRun,
    PrivacyLedger,
    Step,
    Unit,
)
from slidefed.common.budget import EPSILON_TOLERANCE
from slidefed.common.errors import PrivacyBudgetExhausted


def now() -> str:
    """UTC time in ISO-8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Charge(BaseModel):
    """What one round costs and what it brings the total to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: int
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    unit: Unit
    accountant: AccountantName
    epsilon_round: float
    epsilon_before: float
    epsilon_after: float
    epsilon_max: float
    replay: bool = False


def charge_round(
    ledger_file: PrivacyLedger,
    *,
    run_id: int,
    server_round: int,
    planned_rounds: int,
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    max_epsilon: float,
    min_noise_multiplier: float,
    delta: float,
    unit: Unit,
    accountant: AccountantName = "rdp",
    input_sha256: str = "",
) -> Charge:
    """Plan (first round of a run) and charge one round before it trains.

    A replay of a charged round (same run, round and ``input_sha256``) is not
    charged again; the module docstring states the policy.

    Raises
    ------
    PrivacyBudgetExhausted
        If the run's budget is not available, or the round would take the
        dataset past ``max_epsilon``; nothing is charged then.
    """
    request = _Request(
        run_id=run_id,
        server_round=server_round,
        planned_rounds=planned_rounds,
        sample_rate=sample_rate,
        steps=steps,
        target_epsilon=target_epsilon,
        max_epsilon=max_epsilon,
        min_noise_multiplier=min_noise_multiplier,
        unit=unit,
        accountant=accountant,
        input_sha256=input_sha256,
    )
    with ledger_file.locked() as ledger:
        delta = _adopt_policy(ledger, request, delta)
        history = ledger.history()
        replayed = _replayed_round(ledger, request)
        if replayed is not None:
            return _replay_charge(replayed, ledger, delta, request)
        before = epsilon(history, delta, accountant=accountant)
        plan = ledger.run(run_id)
        if plan is None:
            plan = _plan_run(request, history, before=before, delta=delta)
            ledger.runs.append(plan)
        step = (plan.noise_multiplier, sample_rate, steps)
        after = _epsilon_after(request, history, step, delta)
        ledger.rounds.append(_ledger_round(request, step, after))
    return _new_charge(request, step, delta=delta, before=before, after=after)


@dataclass(frozen=True)
class _Request:
    """One round's charge request, as :func:`charge_round` was called."""

    run_id: int
    server_round: int
    planned_rounds: int
    sample_rate: float
    steps: int
    target_epsilon: float
    max_epsilon: float
    min_noise_multiplier: float
    unit: Unit
    accountant: AccountantName
    input_sha256: str


def _adopt_policy(ledger: Ledger, request: _Request, delta: float) -> float:
    """Record the site's unit and accountant; the delta of the whole history.

    The first charge fixes the ledger's delta; a later, smaller one is honoured
    for its round, a larger one is not.
    """
    if ledger.delta is None:
        ledger.delta = delta
    ledger.unit = request.unit
    ledger.accountant = request.accountant
    return min(delta, ledger.delta)


def _replayed_round(ledger: Ledger, request: _Request) -> LedgerRound | None:
    """The charged round that ``request`` repeats, if any."""
    return next(
        (
            r
            for r in ledger.rounds
            if request.input_sha256
            and r.run_id == request.run_id
            and r.round == request.server_round
            and r.input_sha256 == request.input_sha256
        ),
        None,
    )


def _plan_run(
    request: _Request, history: list[Step], *, before: float, delta: float
) -> LedgerRun:
    """Grant a new run its budget and calibrate its noise, or refuse it."""
    max_epsilon, target_epsilon = request.max_epsilon, request.target_epsilon
    remaining = max_epsilon - before
    wanted = min(target_epsilon, max_epsilon)
    if remaining <= EPSILON_TOLERANCE:
        raise PrivacyBudgetExhausted(
            f"site budget spent: epsilon {before:.3f} of max_epsilon "
            f"{max_epsilon:.3f} (policy in site.toml); no more training on "
            "this dataset"
        )
    if remaining + EPSILON_TOLERANCE < wanted:
        raise PrivacyBudgetExhausted(
            f"run asks for epsilon {target_epsilon:.3g} but only "
            f"{remaining:.3f} of the site's max_epsilon {max_epsilon:.3g} "
            f"remains; lower target-epsilon to at most {remaining:.3f}"
        )
    sigma = calibrate_noise(
        history,
        sample_rate=request.sample_rate,
        steps=request.steps * request.planned_rounds,
        target_epsilon=before + wanted,
        delta=delta,
        accountant=request.accountant,
    )
    return LedgerRun(
        run_id=request.run_id,
        started=now(),
        target_epsilon=target_epsilon,
        planned_rounds=request.planned_rounds,
        steps_per_round=request.steps,
        sample_rate=request.sample_rate,
        noise_multiplier=max(sigma, request.min_noise_multiplier),
        epsilon_before=before,
    )


def _epsilon_after(
    request: _Request, history: list[Step], step: Step, delta: float
) -> float:
    """Epsilon once ``step`` is charged; refuses a round over the site maximum."""
    after = epsilon([*history, step], delta, accountant=request.accountant)
    if after > request.max_epsilon + EPSILON_TOLERANCE:
        raise PrivacyBudgetExhausted(
            f"round {request.server_round} would bring epsilon to {after:.3f}, over "
            f"the site's max_epsilon {request.max_epsilon:.3f} (policy in site.toml); "
            "round refused"
        )
    return after


def _ledger_round(request: _Request, step: Step, after: float) -> LedgerRound:
    sigma, sample_rate, steps = step
    return LedgerRound(
        run_id=request.run_id,
        round=request.server_round,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        epsilon_after=after,
        time=now(),
        input_sha256=request.input_sha256,
    )


def _new_charge(
    request: _Request, step: Step, *, delta: float, before: float, after: float
) -> Charge:
    sigma, sample_rate, steps = step
    return Charge(
        run_id=request.run_id,
        round=request.server_round,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        unit=request.unit,
        accountant=request.accountant,
        epsilon_round=epsilon([step], delta, accountant=request.accountant),
        epsilon_before=before,
        epsilon_after=after,
        epsilon_max=request.max_epsilon,
    )


def _replay_charge(
    replayed: LedgerRound, ledger: Ledger, delta: float, request: _Request
) -> Charge:
    accountant = request.accountant
    spent = epsilon(ledger.history(), delta, accountant=accountant)
    step = (replayed.noise_multiplier, replayed.sample_rate, replayed.steps)
    return Charge(
        run_id=replayed.run_id,
        round=replayed.round,
        noise_multiplier=replayed.noise_multiplier,
        sample_rate=replayed.sample_rate,
        steps=replayed.steps,
        delta=delta,
        unit=request.unit,
        accountant=accountant,
        epsilon_round=epsilon([step], delta, accountant=accountant),
        epsilon_before=spent,
        epsilon_after=spent,
        epsilon_max=request.max_epsilon,
        replay=True,
    )


__all__ = ["Charge", "charge_round"]
