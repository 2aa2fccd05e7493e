"""The doctor's report: one :class:`Check` per line, as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import SlidefedError

Status = Literal["ok", "warn", "fail", "skip"]


class Check(BaseModel):
    """One line of the doctor's table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    status: Status
    detail: str
    fix: str = ""


class DoctorReport(BaseModel):
    """All checks of one site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    checks: list[Check]

    @property
    def failed(self) -> bool:
        """Whether any check failed."""
        return any(c.status == "fail" for c in self.checks)


def guard(name: str, fn: Callable[[], Check]) -> Check:
    """Run one check; an unexpected error becomes its failure, not a traceback.

    Parameters
    ----------
    name : str
        The check's line in the table.
    fn : callable
        The check.

    Returns
    -------
    Check
        What ``fn`` returned, or a ``fail`` with the error's message.
    """
    try:
        return fn()
    except SlidefedError as exc:
        return Check(name=name, status="fail", detail=str(exc), fix="see the message")
    except (OSError, ValueError) as exc:
        return Check(name=name, status="fail", detail=f"{type(exc).__name__}: {exc}")


def render_text(report: DoctorReport) -> str:
    """The report as a plain-text table (one line per check, fix below it).

    Parameters
    ----------
    report : DoctorReport
        The checks.

    Returns
    -------
    str
        Text.
    """
    width = max(len(c.name) for c in report.checks)
    lines = [f"site {report.site}"]
    for c in report.checks:
        lines.append(f"  {c.status.upper():4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("fail", "warn", "skip"):
            lines.append(f"        {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == "fail" for c in report.checks)
    warned = sum(c.status == "warn" for c in report.checks)
    lines.append(f"{failed} failed, {warned} warnings")
    return "\n".join(lines)


def render_json(report: DoctorReport) -> str:
    """The report as JSON (``site``, ``ok``, ``checks``).

    Parameters
    ----------
    report : DoctorReport
        The checks.

    Returns
    -------
    str
        JSON text.
    """
    data = report.model_dump(mode="json")
    data["ok"] = not report.failed
    return json.dumps(data, indent=2)


__all__ = ["Check", "DoctorReport", "Status", "guard", "render_json", "render_text"]
