"""The verdict of an audit: each log verified on its own, then all cross-checked.

:func:`check_logs` verifies every log (:func:`slidefed.audit.verify.verify_and_read`),
cross-checks them (:mod:`slidefed.audit.cross_check`) and combines both into one
:class:`CheckResult`, whose ``first_problem`` names the first bad record.

This module imports only the standard library, pydantic and ``cryptography``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from slidefed.audit.cross_check import cross_check_counted
from slidefed.audit.load import LoadedLog, load_logs
from slidefed.audit.problems import Problem
from slidefed.audit.verify import collector_paused
from slidefed.common.audit.records import Actor


class LogStatus(BaseModel):
    """One log's verdict: its own checks and the cross-check, by line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    actor: Actor | None
    actor_name: str | None
    records: int
    ok: bool
    problems: list[Problem]

    def describe(self) -> str:
        """Return who wrote the log: ``site hospital-a``, ``server``, ``no records``."""
        if self.actor is None:
            return "no records"
        if self.actor_name in (None, self.actor):
            return self.actor
        return f"{self.actor} {self.actor_name}"


class FirstProblem(BaseModel):
    """The first bad record of a check: the log, its line and what is wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    line: int
    kind: str
    message: str

    def where(self) -> str:
        """Return ``path:line: kind``."""
        return f"{self.path}:{self.line}: {self.kind}"

    def summary(self) -> str:
        """Return ``path:line: kind: message``."""
        return f"{self.where()}: {self.message}"


class CheckResult(BaseModel):
    """Outcome of :func:`check_logs`.

    Attributes
    ----------
    ok : bool
        True when no log has a problem.
    cross_checked : bool
        Whether a server log was given, so that aggregated updates were matched
        against site releases (site budgets are checked either way).
    updates_matched : int
        Aggregated updates that matched a site release.
    logs : list[LogStatus]
        One per log, in the order given.
    first_problem : FirstProblem or None
        The first bad record: the first problem of a log's own checks (chain,
        signatures, head), logs taken in the order given; when every log holds on
        its own, the first cross-check problem.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    cross_checked: bool
    updates_matched: int
    logs: list[LogStatus]
    first_problem: FirstProblem | None

    def summary(self) -> str:
        """Return the human-readable verdict, one line per log and a last line."""
        out: list[str] = []
        for log in self.logs:
            if log.ok:
                out.append(f"{log.path}: OK, {log.records} records ({log.describe()})")
                continue
            first = log.problems[0]
            more = len(log.problems) - 1
            tail = f" (and {more} more; --json lists all)" if more else ""
            out.append(f"{log.path}:{first.line}: {first.kind}: {first.message}{tail}")
        if self.cross_checked:
            out.append(
                f"cross-check: {self.updates_matched} aggregated update(s) matched a "
                "site release"
            )
        else:
            out.append(
                "cross-check: no server log given, so aggregated updates were not "
                "matched; site budgets were checked"
            )
        if self.first_problem is None:
            out.append("OK: every chain, signature and cross-check holds")
        else:
            out.append(f"FAILED: first bad record {self.first_problem.where()}")
        return "\n".join(out)


def summarise(logs: Sequence[LoadedLog]) -> CheckResult:
    """Cross-check loaded logs and combine everything into one result.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Logs as :func:`slidefed.audit.load.load_logs` returns them.

    Returns
    -------
    CheckResult
        The verdict.
    """
    crossed, matched = cross_check_counted(logs)
    statuses: list[LogStatus] = []
    first_own: FirstProblem | None = None
    first_cross: FirstProblem | None = None
    for log, extra in zip(logs, crossed, strict=True):
        own = log.result.problems
        if own and first_own is None:
            first_own = _first(log.path, own[0])
        if extra and first_cross is None:
            first_cross = _first(log.path, extra[0])
        problems = sorted([*own, *extra], key=lambda problem: problem.line)
        statuses.append(
            LogStatus(
                path=str(log.path),
                actor=log.actor,
                actor_name=log.actor_name,
                records=log.result.records,
                ok=not problems,
                problems=problems,
            )
        )
    first = first_own or first_cross
    return CheckResult(
        ok=first is None,
        cross_checked=any(log.actor == "server" for log in logs),
        updates_matched=matched,
        logs=statuses,
        first_problem=first,
    )


def _first(path: Path, problem: Problem) -> FirstProblem:
    return FirstProblem(
        path=str(path), line=problem.line, kind=problem.kind, message=problem.message
    )


def check_logs(
    paths: Sequence[Path],
    *,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    every_signature: bool = False,
) -> CheckResult:
    """Verify each log and cross-check them (see the module docstring).

    Parameters
    ----------
    paths : Sequence[Path]
        Site logs and, optionally, server logs.
    public_keys : Mapping[str, Ed25519PublicKey], optional
        Trusted keys; None trusts the ``audit_key.pub`` beside each log.
    every_signature : bool
        Check each record's own signature even where the head vouches for it.

    Returns
    -------
    CheckResult
        The verdict; ``first_problem`` names the first bad record.

    Raises
    ------
    AuditError
        If a log is missing or unreadable.
    ConfigError
        If a key beside a log is not an Ed25519 public key.
    """
    with collector_paused():
        return summarise(
            load_logs(paths, public_keys=public_keys, every_signature=every_signature)
        )


__all__ = ["CheckResult", "FirstProblem", "LogStatus", "check_logs", "summarise"]
