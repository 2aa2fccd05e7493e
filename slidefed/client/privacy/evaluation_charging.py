"""Charging an evaluation: a Gaussian release of noised statistics, capped by policy.

An evaluation answers a model the coordinator chose, so it is charged like a
training round, before its statistics are computed, and capped per round and per
run by the site's policy (:mod:`slidefed.client.privacy.charging` has the shared
rules: one unit per dataset, replays, the site maximum).
"""

from __future__ import annotations

from slidefed.client.privacy.charging import (
    Charge,
    _adopt_policy,
    _charge,
    _replay_charge,
    _replayed,
)
from slidefed.client.privacy.ledger import (
    AccountantName,
    Ledger,
    PrivacyLedger,
    Unit,
)
from slidefed.common.errors import PolicyViolation


class EvaluationRefused(PolicyViolation):
    """An evaluation past the policy's cap per round or per run."""


def charge_evaluation(
    ledger_file: PrivacyLedger,
    *,
    run_id: int,
    server_round: int,
    noise_multiplier: float,
    max_epsilon: float,
    delta: float,
    unit: Unit,
    accountant: AccountantName = "rdp",
    input_sha256: str = "",
    max_per_round: int = 1,
    max_per_run: int | None = None,
) -> Charge:
    """Charge one evaluation (a Gaussian release) before its statistics are computed.

    The evaluation is one Gaussian mechanism at ``noise_multiplier`` on a per-unit
    sensitivity of 1: sample rate 1, one step. A replay (same run, round and
    ``input_sha256``) is not charged again. ``max_per_run`` None: no cap per run
    beyond the budget (callers pass the policy's, or the run's planned rounds).

    Raises
    ------
    PolicyViolation
        If the ledger's charges are in another privacy unit than ``unit``.
    EvaluationRefused
        If the run already had ``max_per_round`` evaluations in this round or
        ``max_per_run`` in the run, or ``noise_multiplier`` is not positive.
    PrivacyBudgetExhausted
        If the evaluation would take the dataset past ``max_epsilon``.
    """
    with ledger_file.locked() as ledger:
        delta = _adopt_policy(ledger, ledger_file, unit, accountant, delta)
        replayed = _replayed(ledger, run_id, server_round, "evaluate", input_sha256)
        if replayed is not None:
            return _replay_charge(replayed, ledger, delta, accountant, max_epsilon)
        _check_evaluation_caps(
            ledger,
            run_id=run_id,
            server_round=server_round,
            noise_multiplier=noise_multiplier,
            max_per_round=max_per_round,
            max_per_run=max_per_run,
        )
        return _charge(
            ledger,
            ledger.history(),
            (float(noise_multiplier), 1.0, 1),
            kind="evaluate",
            run_id=run_id,
            server_round=server_round,
            delta=delta,
            accountant=accountant,
            max_epsilon=max_epsilon,
            input_sha256=input_sha256,
        )


def _check_evaluation_caps(
    ledger: Ledger,
    *,
    run_id: int,
    server_round: int,
    noise_multiplier: float,
    max_per_round: int,
    max_per_run: int | None,
) -> None:
    if not noise_multiplier > 0:
        raise EvaluationRefused(
            f"evaluation noise multiplier {noise_multiplier} must be > 0 "
            "(eval_noise_multiplier in site.toml); evaluation refused"
        )
    done = [r for r in ledger.rounds if r.run_id == run_id and r.kind == "evaluate"]
    in_round = sum(r.round == server_round for r in done)
    if in_round >= max_per_round:
        raise EvaluationRefused(
            f"run {run_id} already had {in_round} evaluation(s) in round "
            f"{server_round}, the policy's max_evaluations_per_round = "
            f"{max_per_round} (site.toml); evaluation refused"
        )
    if max_per_run is not None and len(done) >= max_per_run:
        raise EvaluationRefused(
            f"run {run_id} already had {len(done)} evaluation(s), the policy's "
            f"max_evaluations_per_run = {max_per_run} (site.toml; default: the "
            "run's planned rounds); evaluation refused; start a new run"
        )


__all__ = ["EvaluationRefused", "charge_evaluation"]
