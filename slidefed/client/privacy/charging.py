"""Charging a release to the ledger before it is computed: the site's budget policy.

A training round or an evaluation is charged (written atomically to disk) before
anything is computed from the data, so a crash can only over-count. Every refusal
below leaves the ledger as it was.

- **One unit per dataset.** Once the ledger holds a charge, a charge in another
  privacy unit is refused: epsilon per patient and epsilon per tile do not compose.
- **Planning.** The first round of a run plans it: the run is granted its target
  epsilon, capped at the site maximum, or refused up front. Its noise is calibrated
  so that the whole history, plus the run's planned training steps, plus the
  evaluations it may ask for (``planned_evaluations`` Gaussian releases at
  ``eval_noise_multiplier``), stays within the epsilon spent before plus the grant.
  A site never hands a run less budget than it planned for, since that would
  silently train with far more noise than the researcher designed.
- **Limits that bind.** A training round past the run's planned rounds is refused,
  and so is one that costs more than the plan (more steps or a larger sample rate
  than it was calibrated for): the grant covers the plan, nothing more. Every
  release is also refused when it would take the dataset past the site maximum,
  by the reported bound or by RDP (the bound an auditor recomputes from the log;
  a plan calibrated on RDP never reaches that refusal).
- **Evaluations** are Gaussian mechanisms (sample rate 1, one step) at the policy's
  noise, charged like training and capped per round and per run
  (:class:`EvaluationRefused`).
- **Replays.** A release asked again with the same inputs (same run, round, kind
  and ``input_sha256``), after a crash or a coordinator restart, is answered with
  the stored release and not charged twice.
- **Reported epsilon** is the tighter valid bound the site's accountant asks for
  (``rdp``, ``prv`` or ``best``); :attr:`Charge.accountant` says which bound it is,
  and :attr:`Charge.epsilon_rdp` is always the RDP bound, for auditors.
- **Anchor.** Every :class:`Charge` carries the ledger's anchor after it
  (:meth:`~slidefed.client.privacy.ledger.Ledger.anchor`), which the site writes to
  its audit log (:mod:`slidefed.client.privacy.anchor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from slidefed.client.privacy.accountant import (
    calibrate_noise,
    epsilon_of,
    rdp_epsilon,
    tightest,
)
from slidefed.client.privacy.ledger import (
    AccountantName,
    Bound,
    EntryKind,
    Ledger,
    LedgerRound,
    LedgerRun,
    PrivacyLedger,
    Step,
    Unit,
)
from slidefed.common.budget import EPSILON_TOLERANCE
from slidefed.common.errors import PolicyViolation, PrivacyBudgetExhausted


def now() -> str:
    """UTC time in ISO-8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Charge(BaseModel):
    """What one release costs and what it brings the total to.

    ``epsilon_round``, ``epsilon_before`` and ``epsilon_after`` are all by the bound
    ``accountant`` names (``rdp`` or ``prv``); ``epsilon_rdp`` is the RDP bound of
    the whole history after the charge. ``ledger_rounds`` and ``ledger_sha256`` are
    the ledger's anchor after the charge (for a replay: the anchor now).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: int
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    unit: Unit
    accountant: Bound
    epsilon_round: float
    epsilon_before: float
    epsilon_after: float
    epsilon_max: float
    epsilon_rdp: float
    ledger_rounds: int
    ledger_sha256: str
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
    eval_noise_multiplier: float = 0.0,
    planned_evaluations: int = 0,
    run_name: str = "",
    flower_run_id: int | None = None,
) -> Charge:
    """Plan (first round of a run) and charge one training round before it trains.

    A new run's plan keeps its ``run_name`` and ``flower_run_id`` (for the audit log).
    A replay of a charged round (same run, round and ``input_sha256``) is not
    charged again; the module docstring states the policy. ``planned_evaluations``
    evaluations at ``eval_noise_multiplier`` are reserved in the run's grant when it
    is planned (none by default).

    Raises
    ------
    PolicyViolation
        If the ledger's charges are in another privacy unit than ``unit``.
    PrivacyBudgetExhausted
        If the run's budget is not available, the round is past the run's plan or
        costs more than it, or it would take the dataset past ``max_epsilon``;
        nothing is charged then.
    """
    _check_evaluations(planned_evaluations, eval_noise_multiplier)
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
        eval_noise_multiplier=eval_noise_multiplier,
        planned_evaluations=planned_evaluations,
        run_name=run_name,
        flower_run_id=flower_run_id,
    )
    with ledger_file.locked() as ledger:
        delta = _adopt_policy(ledger, ledger_file, unit, accountant, delta)
        replayed = _replayed(ledger, run_id, server_round, "train", input_sha256)
        if replayed is not None:
            return _replay_charge(replayed, ledger, delta, accountant, max_epsilon)
        history = ledger.history()
        plan = ledger.run(run_id)
        if plan is None:
            plan = _plan_run(request, history, delta=delta)
            ledger.runs.append(plan)
        _check_within_plan(plan, request)
        step = (plan.noise_multiplier, sample_rate, steps)
        return _charge(
            ledger,
            history,
            step,
            kind="train",
            run_id=run_id,
            server_round=server_round,
            delta=delta,
            accountant=accountant,
            max_epsilon=max_epsilon,
            input_sha256=input_sha256,
        )


def _check_evaluations(planned: int, noise_multiplier: float) -> None:
    """Refuse a negative count, or evaluations planned without noise."""
    if planned < 0:
        raise ValueError(f"planned_evaluations={planned} must be >= 0")
    if planned and noise_multiplier <= 0:
        raise ValueError(
            f"{planned} planned evaluations need an "
            f"eval_noise_multiplier > 0, not {noise_multiplier}"
        )


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
    eval_noise_multiplier: float
    planned_evaluations: int
    run_name: str = ""
    flower_run_id: int | None = None


def _adopt_policy(
    ledger: Ledger,
    ledger_file: PrivacyLedger,
    unit: Unit,
    accountant: AccountantName,
    delta: float,
) -> float:
    """Check and record the unit and accountant; the delta of the whole history.

    The first charge fixes the ledger's unit and delta; a later, smaller delta is
    honoured for its release, a larger one is not.
    """
    if ledger.rounds and ledger.unit != unit:
        raise PolicyViolation(
            f"{ledger_file.path} charges this dataset per {ledger.unit!r} but this "
            f"request's unit is {unit!r}: one dataset keeps one privacy unit; restore "
            f"what made it {ledger.unit!r} (the data's ids or policy.unit in "
            "site.toml)"
        )
    if ledger.delta is None:
        ledger.delta = delta
    ledger.unit = unit
    ledger.accountant = accountant
    return min(delta, ledger.delta)


def _replayed(
    ledger: Ledger, run_id: int, server_round: int, kind: EntryKind, input_sha256: str
) -> LedgerRound | None:
    """The charged entry that this request repeats, if any."""
    if not input_sha256:
        return None
    return next(
        (
            r
            for r in ledger.rounds
            if r.run_id == run_id
            and r.round == server_round
            and r.kind == kind
            and r.input_sha256 == input_sha256
        ),
        None,
    )


def _plan_run(request: _Request, history: list[Step], *, delta: float) -> LedgerRun:
    """Grant a new run its budget and calibrate its noise, or refuse it."""
    max_epsilon, target_epsilon = request.max_epsilon, request.target_epsilon
    before, _ = tightest(history, delta, accountant=request.accountant)
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
    prior = [*history, *_reserve(request)]
    goal = before + wanted
    if request.planned_evaluations and rdp_epsilon(prior, delta) >= goal:
        raise PrivacyBudgetExhausted(
            f"run's grant of epsilon {wanted:.3g} cannot cover its "
            f"{request.planned_evaluations} evaluations at noise "
            f"{request.eval_noise_multiplier:.3g}, let alone training; raise "
            "target-epsilon, or lower max_evaluations_per_run or raise "
            "eval_noise_multiplier in site.toml"
        )
    sigma = calibrate_noise(
        prior,
        sample_rate=request.sample_rate,
        steps=request.steps * request.planned_rounds,
        target_epsilon=goal,
        delta=delta,
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
        planned_evaluations=request.planned_evaluations,
        eval_noise_multiplier=request.eval_noise_multiplier,
        run_name=request.run_name,
        flower_run_id=request.flower_run_id,
    )


def _reserve(request: _Request) -> list[Step]:
    """The evaluations a run's plan reserves: Gaussian releases, one step each."""
    if not request.planned_evaluations:
        return []
    return [(request.eval_noise_multiplier, 1.0, request.planned_evaluations)]


def _check_within_plan(plan: LedgerRun, request: _Request) -> None:
    """Refuse a round past the run's planned rounds, or one dearer than planned."""
    if request.server_round > plan.planned_rounds:
        raise PrivacyBudgetExhausted(
            f"run {plan.run_id} planned {plan.planned_rounds} rounds at its grant "
            f"(epsilon {plan.target_epsilon:.3g}); round {request.server_round} "
            "refused; start a new run"
        )
    if request.steps > plan.steps_per_round or request.sample_rate > plan.sample_rate:
        raise PrivacyBudgetExhausted(
            f"run {plan.run_id} was planned at {plan.steps_per_round} steps per "
            f"round at sample rate {plan.sample_rate:.4g}; round "
            f"{request.server_round} asks {request.steps} at "
            f"{request.sample_rate:.4g}, more than its grant covers; start a new run"
        )


def _charge(
    ledger: Ledger,
    history: Sequence[Step],
    step: Step,
    *,
    kind: EntryKind,
    run_id: int,
    server_round: int,
    delta: float,
    accountant: AccountantName,
    max_epsilon: float,
    input_sha256: str,
) -> Charge:
    """Append ``step`` to the ledger unless it would pass ``max_epsilon``."""
    after, bound = tightest([*history, step], delta, accountant=accountant)
    rdp_after = rdp_epsilon([*history, step], delta)
    # Within the maximum by the reported bound and by RDP, the bound the auditor
    # recomputes (calibration keeps planned releases within it anyway).
    worst = max(after, rdp_after)
    if worst > max_epsilon + EPSILON_TOLERANCE:
        what = "round" if kind == "train" else "evaluation in round"
        which = bound if after >= rdp_after else "rdp"
        raise PrivacyBudgetExhausted(
            f"{what} {server_round} would bring epsilon to {worst:.3f} ({which}), "
            f"over the site's max_epsilon {max_epsilon:.3f} (policy in site.toml); "
            f"{'round' if kind == 'train' else 'evaluation'} refused"
        )
    sigma, sample_rate, steps = step
    ledger.rounds.append(
        LedgerRound(
            run_id=run_id,
            round=server_round,
            kind=kind,
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps=steps,
            epsilon_after=after,
            time=now(),
            input_sha256=input_sha256,
        )
    )
    n, digest = ledger.anchor()
    return Charge(
        run_id=run_id,
        round=server_round,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        unit=ledger.unit,
        accountant=bound,
        epsilon_round=epsilon_of([step], delta, bound),
        epsilon_before=epsilon_of(history, delta, bound),
        epsilon_after=after,
        epsilon_max=max_epsilon,
        epsilon_rdp=rdp_after,
        ledger_rounds=n,
        ledger_sha256=digest,
    )


def _replay_charge(
    replayed: LedgerRound,
    ledger: Ledger,
    delta: float,
    accountant: AccountantName,
    max_epsilon: float,
) -> Charge:
    history = ledger.history()
    spent, bound = tightest(history, delta, accountant=accountant)
    step = (replayed.noise_multiplier, replayed.sample_rate, replayed.steps)
    n, digest = ledger.anchor()
    return Charge(
        run_id=replayed.run_id,
        round=replayed.round,
        noise_multiplier=replayed.noise_multiplier,
        sample_rate=replayed.sample_rate,
        steps=replayed.steps,
        delta=delta,
        unit=ledger.unit,
        accountant=bound,
        epsilon_round=epsilon_of([step], delta, bound),
        epsilon_before=spent,
        epsilon_after=spent,
        epsilon_max=max_epsilon,
        epsilon_rdp=rdp_epsilon(history, delta),
        ledger_rounds=n,
        ledger_sha256=digest,
        replay=True,
    )


__all__ = ["Charge", "charge_round"]
