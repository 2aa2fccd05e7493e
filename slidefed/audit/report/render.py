"""Render the report's page from verified logs, and write it to a file.

The page is ``templates/report.html.j2`` (with ``site.html.j2``,
``server.html.j2`` and ``chart.svg.j2``), rendered with autoescape on; this module
only puts together what the templates show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from slidefed import __version__
from slidefed.audit.check import CheckResult, summarise
from slidefed.audit.load import LoadedLog
from slidefed.audit.report._env import environment
from slidefed.audit.report.chart import Chart, chart_of, run_labels
from slidefed.audit.report.gather import Facts, RunNumbers, SiteView, gather
from slidefed.common.errors import ConfigError

_KEYS_SUPPLIED = "the public keys the auditor supplied (--keys)"
_KEYS_BESIDE = (
    "the audit_key.pub found beside each log (supply the sites' keys with --keys to "
    "rule out a swapped key)"
)


@dataclass(frozen=True)
class SitePage:
    """One site as its part of the page shows it."""

    view: SiteView
    runs: RunNumbers
    chart: Chart | None
    spent: float | None
    budget: float | None


def _site_page(site: SiteView, numbers: RunNumbers) -> SitePage:
    charges = site.charges
    runs = run_labels(charges, numbers)
    return SitePage(
        view=site,
        runs=runs,
        chart=chart_of(site.name, charges, runs),
        spent=charges[-1].data.epsilon_after if charges else None,
        budget=charges[-1].data.epsilon_max if charges else None,
    )


def _context(
    logs: Sequence[LoadedLog], facts: Facts, check: CheckResult
) -> dict[str, object]:
    numbers = facts.run_numbers
    return {
        "logs": logs,
        "check": check,
        "version": __version__,
        "has_server": bool(facts.servers),
        "run_numbers": numbers,
        "run_list": sorted(facts.runs.values(), key=lambda run: numbers[run.run_id]),
        "sites": [
            _site_page(facts.sites[name], numbers) for name in sorted(facts.sites)
        ],
        "servers": [facts.servers[name] for name in sorted(facts.servers)],
        "apps_differ": any(len(run.apps()) > 1 for run in facts.runs.values()),
    }


def build_report(
    logs: Sequence[LoadedLog],
    *,
    check: CheckResult | None = None,
    trusted_keys: bool = False,
    generated: datetime | None = None,
) -> str:
    """Render the HTML report of verified logs.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Logs as :func:`slidefed.audit.load.load_logs` returns them.
    check : CheckResult, optional
        Their verdict; computed with :func:`slidefed.audit.check.summarise`
        when not given.
    trusted_keys : bool
        Whether the logs were verified against keys the auditor supplied (rather
        than the key beside each log); the page says which.
    generated : datetime, optional
        Time to print as the report's date (default: now, UTC).

    Returns
    -------
    str
        A complete HTML document.
    """
    check = check if check is not None else summarise(logs)
    context = _context(logs, gather(logs), check)
    context["generated"] = (generated or datetime.now(UTC)).isoformat(
        timespec="seconds"
    )
    context["keys"] = _KEYS_SUPPLIED if trusted_keys else _KEYS_BESIDE
    context["keys_pinned"] = trusted_keys
    return environment().get_template("report.html.j2").render(context)


def write_report(
    logs: Sequence[LoadedLog],
    out: Path,
    *,
    check: CheckResult | None = None,
    trusted_keys: bool = False,
) -> Path:
    """Render the report and write it to ``out``.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Logs as :func:`slidefed.audit.load.load_logs` returns them.
    out : Path
        The HTML file; its folder is created.
    check : CheckResult, optional
        The logs' verdict (computed when not given).
    trusted_keys : bool
        Whether the auditor supplied the keys (see :func:`build_report`).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ConfigError
        If the file cannot be written.
    """
    page = build_report(logs, check=check, trusted_keys=trusted_keys)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"--out {out}: cannot write the report ({exc.strerror}); choose a "
            "writable path"
        ) from exc
    return out


__all__ = ["SitePage", "build_report", "write_report"]
