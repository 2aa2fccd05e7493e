"""What the verifier and the cross-check report: problems by line, and records read.

This module imports only pydantic and :mod:`slidefed.common.audit.records`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from slidefed.common.audit.records import AuditRecord

ProblemKind = Literal[
    "edited",
    "deleted",
    "reordered",
    "duplicated",
    "truncated",
    "torn",
    "forged",
    "unknown_key",
    "malformed",
    "unmatched_update",
    "over_budget",
    "epsilon_mismatch",
]
"""What a :class:`Problem` reports. The last three come from the cross-check of
:mod:`slidefed.audit.cross_check` (``over_budget`` and ``epsilon_mismatch`` also
from the recomputation of :mod:`slidefed.audit.budget`), never from
:func:`slidefed.audit.verify.verify_log`."""


class Problem(BaseModel):
    """One broken rule found in a log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: int = Field(ge=1, description="1-based line of the log")
    kind: ProblemKind
    message: str


class VerifyResult(BaseModel):
    """Outcome of :func:`slidefed.audit.verify.verify_log`; ``problems`` by line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    path: str
    records: int
    problems: list[Problem]

    def summary(self) -> str:
        """Return one ``path:line: kind: message`` line per problem, or ``path: OK``."""
        if self.ok:
            return f"{self.path}: OK, {self.records} records"
        return "\n".join(
            f"{self.path}:{p.line}: {p.kind}: {p.message}" for p in self.problems
        )


class NumberedRecord(NamedTuple):
    """A record and the 1-based line of the log it was read from."""

    line: int
    record: AuditRecord


__all__ = ["NumberedRecord", "Problem", "ProblemKind", "VerifyResult"]
