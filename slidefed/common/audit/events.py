"""The audit schema: one payload model for every event a site or the server writes.

Writers pass a payload to :meth:`slidefed.common.audit.writer.AuditLog.append`,
which stores ``payload.event`` as the record's ``event`` and the payload's fields as
its ``data``; the auditor's cross-check and report read ``data`` back with the same
models (:func:`parse_payload`). Every model refuses unknown fields, so a writer
cannot add a key the auditor does not know, and a record with one reads as
malformed.

A model's fields are exactly the keys the writers have always written, so logs
written before these models existed read back unchanged; a key added later
(``run_name`` and ``fab_hash`` of ``run_joined`` and ``run_started``,
``model_file_sha256`` of ``run_finished``) has a default, so older records still
read. ``egress_blocked`` has
two shapes: the training handler's own check writes a ``reason``
(:class:`EgressBlocked`), the egress guard around the ClientApp writes the rule it
applied (:class:`EgressGuardBlocked`).

This module imports only the standard library and pydantic.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slidefed.common.audit.records import AuditRecord


class AuditEvent(BaseModel):
    """Base of the payload models; ``event`` is the record's event name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: ClassVar[str]


# ----------------------------------------------------------------- site events
class RunJoined(AuditEvent):
    """``run_joined``: the run's config hash and the site's dataset fingerprint.

    ``run_name`` is the run config's ``run-name`` (the name the site's ledger and
    ``site budget`` know the run by), and ``fab_hash`` the SHA-256 of the app
    (FAB) that the site's approval gate checked and let run (empty in a
    simulation, which has no gate).
    """

    event: ClassVar[str] = "run_joined"

    config_hash: str
    dataset: dict[str, Any] = Field(
        description="privacy unit, manifest sha256 and counts; never content"
    )
    run_name: str = ""
    fab_hash: str = ""


class RoundCharged(AuditEvent):
    """``round_charged``: the privacy a training round costs, written before training.

    ``noise_multiplier``, ``sample_rate`` and ``steps`` are the DP parameters of the
    release (a Poisson-subsampled Gaussian mechanism); an auditor composes them over
    the whole log. ``accountant`` names the bound that the ``epsilon_*`` fields
    report (the tighter of ``rdp`` and ``prv``), and ``epsilon_rdp`` is the RDP
    bound of the whole history after this charge, which an auditor recomputes.
    ``ledger_rounds`` and ``ledger_sha256`` anchor the site's ledger: the number of
    DP entries it holds after this charge and the digest of those entries.
    """

    event: ClassVar[str] = "round_charged"

    noise_multiplier: float = Field(ge=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)
    delta: float = Field(gt=0, lt=1)
    unit: Literal["patient", "group", "slide", "tile"]
    accountant: str
    epsilon_round: float
    epsilon_before: float
    epsilon_after: float
    epsilon_max: float
    replay: bool
    epsilon_rdp: float | None = None
    ledger_rounds: int | None = Field(default=None, ge=0)
    ledger_sha256: str | None = None


class EvaluationCharged(RoundCharged):
    """``evaluation_charged``: the privacy an evaluation costs (noised statistics)."""

    event: ClassVar[str] = "evaluation_charged"


class RoundReplayed(RoundCharged):
    """``round_replayed``: a release asked for again, answered with the stored bytes.

    Nothing is trained or charged again; the fields repeat the original charge.
    """

    event: ClassVar[str] = "round_replayed"


class ArrayInfo(BaseModel):
    """Name, shape and dtype of one array of a released update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shape: list[int]
    dtype: str


class UpdateReleased(AuditEvent):
    """``update_released``: a model update that left the site."""

    event: ClassVar[str] = "update_released"

    arrays: list[ArrayInfo]
    bytes: int = Field(ge=0)
    sha256: str = Field(min_length=1)
    metrics: dict[str, Any]


class MetricsReleased(AuditEvent):
    """``metrics_released``: held-out metrics sent to the server."""

    event: ClassVar[str] = "metrics_released"

    metrics: dict[str, Any]


class _Because(AuditEvent):
    """An event that says why something did not happen."""

    reason: str


class MetricWithheld(_Because):
    """``metric_withheld``: an evaluation too small for the site's minimum."""

    event: ClassVar[str] = "metric_withheld"


class RoundRefused(_Because):
    """``round_refused``: the site's policy (or its storage) refused the round."""

    event: ClassVar[str] = "round_refused"


class EvaluationRefused(_Because):
    """``evaluation_refused``: an evaluation past the policy's cap, or over budget."""

    event: ClassVar[str] = "evaluation_refused"


class RoundFailed(_Because):
    """``round_failed``: the round failed at the site."""

    event: ClassVar[str] = "round_failed"


class EgressBlocked(_Because):
    """``egress_blocked`` by the training handler's check of its own reply."""

    event: ClassVar[str] = "egress_blocked"


class EgressGuardBlocked(AuditEvent):
    """``egress_blocked`` by the egress guard around the ClientApp."""

    event: ClassVar[str] = "egress_blocked"

    message_type: str
    rule: str
    detail: str


class AppRefused(_Because):
    """``app_refused``: an app whose FAB hash the site did not approve."""

    event: ClassVar[str] = "app_refused"

    fab_hash: str
    fab_id: str
    fab_version: str


# ----------------------------------------------------------------- server events
class RunStarted(AuditEvent):
    """``run_started`` (server): the run config's hash, strategy and rounds.

    ``run_name`` is the run config's ``run-name``; ``fab_hash`` the SHA-256 of the
    app (FAB) that the SuperLink runs and sends to the sites (empty in a
    simulation).
    """

    event: ClassVar[str] = "run_started"

    config_hash: str
    strategy: str
    rounds: int
    run_name: str = ""
    fab_hash: str = ""


class RunResumed(RunStarted):
    """``run_resumed`` (server): a run continued from its last checkpoint."""

    event: ClassVar[str] = "run_resumed"


class RunFinished(AuditEvent):
    """``run_finished`` (server): the final model's hashes.

    ``final_sha256`` is the SHA-256 of the model's raw array bytes, concatenated in
    the model's order; ``model_file_sha256`` is the SHA-256 of the file
    ``final.safetensors`` itself (what ``sha256sum final.safetensors`` prints).
    """

    event: ClassVar[str] = "run_finished"

    final_sha256: str
    model_file_sha256: str = ""


class RoundCompleted(AuditEvent):
    """``round_completed`` (server): the round's totals."""

    event: ClassVar[str] = "round_completed"

    sites_trained: int
    sites_evaluated: int
    rejected: int
    errors: int


class RunStopped(AuditEvent):
    """``run_stopped`` (server): a round in which fewer than ``min-sites`` sites
    trained ends the run, without a model; the round's totals and why.

    Written instead of ``round_completed`` for that round: nothing of it is
    aggregated into a result, logged as a metric or checkpointed.
    """

    event: ClassVar[str] = "run_stopped"

    sites_trained: int
    sites_evaluated: int
    rejected: int
    errors: int
    min_sites: int
    reason: str


class _NodeBecause(_Because):
    """A server event about one node's reply."""

    node: str


class ReplyError(_NodeBecause):
    """``reply_error`` (server): a site replied with an error.

    ``stage`` says which instruction it answered (empty in logs written before it
    was recorded, which held training replies only).
    """

    event: ClassVar[str] = "reply_error"

    stage: Literal["", "train", "evaluate"] = ""


class UpdateRejected(_NodeBecause):
    """``update_rejected`` (server): an update failed the server's validation."""

    event: ClassVar[str] = "update_rejected"


class ReplyReasked(AuditEvent):
    """``reply_reasked`` (server): a silent site was sent its instruction again."""

    event: ClassVar[str] = "reply_reasked"

    node: str
    stage: str
    asks: int = Field(ge=2)


class ReplyLost(AuditEvent):
    """``reply_lost`` (server): no reply from a site by the stage's deadline.

    The site may have released (and been charged for) an update that never
    arrived: its own log's ``update_released`` for the round shows it."""

    event: ClassVar[str] = "reply_lost"

    node: str
    stage: str
    asks: int = Field(ge=1)


class UpdateAggregated(AuditEvent):
    """``update_aggregated`` (server): an update that went into the global model."""

    event: ClassVar[str] = "update_aggregated"

    node: str
    sha256: str = Field(min_length=1)
    bytes: int
    weight: int


# ----------------------------------------------------------------- the registry
EVENT_MODELS: tuple[type[AuditEvent], ...] = (
    RunJoined,
    RoundCharged,
    EvaluationCharged,
    RoundReplayed,
    UpdateReleased,
    MetricsReleased,
    MetricWithheld,
    RoundRefused,
    EvaluationRefused,
    RoundFailed,
    EgressBlocked,
    EgressGuardBlocked,
    AppRefused,
    RunStarted,
    RunResumed,
    RunFinished,
    RoundCompleted,
    RunStopped,
    ReplyError,
    ReplyReasked,
    ReplyLost,
    UpdateRejected,
    UpdateAggregated,
)
"""Every payload model; an event name may have more than one (``egress_blocked``)."""


def _by_event() -> dict[str, tuple[type[AuditEvent], ...]]:
    found: dict[str, tuple[type[AuditEvent], ...]] = {}
    for model in EVENT_MODELS:
        found[model.event] = (*found.get(model.event, ()), model)
    return found


_BY_EVENT = _by_event()


def models_for(event: str) -> tuple[type[AuditEvent], ...]:
    """Return the payload models of an event name (empty when it is unknown)."""
    return _BY_EVENT.get(event, ())


def event_names() -> frozenset[str]:
    """Return every event name that has a payload model."""
    return frozenset(_BY_EVENT)


def parse_payload(record: AuditRecord) -> AuditEvent | None:
    """Read a record's ``data`` with the payload model of its event.

    Parameters
    ----------
    record : AuditRecord
        The record.

    Returns
    -------
    AuditEvent or None
        The payload, or None when no model has the record's event name.

    Raises
    ------
    pydantic.ValidationError
        If no model of the event accepts ``data`` (the error of the first model).
    """
    models = models_for(record.event)
    errors: list[ValidationError] = []
    for model in models:
        try:
            return model.model_validate(record.data)
        except ValidationError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return None


_Event = TypeVar("_Event", bound=AuditEvent)


def event_data(record: AuditRecord, model: type[_Event]) -> _Event:
    """Read a record's payload as ``model``.

    Parameters
    ----------
    record : AuditRecord
        The record.
    model : type[AuditEvent]
        The payload model of the record's event.

    Returns
    -------
    AuditEvent
        The payload.

    Raises
    ------
    pydantic.ValidationError
        If the payload lacks a field of ``model``, has one of the wrong type, or
        has a field ``model`` does not know.
    """
    return model.model_validate(record.data)


__all__ = [
    "EVENT_MODELS",
    "AppRefused",
    "ArrayInfo",
    "AuditEvent",
    "EgressBlocked",
    "EgressGuardBlocked",
    "EvaluationCharged",
    "EvaluationRefused",
    "MetricWithheld",
    "MetricsReleased",
    "ReplyError",
    "ReplyLost",
    "ReplyReasked",
    "RoundCharged",
    "RoundCompleted",
    "RoundFailed",
    "RoundRefused",
    "RoundReplayed",
    "RunFinished",
    "RunJoined",
    "RunResumed",
    "RunStarted",
    "RunStopped",
    "UpdateAggregated",
    "UpdateRejected",
    "UpdateReleased",
    "event_data",
    "event_names",
    "models_for",
    "parse_payload",
]
