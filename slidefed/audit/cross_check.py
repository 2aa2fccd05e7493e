"""Check verified logs against each other and against the sites' budgets.

- every update that a server log says it aggregated (``update_aggregated``) has a
  release with the same sha256 (``update_released``) in one of the site logs given,
  otherwise ``unmatched_update`` on the server log's line;
- no site's cumulative epsilon (``round_charged`` and ``evaluation_charged``:
  ``epsilon_after``) exceeds the maximum its policy allowed (``epsilon_max``),
  otherwise ``over_budget`` on the site log's line. This needs no server log;
- each site's charges, composed by the auditor's own accountant, stay within the
  maximum and agree with the epsilon the site claimed (:mod:`slidefed.audit.budget`:
  ``over_budget`` and ``epsilon_mismatch``);
- every payload reads as its event's model (:mod:`slidefed.common.audit.events`),
  otherwise ``malformed``;
- each record speaks for the actor of its log (``malformed`` otherwise), and one
  audit key for one actor across all the logs (``forged`` otherwise), so that a
  site cannot write records in another site's name with its own trusted key.

This module imports only the standard library and pydantic.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from slidefed.audit.budget import CHARGE_MODELS, budget_problems
from slidefed.audit.load import LoadedLog
from slidefed.audit.problems import Problem
from slidefed.common.audit.events import (
    RoundCharged,
    UpdateAggregated,
    event_data,
    parse_payload,
)
from slidefed.common.audit.records import AuditRecord
from slidefed.common.budget import EPSILON_TOLERANCE


def released_sha256s(logs: Sequence[LoadedLog]) -> set[str]:
    """Return the sha256 of every update that the site logs say was released.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Logs of any actor; only the ``update_released`` records of sites count.

    Returns
    -------
    set[str]
        The sha256 values (records without one are left out; :func:`cross_check`
        reports them).
    """
    found: set[str] = set()
    for log in logs:
        for _, record in log.records:
            if record.actor == "site" and record.event == "update_released":
                sha = record.data.get("sha256")
                if isinstance(sha, str):
                    found.add(sha)
    return found


def cross_check(logs: Sequence[LoadedLog]) -> list[list[Problem]]:
    """Check the logs against each other and against the sites' budgets.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Site and server logs; without a server log only the budgets are checked.

    Returns
    -------
    list[list[Problem]]
        For each log, in the order given, the problems found in it, by line:
        ``unmatched_update`` on a server's ``update_aggregated`` without a site
        release of that sha256, ``over_budget`` on a site's ``round_charged`` or
        ``evaluation_charged`` whose cumulative epsilon exceeds its maximum,
        ``over_budget`` and ``epsilon_mismatch`` from the auditor's recomputation
        of each site's composed epsilon (:mod:`slidefed.audit.budget`),
        ``malformed`` on a record
        whose payload cannot be read as its event's model (or on an
        ``update_released`` without a sha256). Records must also speak for the
        actor of their log (``malformed`` otherwise), and one key for one actor
        across all logs (``forged`` on each record of a second actor under a key).
    """
    return cross_check_counted(logs)[0]


def cross_check_counted(logs: Sequence[LoadedLog]) -> tuple[list[list[Problem]], int]:
    """Return :func:`cross_check`'s problems and the number of matched updates."""
    released = released_sha256s(logs)
    site_names = sorted({log.actor_name or "" for log in logs if log.actor == "site"})
    speakers: dict[str, str] = {}  # key id -> the actor its first record names
    found: list[list[Problem]] = []
    matched = 0
    for log in logs:
        problems: list[Problem] = []
        first = log.records[0].record if log.records else None
        for line, record in log.records:
            problems.extend(_speaker_problems(line, record, first, speakers))
            payload, matches = _payload_problems(line, record, released, site_names)
            problems.extend(payload)
            matched += matches
        problems.extend(budget_problems(log))
        problems.sort(key=lambda problem: problem.line)  # stable: per record first
        found.append(problems)
    return found, matched


def _identity(record: AuditRecord) -> str:
    return (
        record.actor
        if record.actor_name == record.actor
        else f"{record.actor} {record.actor_name}"
    )


def _speaker_problems(
    line: int, record: AuditRecord, first: AuditRecord | None, speakers: dict[str, str]
) -> list[Problem]:
    """Check that a record speaks for its log's actor, under that actor's key."""
    identity = _identity(record)
    owner = speakers.setdefault(record.key_id, identity)
    if owner != identity:
        message = (
            f"record seq {record.seq} speaks for {identity} but is signed by key "
            f"{record.key_id}, which signs the records of {owner}: one audit key "
            "speaks for one actor only"
        )
        return [Problem(line=line, kind="forged", message=message)]
    if first is not None and identity != _identity(first):
        message = (
            f"record seq {record.seq} speaks for {identity} in the log of "
            f"{_identity(first)}: each actor writes its own log"
        )
        return [Problem(line=line, kind="malformed", message=message)]
    return []


def _payload_problems(
    line: int, record: AuditRecord, released: set[str], site_names: Sequence[str]
) -> tuple[list[Problem], int]:
    """Check a record's payload; also return 1 for an aggregated update that matched."""
    event = record.event
    if record.actor == "server" and event == "update_aggregated":
        problem = _check_aggregated(line, record, released, site_names)
        return ([problem], 0) if problem else ([], 1)
    model = CHARGE_MODELS.get(event)
    if record.actor == "site" and model is not None:
        return _check_charge(line, record, model), 0
    sha = record.data.get("sha256")
    if record.actor == "site" and event == "update_released" and not _text(sha):
        message = f"update_released record seq {record.seq} has no sha256 of the update"
        return [Problem(line=line, kind="malformed", message=message)], 0
    try:
        parse_payload(record)
    except ValidationError as exc:
        return [_malformed(line, record, exc)], 0
    return [], 0


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _where(record: AuditRecord) -> str:
    return f"run {record.run_id} round {record.round}"


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "data"
    return f"data.{where}: {error['msg']}"


def _malformed(line: int, record: AuditRecord, exc: ValidationError) -> Problem:
    return Problem(
        line=line,
        kind="malformed",
        message=f"{record.event} record seq {record.seq} has an unreadable payload "
        f"({_first_error(exc)})",
    )


def _check_aggregated(
    line: int,
    record: AuditRecord,
    released: set[str],
    site_names: Sequence[str],
) -> Problem | None:
    try:
        data = event_data(record, UpdateAggregated)
    except ValidationError as exc:
        return _malformed(line, record, exc)
    if data.sha256 in released:
        return None
    given = (
        f"the site logs given ({', '.join(site_names)})"
        if site_names
        else "no site log, since none was given; pass the site logs too"
    )
    return Problem(
        line=line,
        kind="unmatched_update",
        message=f"the server aggregated an update of node {data.node} "
        f"({_where(record)}, sha256 {data.sha256[:16]}...) that no site released:"
        f" no update_released with that sha256 in {given}",
    )


def _check_charge(
    line: int, record: AuditRecord, model: type[RoundCharged]
) -> list[Problem]:
    try:
        data = event_data(record, model)
    except ValidationError as exc:
        return [_malformed(line, record, exc)]
    if data.epsilon_after <= data.epsilon_max + EPSILON_TOLERANCE:
        return []
    return [
        Problem(
            line=line,
            kind="over_budget",
            message=f"site {record.actor_name} ({_where(record)}) reached a cumulative "
            f"epsilon of {data.epsilon_after:.6g}, over its policy maximum "
            f"{data.epsilon_max:.6g}",
        )
    ]


__all__ = ["cross_check", "cross_check_counted", "released_sha256s"]
