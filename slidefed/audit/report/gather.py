"""Collect what the report shows from verified logs: sites, servers and runs.

Records whose payload does not read as its event's model are left out here; the
verification and cross-check (:func:`slidefed.audit.check.summarise`) report them.

This module imports only the standard library and pydantic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from slidefed.audit.load import LoadedLog
from slidefed.common.audit.events import (
    EvaluationCharged,
    MetricsReleased,
    RoundCharged,
    RoundCompleted,
    RunJoined,
    UpdateAggregated,
    UpdateReleased,
    event_data,
    parse_payload,
)
from slidefed.common.audit.records import AuditRecord


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
    """A ``round_charged`` or ``evaluation_charged`` record."""

    data: RoundCharged

    @property
    def kind(self) -> str:
        """``training`` or ``evaluation``: what the charge paid for."""
        return "evaluation" if isinstance(self.data, EvaluationCharged) else "training"


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


@dataclass(frozen=True)
class Joined(Row):
    """A ``run_joined`` record: the config hash and the dataset fingerprint."""

    data: RunJoined


@dataclass(frozen=True)
class Completed(Row):
    """A ``round_completed`` record of the server."""

    data: RoundCompleted


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
    joined: list[Joined] = field(default_factory=list)
    metrics_released: int = 0


@dataclass
class ServerView:
    """Everything the server logs of one server say."""

    name: str
    paths: list[str] = field(default_factory=list)
    aggregated: list[Aggregation] = field(default_factory=list)
    rejected: list[Note] = field(default_factory=list)
    errors: list[Note] = field(default_factory=list)
    completed: list[Completed] = field(default_factory=list)


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
    stopped_at: int | None = None
    names: set[str] = field(default_factory=set)
    server_apps: set[str] = field(default_factory=set)
    site_apps: dict[str, set[str]] = field(default_factory=dict)
    final_sha256: str | None = None
    model_file_sha256: str | None = None

    def name(self) -> str | None:
        """The run's ``run-name``, as the server and the sites logged it."""
        return " / ".join(sorted(self.names)) or None

    def apps(self) -> list[tuple[str, str]]:
        """(app sha256, who ran it) pairs: the server's app, and each site's.

        A site names the app its approval gate checked; one hash run by the
        server and every site is one row.
        """
        runners: dict[str, list[str]] = {}
        for digest in sorted(self.server_apps):
            runners.setdefault(digest, []).append("server")
        for site in sorted(self.site_apps):
            for digest in sorted(self.site_apps[site]):
                runners.setdefault(digest, []).append(site)
        return [(digest, ", ".join(who)) for digest, who in runners.items()]

    def round_span(self) -> str:
        """Return ``first–last (count)`` of the rounds, or ``— (0)``."""
        rounds = sorted(self.rounds)
        span = f"{rounds[0]}–{rounds[-1]}" if rounds else "—"
        return f"{span} ({len(rounds)})"

    def completion(self) -> str:
        """Return the rounds the server completed: ``2 of 3, finished``, or
        ``1 of 3, stopped at round 2`` (too few sites trained in it)."""
        done = str(len(self.completed))
        if self.planned is not None:
            done += f" of {self.planned}"
        if self.stopped_at is not None:
            return done + f", stopped at round {self.stopped_at}"
        return done + (", finished" if self.finished else "")


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
    sha_site, aggregated_by = _releases(logs), _aggregations(logs)
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
    _count_per_run(facts)
    ordered = sorted(facts.runs.values(), key=lambda run: (run.first, run.run_id))
    facts.run_numbers = {run.run_id: n for n, run in enumerate(ordered, 1)}
    return facts


def _releases(logs: Sequence[LoadedLog]) -> dict[str, str]:
    """Return the site that first released each sha256."""
    sha_site: dict[str, str] = {}
    for log in logs:
        for _, record in log.records:
            sha = record.data.get("sha256")
            if record.event == "update_released" and isinstance(sha, str):
                sha_site.setdefault(sha, record.actor_name)
    return sha_site


def _aggregations(logs: Sequence[LoadedLog]) -> dict[str, list[str]]:
    """Return the server nodes that aggregated each sha256."""
    aggregated_by: dict[str, list[str]] = {}
    for log in logs:
        for _, record in log.records:
            if record.actor == "server" and record.event == "update_aggregated":
                sha, node = record.data.get("sha256"), record.data.get("node")
                if isinstance(sha, str):
                    aggregated_by.setdefault(sha, []).append(str(node))
    return aggregated_by


def _count_per_run(facts: Facts) -> None:
    for site in facts.sites.values():
        for release in site.releases:
            if release.run_id is not None:
                facts.runs[release.run_id].releases += 1
    for server in facts.servers.values():
        for aggregation in server.aggregated:
            if aggregation.run_id is not None:
                facts.runs[aggregation.run_id].aggregated += 1


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
        if event == "run_joined":
            _note_names(run, record, record.actor_name)
    elif event == "round_completed" and record.round is not None:
        run.completed.add(record.round)
    elif event == "run_stopped" and record.round is not None:
        run.stopped_at = record.round
    elif event in ("run_started", "run_resumed"):
        rounds, strategy = record.data.get("rounds"), record.data.get("strategy")
        run.planned = rounds if isinstance(rounds, int) else run.planned
        run.strategy = strategy if isinstance(strategy, str) else run.strategy
        _note_names(run, record, None)
    elif event == "run_finished":
        run.finished = True
        final, file = (
            record.data.get("final_sha256"),
            record.data.get("model_file_sha256"),
        )
        run.final_sha256 = final if isinstance(final, str) and final else None
        run.model_file_sha256 = file if isinstance(file, str) and file else None


def _note_names(run: RunView, record: AuditRecord, site: str | None) -> None:
    """The run name and the app (FAB) hash a start or join record names."""
    name, app = record.data.get("run_name"), record.data.get("fab_hash")
    if isinstance(name, str) and name:
        run.names.add(name)
    if isinstance(app, str) and app:
        if site is None:
            run.server_apps.add(app)
        else:
            run.site_apps.setdefault(site, set()).add(app)


def _note(row: Row, record: AuditRecord) -> Note:
    """Read why something did not happen: the reason, or the payload's scalars."""
    payload = parse_payload(record)
    reason = getattr(payload, "reason", "") or "; ".join(
        f"{key}: {value}"
        for key, value in sorted(record.data.items())
        if key != "node" and not isinstance(value, dict | list)
    )
    node = getattr(payload, "node", None)
    return Note(**vars(row), event=record.event, reason=reason, node=node)


_CHARGES: dict[str, type[RoundCharged]] = {
    "round_charged": RoundCharged,
    "evaluation_charged": EvaluationCharged,
}


def _gather_site(
    site: SiteView,
    row: Row,
    record: AuditRecord,
    aggregated_by: dict[str, list[str]],
) -> None:
    event = record.event
    if event in _CHARGES:
        charged = event_data(record, _CHARGES[event])
        site.charges.append(Charge(**vars(row), data=charged))
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
        site.joined.append(Joined(**vars(row), data=event_data(record, RunJoined)))
    elif event == "metrics_released":
        event_data(record, MetricsReleased)
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
        done = event_data(record, RoundCompleted)
        server.completed.append(Completed(**vars(row), data=done))


__all__ = [
    "Aggregation",
    "Charge",
    "Completed",
    "Facts",
    "Joined",
    "Note",
    "ReleaseRow",
    "Row",
    "RunNumbers",
    "RunView",
    "ServerView",
    "SiteView",
    "gather",
]
