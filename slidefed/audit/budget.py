"""Recompute each site's composed epsilon from the DP parameters in its log.

A site's ``round_charged`` and ``evaluation_charged`` records carry the DP
parameters of each release (noise multiplier, sample rate, steps). The auditor
composes them, in log order, into one history with its own accountant
(:mod:`slidefed.audit.accountant`), one pass over the log, and after each charge
compares the recomputed RDP epsilon, at that record's delta, with what the record
says:

- ``over_budget`` when the recomputation exceeds the record's ``epsilon_max``
  (unless the record's own ``epsilon_after`` already does: the per-record check of
  :mod:`slidefed.audit.cross_check` reports that line);
- ``epsilon_mismatch`` when the record's ``epsilon_rdp`` (the site's RDP bound of
  its whole history) disagrees with the recomputation; when its ``accountant`` is
  ``rdp`` and its ``epsilon_after`` disagrees; when it is ``prv`` and its
  ``epsilon_after`` is above the recomputed RDP bound (a site reports the tighter
  of the two bounds); or when it names another accountant.

Replays (``round_replayed`` records, and charges with ``replay`` true) repeat an
earlier charge and are not composed again. Records whose payload cannot be read are
left out here; the per-record check reports them as ``malformed``. The auditor
does not recompute a PRV bound (its install has no Opacus), so a site's maximum is
checked by RDP: sites calibrate their noise on RDP, so an honest site stays within
its maximum by RDP too, and a PRV figure it reports may only be lower.

This module imports only the standard library and pydantic.
"""

from __future__ import annotations

import math

from pydantic import ValidationError

from slidefed.audit.accountant import Composition, agrees, over_budget
from slidefed.audit.load import LoadedLog
from slidefed.audit.problems import Problem
from slidefed.common.audit.events import (
    EvaluationCharged,
    RoundCharged,
    event_data,
)
from slidefed.common.audit.records import AuditRecord
from slidefed.common.budget import EPSILON_TOLERANCE

CHARGE_MODELS: dict[str, type[RoundCharged]] = {
    "round_charged": RoundCharged,
    "evaluation_charged": EvaluationCharged,
}
"""The events whose DP parameters compose into a site's history, and their models."""

_RECOMPUTED = "recomputed by the auditor from the logged DP parameters"


def budget_problems(log: LoadedLog) -> list[Problem]:
    """Compose a site log's charges and check each record against the composition.

    Parameters
    ----------
    log : LoadedLog
        A verified and read log; logs of the server (or empty ones) have no
        charges and give no problem.

    Returns
    -------
    list[Problem]
        ``over_budget`` and ``epsilon_mismatch`` problems, by line (see the module
        docstring).
    """
    if log.actor != "site":
        return []
    composed = Composition()
    problems: list[Problem] = []
    for line, record in log.records:
        model = CHARGE_MODELS.get(record.event)
        if model is None or record.actor != "site":
            continue
        try:
            data = event_data(record, model)
        except ValidationError:
            continue
        if data.replay:
            continue
        composed.add(data.noise_multiplier, data.sample_rate, data.steps)
        problems.extend(
            _charge_problems(line, record, data, composed.epsilon(data.delta))
        )
    return problems


def _charge_problems(
    line: int, record: AuditRecord, data: RoundCharged, recomputed: float
) -> list[Problem]:
    """Compare one charge with the recomputed epsilon of the history up to it."""
    site = f"site {record.actor_name}"
    where = f"at line {line} ({record.event}, run {record.run_id} round {record.round})"
    problems: list[Problem] = []
    claimed_over = not data.epsilon_after <= data.epsilon_max + EPSILON_TOLERANCE
    if over_budget(recomputed, data.epsilon_max) and not claimed_over:
        composed, maximum = _pair(recomputed, data.epsilon_max, digits=3)
        problems.append(
            Problem(
                line=line,
                kind="over_budget",
                message=f"{site}: composed epsilon {composed} exceeds its max_epsilon "
                f"{maximum} {where} ({_RECOMPUTED})",
            )
        )
    if data.epsilon_rdp is not None and not agrees(data.epsilon_rdp, recomputed):
        claimed, ours = _pair(data.epsilon_rdp, recomputed)
        problems.append(
            _mismatch(
                line,
                f"{site}: epsilon_rdp {claimed} {where} disagrees with the composed "
                f"RDP epsilon {ours} {_RECOMPUTED}",
            )
        )
    reported = _reported_problem(data, recomputed)
    if reported is not None:
        problems.append(_mismatch(line, f"{site}: {reported} {where}"))
    return problems


def _reported_problem(data: RoundCharged, recomputed: float) -> str | None:
    """What is wrong with ``epsilon_after`` for its accountant, or None."""
    accountant, after = data.accountant, data.epsilon_after
    if accountant == "rdp":
        if agrees(after, recomputed):
            return None
        claimed, ours = _pair(after, recomputed)
        return (
            f"epsilon_after {claimed} (accountant rdp) disagrees with the composed "
            f"RDP epsilon {ours} {_RECOMPUTED}"
        )
    if accountant == "prv":
        if not over_budget(after, recomputed):
            return None
        claimed, ours = _pair(after, recomputed)
        return (
            f"epsilon_after {claimed} (accountant prv) is above the composed RDP "
            f"epsilon {ours} {_RECOMPUTED}; a site reports the tighter valid bound"
        )
    return (
        f"epsilon_after comes from accountant {accountant!r}, which the auditor "
        "cannot check (it knows rdp and prv)"
    )


def _mismatch(line: int, message: str) -> Problem:
    return Problem(line=line, kind="epsilon_mismatch", message=message)


def _pair(a: float, b: float, *, digits: int = 6) -> tuple[str, str]:
    """Format two numbers with the fewest digits (from ``digits``) that tell them apart."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"{a:.{digits}f}", f"{b:.{digits}f}"
    for places in range(digits, 17):
        left, right = f"{a:.{places}f}", f"{b:.{places}f}"
        if left != right:
            return left, right
    return repr(a), repr(b)


__all__ = ["CHARGE_MODELS", "budget_problems"]
