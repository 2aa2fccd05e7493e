"""The auditor's HTML report: one self-contained page built from audit logs.

:func:`build_report` turns verified logs (:func:`slidefed.audit.check.load_logs`)
into a single HTML document with inline CSS and inline SVG charts; it loads nothing
from the network (its Content-Security-Policy forbids it) and runs no script. Every
piece of text that comes from a log is escaped.

The page holds, per site, the cumulative epsilon after each charged round against
the site's budget (a chart and its table), the releases, refusals, blocked egress
and withheld metrics; per server log, the aggregated and rejected updates; per run,
its participants and rounds; and the verification status of each log.

Each chart is an ``<svg class="eps-chart">`` with ``data-site`` and ``data-budget``;
each point is a ``<circle class="eps-point">`` whose ``data-epsilon`` is the
recorded ``epsilon_after`` written with :func:`repr`, so a test (or a script) can
find the figures again in the rendered page.

This module imports only the standard library and pydantic (through
:mod:`slidefed.audit.check`).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from slidefed import __version__
from slidefed.audit.check import (
    CheckResult,
    LoadedLog,
    Reason,
    RoundCharged,
    RoundCompleted,
    RunJoined,
    UpdateAggregated,
    UpdateReleased,
    event_data,
    summarise,
)
from slidefed.common.audit.log import AuditRecord
from slidefed.common.budget import EPSILON_TOLERANCE
from slidefed.common.errors import ConfigError

BUDGET_COLOUR = "#d62728"
"""Colour of the budget line and of points over budget."""

SERIES_COLOURS = (
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
)
"""Colours of the runs in a chart, in order of the runs' first record."""

_Scale = Callable[[float], float]
"""Maps a value (or a point's index) to a pixel coordinate."""

_MAX_POINTS = 400
"""Charged rounds up to which every round gets a point; beyond, only the last
round of each run and the rounds over budget do."""

_MAX_LINE_POINTS = 1000
"""Vertices per run's line at most; longer runs are thinned."""

_MAX_ROWS = 500
"""Rows shown per table; the rest are counted."""

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0 auto; max-width: 1100px; padding: 24px; color: #1b1b1b; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; border-bottom: 2px solid #ddd; padding-bottom: 4px;
  margin-top: 32px; }
h3 { font-size: 17px; margin: 22px 0 6px; }
h4 { font-size: 14px; margin: 16px 0 4px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left;
  vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-size: 12px; }
.ok { color: #176b2c; font-weight: 600; }
.bad { color: #b3151b; font-weight: 600; }
.verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; }
.verdict.ok { background: #e6f4ea; }
.verdict.bad { background: #fce8e6; }
.muted { color: #666; }
article.site { border: 1px solid #ddd; border-radius: 6px; padding: 4px 16px 12px;
  margin: 16px 0; }
svg.eps-chart { width: 100%; max-width: 760px; height: auto; display: block; }
@media print { article.site { break-inside: avoid; } }
"""


# ----------------------------------------------------------------- gathered facts
@dataclass(frozen=True)
class Row:
    """One record as the report shows it: where it is, when, and its payload."""

    path: str
    line: int
    run_id: int | None
    round: int | None
    time: str


@dataclass(frozen=True)
class Charge(Row):
    """A ``round_charged`` record."""

    data: RoundCharged


@dataclass(frozen=True)
class ReleaseRow(Row):
    """An ``update_released`` record, and the server nodes that aggregated it."""

    data: UpdateReleased
    aggregated_by: tuple[str, ...]


@dataclass(frozen=True)
class Note(Row):
    """A refusal, failure, block, withheld metric, rejection or reply error."""

    event: str
    reason: str
    node: str | None


@dataclass(frozen=True)
class Aggregation(Row):
    """An ``update_aggregated`` record and the site whose release it matches."""

    data: UpdateAggregated
    site: str | None


@dataclass
class SiteView:
    """Everything the site logs of one site say."""

    name: str
    paths: list[str] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)
    releases: list[ReleaseRow] = field(default_factory=list)
    refusals: list[Note] = field(default_factory=list)
    blocked: list[Note] = field(default_factory=list)
    withheld: list[Note] = field(default_factory=list)
    joined: list[tuple[Row, RunJoined]] = field(default_factory=list)
    metrics_released: int = 0


@dataclass
class ServerView:
    """Everything the server logs of one server say."""

    name: str
    paths: list[str] = field(default_factory=list)
    aggregated: list[Aggregation] = field(default_factory=list)
    rejected: list[Note] = field(default_factory=list)
    errors: list[Note] = field(default_factory=list)
    completed: list[tuple[Row, RoundCompleted]] = field(default_factory=list)


@dataclass
class RunView:
    """One run: who took part and which rounds the logs mention."""

    run_id: int
    first: str
    last: str
    sites: set[str] = field(default_factory=set)
    rounds: set[int] = field(default_factory=set)
    completed: set[int] = field(default_factory=set)
    releases: int = 0
    aggregated: int = 0
    planned: int | None = None
    strategy: str | None = None
    finished: bool = False


RunNumbers = dict[int | None, int]
"""Short numbers of the runs (1, 2, ...) in order of their first record."""


@dataclass
class Facts:
    """What the report shows, gathered from the logs."""

    sites: dict[str, SiteView]
    servers: dict[str, ServerView]
    runs: dict[int, RunView]
    run_numbers: RunNumbers = field(default_factory=dict)


_REFUSALS = ("round_refused", "round_failed", "app_refused")
_RUN_EVENTS = ("run_started", "run_resumed", "run_finished")
"""Server events of a whole run; their ``round`` is not a round of training."""


def gather(logs: Sequence[LoadedLog]) -> Facts:
    """Collect the facts of the report from loaded logs.

    Records whose payload cannot be read are left out here; the verification and
    cross-check (:func:`slidefed.audit.check.summarise`) report them.

    Parameters
    ----------
    logs : Sequence[LoadedLog]
        Site and server logs.

    Returns
    -------
    Facts
        Sites and servers by name, runs by id.
    """
    facts = Facts(sites={}, servers={}, runs={})
    sha_site: dict[str, str] = {}
    for log in logs:
        for _, record in log.records:
            sha = record.data.get("sha256")
            if record.event == "update_released" and isinstance(sha, str):
                sha_site.setdefault(sha, record.actor_name)
    aggregated_by: dict[str, list[str]] = {}
    for log in logs:
        for _, record in log.records:
            if record.actor == "server" and record.event == "update_aggregated":
                sha, node = record.data.get("sha256"), record.data.get("node")
                if isinstance(sha, str):
                    aggregated_by.setdefault(sha, []).append(str(node))
    for log in logs:
        for line, record in log.records:
            row = Row(str(log.path), line, record.run_id, record.round, record.time)
            _note_run(facts, record)
            try:
                if record.actor == "site":
                    site = facts.sites.setdefault(
                        record.actor_name, SiteView(record.actor_name)
                    )
                    _add_path(site.paths, log.path)
                    _gather_site(site, row, record, aggregated_by)
                else:
                    server = facts.servers.setdefault(
                        record.actor_name, ServerView(record.actor_name)
                    )
                    _add_path(server.paths, log.path)
                    _gather_server(server, row, record, sha_site)
            except ValidationError:
                continue
    for site in facts.sites.values():
        for release in site.releases:
            if release.run_id is not None:
                facts.runs[release.run_id].releases += 1
    for server in facts.servers.values():
        for aggregation in server.aggregated:
            if aggregation.run_id is not None:
                facts.runs[aggregation.run_id].aggregated += 1
    ordered = sorted(facts.runs.values(), key=lambda run: (run.first, run.run_id))
    facts.run_numbers = {run.run_id: n for n, run in enumerate(ordered, 1)}
    return facts


def _add_path(paths: list[str], path: Path) -> None:
    if str(path) not in paths:
        paths.append(str(path))


def _note_run(facts: Facts, record: AuditRecord) -> None:
    if record.run_id is None:
        return
    run = facts.runs.setdefault(
        record.run_id, RunView(record.run_id, record.time, record.time)
    )
    run.first = min(run.first, record.time)
    run.last = max(run.last, record.time)
    event = record.event
    if record.round is not None and event not in _RUN_EVENTS:
        run.rounds.add(record.round)
    if record.actor == "site":
        run.sites.add(record.actor_name)
    elif event == "round_completed" and record.round is not None:
        run.completed.add(record.round)
    elif event in ("run_started", "run_resumed"):
        rounds, strategy = record.data.get("rounds"), record.data.get("strategy")
        run.planned = rounds if isinstance(rounds, int) else run.planned
        run.strategy = strategy if isinstance(strategy, str) else run.strategy
    elif event == "run_finished":
        run.finished = True


def _note(row: Row, record: AuditRecord) -> Note:
    data = event_data(record, Reason)
    reason = data.reason or "; ".join(
        f"{key}: {value}"
        for key, value in sorted(record.data.items())
        if key != "node" and not isinstance(value, dict | list)
    )
    return Note(**vars(row), event=record.event, reason=reason, node=data.node)


def _gather_site(
    site: SiteView,
    row: Row,
    record: AuditRecord,
    aggregated_by: dict[str, list[str]],
) -> None:
    event = record.event
    if event == "round_charged":
        site.charges.append(Charge(**vars(row), data=event_data(record, RoundCharged)))
    elif event == "update_released":
        data = event_data(record, UpdateReleased)
        nodes = tuple(aggregated_by.get(data.sha256, ()))
        site.releases.append(ReleaseRow(**vars(row), data=data, aggregated_by=nodes))
    elif event in _REFUSALS:
        site.refusals.append(_note(row, record))
    elif event == "egress_blocked":
        site.blocked.append(_note(row, record))
    elif event == "metric_withheld":
        site.withheld.append(_note(row, record))
    elif event == "run_joined":
        site.joined.append((row, event_data(record, RunJoined)))
    elif event == "metrics_released":
        site.metrics_released += 1


def _gather_server(
    server: ServerView, row: Row, record: AuditRecord, sha_site: dict[str, str]
) -> None:
    event = record.event
    if event == "update_aggregated":
        data = event_data(record, UpdateAggregated)
        server.aggregated.append(
            Aggregation(**vars(row), data=data, site=sha_site.get(data.sha256))
        )
    elif event == "update_rejected":
        server.rejected.append(_note(row, record))
    elif event == "reply_error":
        server.errors.append(_note(row, record))
    elif event == "round_completed":
        server.completed.append((row, event_data(record, RoundCompleted)))


# ----------------------------------------------------------------- formatting
def esc(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "site"


def _eps(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _g(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _size(n: int) -> str:
    units = (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10))
    for unit, scale in units:
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _opt(value: object) -> str:
    return "—" if value is None else esc(value)


def _short(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "—"
    return f'<code title="{esc(digest)}">{esc(digest[:n])}</code>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Render rows of already-escaped cells; numeric-looking cells align right."""
    body: list[str] = []
    hidden = 0
    for index, row in enumerate(rows):
        if index >= _MAX_ROWS:
            hidden += 1
            continue
        cells = "".join(
            f'<td class="num">{cell}</td>' if _numeric(cell) else f"<td>{cell}</td>"
            for cell in row
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    more = f'<p class="muted">and {hidden} more rows</p>' if hidden else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[0-9][0-9.,e+-]*( [kMG]?B)?", cell))


# ----------------------------------------------------------------- the chart
@dataclass(frozen=True)
class _Frame:
    """Pixel geometry of a chart."""

    width: int = 760
    height: int = 300
    left: int = 58
    right: int = 130
    top: int = 20
    bottom: int = 56

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [step * i for i in range(math.ceil(top / step + 1e-9) + 1)]


def _run_labels(charges: Sequence[Charge], numbers: RunNumbers | None) -> RunNumbers:
    """Number the runs of ``charges``: as in ``numbers``, else in order of appearance."""
    labels: RunNumbers = dict(numbers or {})
    for charge in charges:
        if charge.run_id not in labels:
            labels[charge.run_id] = max(labels.values(), default=0) + 1
    return labels


def epsilon_chart(
    site: str, charges: Sequence[Charge], run_numbers: RunNumbers | None = None
) -> str:
    """Draw cumulative epsilon after each charged round against the budget.

    Parameters
    ----------
    site : str
        The site's name (for the labels).
    charges : Sequence[Charge]
        The site's ``round_charged`` records in log order.
    run_numbers : RunNumbers, optional
        Short numbers of the runs, shared by the whole report, which also pick the
        runs' colours; by default the runs are numbered in order of appearance.

    Returns
    -------
    str
        An inline ``<svg>`` element, or a short note when nothing was charged.
    """
    if not charges:
        return '<p class="muted">No round was charged.</p>'
    frame = _Frame()
    values = [c.data.epsilon_after for c in charges]
    budgets = [c.data.epsilon_max for c in charges]
    ticks = _nice_ticks(max(*values, *budgets, 1e-6) * 1.05)
    top_value = ticks[-1]
    n = len(charges)

    def x(i: float) -> float:
        return frame.left + (i + 0.5) * frame.plot_width / n

    def y(v: float) -> float:
        return frame.top + frame.plot_height * (1 - v / top_value)

    parts: list[str] = [
        f'<svg class="eps-chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'data-site="{esc(site)}" data-budget="{budgets[-1]!r}" data-points="{n}" '
        f'aria-label="{esc(f"Cumulative epsilon of {site} per charged round")}">',
        f"<title>{esc(f'Cumulative epsilon of {site} against its budget')}</title>",
        f'<rect x="0" y="0" width="{frame.width}" height="{frame.height}" '
        'fill="#ffffff"/>',
    ]
    parts += _axes(frame, ticks, y)
    parts += _budget_lines(charges, budgets, frame, x, y)
    parts += _series(charges, _run_labels(charges, run_numbers), frame, x, y)
    parts.append("</svg>")
    if n > _MAX_POINTS:
        parts.append(
            f'<p class="muted">{n} charged rounds: points mark the last round of '
            "each run and any round over budget.</p>"
        )
    return "".join(parts)


def _axes(frame: _Frame, ticks: Sequence[float], y: _Scale) -> list[str]:
    left, right = frame.left, frame.left + frame.plot_width
    bottom = frame.top + frame.plot_height
    parts = []
    for tick in ticks:
        ty = y(tick)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{right}" y2="{ty:.1f}" '
            'stroke="#e5e5e5" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" font-size="11" '
            f'text-anchor="end" fill="#444">{tick:g}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{frame.top}" x2="{left}" y2="{bottom}" '
        'stroke="#444" stroke-width="1"/>'
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" '
        'stroke="#444" stroke-width="1"/>'
        f'<text x="14" y="{frame.top + frame.plot_height / 2:.1f}" font-size="12" '
        f'fill="#222" text-anchor="middle" transform="rotate(-90 14 '
        f'{frame.top + frame.plot_height / 2:.1f})">cumulative ε</text>'
        f'<text x="{left + frame.plot_width / 2:.1f}" y="{frame.height - 6}" '
        'font-size="12" fill="#222" text-anchor="middle">charged rounds, in log '
        "order</text>"
    )
    return parts


def _budget_lines(
    charges: Sequence[Charge],
    budgets: Sequence[float],
    frame: _Frame,
    x: _Scale,
    y: _Scale,
) -> list[str]:
    parts = []
    start = 0
    for index in range(1, len(charges) + 1):
        if index < len(charges) and budgets[index] == budgets[start]:
            continue
        value = budgets[start]
        parts.append(
            f'<line class="budget" data-epsilon-max="{value!r}" '
            f'x1="{x(start - 0.5):.1f}" y1="{y(value):.1f}" '
            f'x2="{x(index - 0.5):.1f}" y2="{y(value):.1f}" '
            f'stroke="{BUDGET_COLOUR}" stroke-width="2.5" stroke-dasharray="8 4">'
            f"<title>{esc(f'budget: max_epsilon {value:g}')}</title></line>"
        )
        start = index
    last = budgets[-1]
    parts.append(
        f'<text class="budget-label" x="{frame.left + frame.plot_width + 8}" '
        f'y="{y(last) + 4:.1f}" font-size="12" font-weight="600" '
        f'fill="{BUDGET_COLOUR}">budget ε = {esc(f"{last:g}")}</text>'
    )
    return parts


def _series(
    charges: Sequence[Charge], numbers: RunNumbers, frame: _Frame, x: _Scale, y: _Scale
) -> list[str]:
    runs = {c.run_id: numbers[c.run_id] for c in charges}
    n = len(charges)
    longest = max(len(f"r{c.round}") for c in charges)
    fit = max(2, min(30, frame.plot_width // (7 * longest + 12)))
    label_every = max(1, math.ceil(n / fit))
    bottom = frame.top + frame.plot_height
    last_of_run = {c.run_id: i for i, c in enumerate(charges)}
    parts = []
    for run_id, number in runs.items():
        colour = SERIES_COLOURS[(number - 1) % len(SERIES_COLOURS)]
        idx = [i for i, c in enumerate(charges) if c.run_id == run_id]
        if len(idx) > _MAX_LINE_POINTS:  # cumulative epsilon only grows: thin it
            step = math.ceil(len(idx) / _MAX_LINE_POINTS)
            idx = [*idx[:-1:step], idx[-1]]
        points = " ".join(
            f"{x(i):.1f},{y(charges[i].data.epsilon_after):.1f}" for i in idx
        )
        parts.append(
            f'<polyline class="eps-line" data-run="{esc(run_id)}" points="{points}" '
            f'fill="none" stroke="{colour}" stroke-width="2.5"/>'
        )
        if len(runs) > 1:
            row = list(runs).index(run_id)
            parts.append(
                f'<text x="{frame.left + frame.plot_width + 8}" '
                f'y="{frame.top + 14 + 16 * row}" font-size="11" '
                f'fill="{colour}">run {number}</text>'
            )
    previous: int | None = None
    for i, charge in enumerate(charges):
        number = runs[charge.run_id]
        value = charge.data.epsilon_after
        over = value > charge.data.epsilon_max + EPSILON_TOLERANCE
        colour = (
            BUDGET_COLOUR
            if over
            else SERIES_COLOURS[(number - 1) % len(SERIES_COLOURS)]
        )
        drawn = n <= _MAX_POINTS or over or last_of_run[charge.run_id] == i
        tip = (
            f"run {number} ({charge.run_id}), round {charge.round}: cumulative ε "
            f"{value:.4f} (this round {_eps(charge.data.epsilon_round)}), budget "
            f"{charge.data.epsilon_max:g}{', OVER BUDGET' if over else ''}"
        )
        if drawn:
            parts.append(
                f'<circle class="eps-point" data-run="{esc(charge.run_id)}" '
                f'data-round="{esc(charge.round)}" data-epsilon="{value!r}" '
                f'cx="{x(i):.1f}" cy="{y(value):.1f}" r="{6 if over else 4}" '
                f'fill="{colour}"><title>{esc(tip)}</title></circle>'
            )
        if n <= 20:
            parts.append(
                f'<text class="eps-value" x="{x(i):.1f}" y="{y(value) - 9:.1f}" '
                f'font-size="11" text-anchor="middle" fill="#222">{value:.2f}</text>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x(i):.1f}" y="{bottom + 16}" font-size="11" '
                f'text-anchor="middle" fill="#444">r{esc(charge.round)}</text>'
            )
        if previous is not None and previous != number:
            sep = x(i - 0.5)
            parts.append(
                f'<line x1="{sep:.1f}" y1="{frame.top}" x2="{sep:.1f}" y2="{bottom}" '
                'stroke="#999" stroke-dasharray="2 3"/>'
            )
        if previous != number:
            parts.append(
                f'<text x="{x(i) - 4:.1f}" y="{bottom + 30}" font-size="11" '
                f'fill="#444">run {number}</text>'
            )
        previous = number
    return parts


# ----------------------------------------------------------------- sections
def _verification(check: CheckResult) -> str:
    rows = []
    for status in check.logs:
        if status.ok:
            verdict = '<span class="ok">OK</span>'
        else:
            first = status.problems[0]
            more = len(status.problems) - 1
            verdict = (
                f'<span class="bad">{esc(first.kind)}</span> at line {first.line}: '
                f"{esc(first.message)}"
                + (f' <span class="muted">(and {more} more)</span>' if more else "")
            )
        rows.append(
            [
                f"<code>{esc(status.path)}</code>",
                esc(status.describe()),
                str(status.records),
                verdict,
            ]
        )
    if check.cross_checked:
        cross = (
            f"Cross-check: {check.updates_matched} update(s) the server aggregated "
            "matched a site release by sha256. Site budgets were checked."
        )
    else:
        cross = (
            "Cross-check: no server log was given, so aggregated updates were not "
            "matched against site releases. Site budgets were checked."
        )
    return (
        '<section id="verification"><h2>Verification</h2>'
        + _table(["log", "written by", "records", "status"], rows)
        + f"<p>{esc(cross)}</p></section>"
    )


def _runs(facts: Facts) -> str:
    rows = []
    ordered = sorted(facts.runs.values(), key=lambda run: facts.run_numbers[run.run_id])
    for run in ordered:
        number = facts.run_numbers[run.run_id]
        rounds = sorted(run.rounds)
        span = f"{rounds[0]}–{rounds[-1]}" if rounds else "—"
        rows.append(
            [
                f"{number}",
                f"<code>{esc(run.run_id)}</code>",
                esc(", ".join(sorted(run.sites)) or "—"),
                f"{esc(span)} ({len(rounds)})",
                _completed(run) if facts.servers else "—",
                _opt(run.strategy),
                str(run.releases),
                str(run.aggregated) if facts.servers else "—",
                esc(run.first[:19].replace("T", " ")),
                esc(run.last[:19].replace("T", " ")),
            ]
        )
    return (
        '<section id="runs"><h2>Runs</h2>'
        + _table(
            [
                "#",
                "run id",
                "participants",
                "rounds (count)",
                "rounds completed (server)",
                "strategy",
                "updates released",
                "updates aggregated",
                "first record (UTC)",
                "last record (UTC)",
            ],
            rows,
        )
        + "</section>"
    )


def _completed(run: RunView) -> str:
    done = str(len(run.completed))
    if run.planned is not None:
        done += f" of {run.planned}"
    return done + (", finished" if run.finished else "")


def _site(site: SiteView, has_server: bool, numbers: RunNumbers) -> str:
    charges = site.charges
    budget = charges[-1].data.epsilon_max if charges else None
    spent = charges[-1].data.epsilon_after if charges else None
    runs = _run_labels(charges, numbers)
    head = (
        f'<article class="site" id="site-{esc(_slug(site.name))}">'
        f"<h3>Site {esc(site.name)}</h3>"
        f'<p class="muted">From {", ".join(f"<code>{esc(p)}</code>" for p in site.paths)}.'
        f" Spent ε {_eps(spent)} of its budget {_g(budget)}; "
        f"{len(site.releases)} update(s) released, {site.metrics_released} metric "
        f"release(s), {len(site.refusals)} refusal(s) or failure(s), "
        f"{len(site.blocked)} blocked, {len(site.withheld)} withheld.</p>"
    )
    charge_rows = [
        [
            _run_number(runs, c.run_id),
            _opt(c.round),
            _eps(c.data.epsilon_round),
            _eps(c.data.epsilon_after),
            _g(c.data.epsilon_max),
            _g(c.data.delta, 3),
            _g(c.data.noise_multiplier),
            _opt(c.data.unit),
            _opt(c.data.accountant),
            str(c.line),
        ]
        for c in charges
    ]
    release_rows = [
        [
            _run_number(runs, r.run_id),
            _opt(r.round),
            esc(r.time[:19].replace("T", " ")),
            str(len(r.data.arrays)),
            esc(_size(r.data.bytes)),
            _short(r.data.sha256),
            _aggregated(r, has_server),
            str(r.line),
        ]
        for r in site.releases
    ]
    return "".join(
        [
            head,
            "<h4>Privacy spent (ε) per charged round</h4>",
            epsilon_chart(site.name, charges, runs),
            _table(
                [
                    "run",
                    "round",
                    "ε this round",
                    "ε cumulative",
                    "budget",
                    "δ",
                    "noise σ",
                    "unit",
                    "accountant",
                    "line",
                ],
                charge_rows,
            ),
            "<h4>Dataset fingerprint</h4>",
            _fingerprints(site, runs),
            "<h4>Releases</h4>",
            _table(
                [
                    "run",
                    "round",
                    "time (UTC)",
                    "arrays",
                    "bytes",
                    "sha256",
                    "aggregated by server",
                    "line",
                ],
                release_rows,
            ),
            "<h4>Refusals and failures</h4>",
            _notes(site.refusals, runs),
            "<h4>Blocked egress</h4>",
            _notes(site.blocked, runs),
            "<h4>Withheld metrics</h4>",
            _notes(site.withheld, runs),
            "</article>",
        ]
    )


def _run_number(runs: RunNumbers, run_id: int | None) -> str:
    number = runs.get(run_id)
    if number is None:
        return "—"
    return f'<span title="run id {esc(run_id)}">{number}</span>'


def _aggregated(release: ReleaseRow, has_server: bool) -> str:
    if not has_server:
        return '<span class="muted">no server log</span>'
    if not release.aggregated_by:
        return "no"
    return "yes (node " + esc(", ".join(release.aggregated_by)) + ")"


def _fingerprints(site: SiteView, runs: RunNumbers) -> str:
    rows = []
    for row, joined in site.joined:
        ds = joined.dataset
        rows.append(
            [
                _run_number(runs, row.run_id),
                _opt(ds.get("unit")),
                _opt(ds.get("slides")),
                _opt(ds.get("patients")),
                _opt(ds.get("train_patients")),
                _opt(ds.get("test_patients")),
                _short(_str_or_none(ds.get("manifest_sha256"))),
                _short(joined.config_hash),
            ]
        )
    return _table(
        [
            "run",
            "unit",
            "slides",
            "patients",
            "train patients",
            "test patients",
            "manifest sha256",
            "config hash",
        ],
        rows,
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _notes(notes: Sequence[Note], runs: RunNumbers) -> str:
    return _table(
        ["run", "round", "time (UTC)", "event", "reason", "line"],
        (
            [
                _run_number(runs, note.run_id),
                _opt(note.round),
                esc(note.time[:19].replace("T", " ")),
                esc(note.event),
                esc(note.reason),
                str(note.line),
            ]
            for note in notes
        ),
    )


def _server(server: ServerView, runs: RunNumbers) -> str:
    aggregated = [
        [
            _run_number(runs, a.run_id),
            _opt(a.round),
            esc(a.data.node),
            _opt(a.site) if a.site else '<span class="bad">no matching release</span>',
            esc(_size(a.data.bytes)) if a.data.bytes is not None else "—",
            _g(a.data.weight),
            _short(a.data.sha256),
            str(a.line),
        ]
        for a in server.aggregated
    ]
    node_notes = [
        [
            _run_number(runs, n.run_id),
            _opt(n.round),
            esc(n.event),
            _opt(n.node),
            esc(n.reason),
            str(n.line),
        ]
        for n in [*server.rejected, *server.errors]
    ]
    completed = [
        [
            _run_number(runs, row.run_id),
            _opt(row.round),
            _opt(done.sites_trained),
            str(row.line),
        ]
        for row, done in server.completed
    ]
    return "".join(
        [
            f'<article class="server"><h3>Server {esc(server.name)}</h3>',
            f'<p class="muted">From {", ".join(f"<code>{esc(p)}</code>" for p in server.paths)}.</p>',
            "<h4>Rejected updates and reply errors</h4>",
            _table(["run", "round", "event", "node", "reason", "line"], node_notes),
            "<h4>Aggregated updates</h4>",
            _table(
                [
                    "run",
                    "round",
                    "node",
                    "released by site",
                    "bytes",
                    "weight",
                    "sha256",
                    "line",
                ],
                aggregated,
            ),
            "<h4>Completed rounds</h4>",
            _table(["run", "round", "sites trained", "line"], completed),
            "</article>",
        ]
    )


# ----------------------------------------------------------------- the page
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
        Logs as :func:`slidefed.audit.check.load_logs` returns them.
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
    facts = gather(logs)
    when = (generated or datetime.now(UTC)).isoformat(timespec="seconds")
    keys = (
        "the public keys the auditor supplied (--keys)"
        if trusted_keys
        else "the audit_key.pub found beside each log (supply the sites' keys with "
        "--keys to rule out a swapped key)"
    )
    if check.first_problem is None:
        verdict = (
            '<div class="verdict ok">Every chain, signature and cross-check holds.'
            "</div>"
        )
    else:
        verdict = (
            '<div class="verdict bad">Verification FAILED. First bad record: '
            f"<code>{esc(check.first_problem.path)}</code> line "
            f"{check.first_problem.line}, <b>{esc(check.first_problem.kind)}</b>: "
            f"{esc(check.first_problem.message)}</div>"
        )
    sites = "".join(
        _site(facts.sites[name], bool(facts.servers), facts.run_numbers)
        for name in sorted(facts.sites)
    )
    servers = "".join(
        _server(facts.servers[name], facts.run_numbers)
        for name in sorted(facts.servers)
    )
    body = [
        "<header><h1>slidefed audit report</h1>",
        f'<p class="muted">Generated {esc(when)} by slidefed {esc(__version__)} from '
        f"{len(logs)} log(s); records verified with {esc(keys)}.</p>",
        verdict,
        "</header>",
        _verification(check),
        _runs(facts),
        '<section id="sites"><h2>Sites</h2>',
        sites or '<p class="muted">No site log was given.</p>',
        "</section>",
        '<section id="server"><h2>Server</h2>',
        servers or '<p class="muted">No server log was given.</p>',
        "</section>",
        '<footer><p class="muted">Check it yourself: <code>slidefed audit verify '
        + esc(" ".join(str(log.path) for log in logs))
        + " --keys DIR</code>. Values of ε are (ε, δ)-differential privacy per "
        "privacy unit of the site (patient or slide), cumulative over every run on "
        "the site's dataset.</p></footer>",
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        "<title>slidefed audit report</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


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
        Logs as :func:`slidefed.audit.check.load_logs` returns them.
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


__all__ = [
    "BUDGET_COLOUR",
    "SERIES_COLOURS",
    "Aggregation",
    "Charge",
    "Facts",
    "Note",
    "ReleaseRow",
    "Row",
    "RunView",
    "ServerView",
    "SiteView",
    "build_report",
    "epsilon_chart",
    "esc",
    "gather",
    "write_report",
]
