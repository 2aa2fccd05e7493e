"""The audit schema: a model for every event written, the same keys as ever, no more.

The registry tests read the package's source: every ``append`` to an audit log passes
a payload model (never an event name as text), every model is in the registry, and
every model in the registry is written somewhere.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from slidefed.common.audit import events
from slidefed.common.audit.events import (
    EVENT_MODELS,
    AuditEvent,
    EgressBlocked,
    EgressGuardBlocked,
    event_names,
    models_for,
    parse_payload,
)
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key
from tests.audit.builders import foreign

PACKAGE = Path(events.__file__).resolve().parents[2]

# What the writers have always written, key for key (weight and counts are ints,
# shapes come as tuples from ArraySpec.model_dump): the models must read each back
# and write it again unchanged.
WRITTEN: dict[str, dict[str, Any]] = {
    "RunJoined": {
        "config_hash": "f" * 64,
        "dataset": {"unit": "patient", "manifest_sha256": "a" * 64, "slides": 80},
        "run_name": "grade-v1",
        "fab_hash": "9" * 64,
    },
    "RoundCharged": {
        "noise_multiplier": 0.95,
        "sample_rate": 0.25,
        "steps": 16,
        "delta": 0.0035,
        "unit": "patient",
        "accountant": "rdp",
        "epsilon_round": 0.5,
        "epsilon_before": 1.0,
        "epsilon_after": 1.5,
        "epsilon_max": 8.0,
        "replay": False,
        "epsilon_rdp": 1.6,
        "ledger_rounds": 3,
        "ledger_sha256": "9" * 64,
    },
    "UpdateReleased": {
        "arrays": [{"name": "head.weight", "shape": (2, 24), "dtype": "float32"}],
        "bytes": 192,
        "sha256": "b" * 64,
        "metrics": {"num-examples": 28, "train_loss": 0.6, "epsilon": 1.5},
    },
    "MetricsReleased": {"metrics": {"num-examples": 12, "auc": 0.7}},
    "MetricWithheld": {"reason": "4 held-out patients < policy minimum 10"},
    "RoundRefused": {"reason": "over the site's max_epsilon"},
    "RoundFailed": {"reason": "no features"},
    "EgressBlocked": {"reason": "metric 'patient_ids' is not an allowed metric"},
    "EgressGuardBlocked": {
        "message_type": "train",
        "rule": "arrays_differ",
        "detail": "extra ['exfil']",
    },
    "AppRefused": {
        "fab_hash": "c" * 64,
        "fab_id": "x/y",
        "fab_version": "1.0",
        "reason": "not in approved_apps.toml",
    },
    "RunStarted": {
        "config_hash": "d" * 64,
        "strategy": "fedavg",
        "rounds": 3,
        "run_name": "grade-v1",
        "fab_hash": "9" * 64,
    },
    "RunFinished": {"final_sha256": "e" * 64, "model_file_sha256": "5" * 64},
    "RoundCompleted": {
        "sites_trained": 3,
        "sites_evaluated": 3,
        "rejected": 0,
        "errors": 1,
    },
    "RunStopped": {
        "sites_trained": 1,
        "sites_evaluated": 0,
        "rejected": 0,
        "errors": 2,
        "min_sites": 3,
        "reason": "refused: privacy budget (sites 4, 9)",
    },
    "ReplyError": {"node": "9314", "reason": "timeout", "stage": "evaluate"},
    "ReplyReasked": {"node": "9314", "stage": "train", "asks": 2},
    "ReplyLost": {"node": "9314", "stage": "evaluate", "asks": 3},
    "UpdateRejected": {"node": "9313", "reason": "non-finite values"},
    "UpdateAggregated": {"node": "4", "sha256": "b" * 64, "bytes": 192, "weight": 28},
}
WRITTEN["RoundReplayed"] = WRITTEN["RoundCharged"] | {"replay": True}
WRITTEN["EvaluationCharged"] = WRITTEN["RoundCharged"] | {
    "noise_multiplier": 4.0,
    "sample_rate": 1.0,
    "steps": 1,
}
WRITTEN["EvaluationRefused"] = {"reason": "the run's evaluations are used up"}
WRITTEN["RunResumed"] = WRITTEN["RunStarted"]


def _json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


def test_every_model_has_its_written_payload() -> None:
    assert {model.__name__ for model in EVENT_MODELS} == set(WRITTEN)


def test_event_names() -> None:
    assert event_names() == {
        "run_joined",
        "round_charged",
        "evaluation_charged",
        "evaluation_refused",
        "round_replayed",
        "update_released",
        "metrics_released",
        "metric_withheld",
        "round_refused",
        "round_failed",
        "egress_blocked",
        "app_refused",
        "run_started",
        "run_resumed",
        "run_finished",
        "round_completed",
        "run_stopped",
        "reply_error",
        "reply_reasked",
        "reply_lost",
        "update_rejected",
        "update_aggregated",
    }
    assert models_for("egress_blocked") == (EgressBlocked, EgressGuardBlocked)
    assert models_for("round.fit") == ()


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_a_payload_writes_what_was_always_written(model: type[AuditEvent]) -> None:
    data = WRITTEN[model.__name__]

    payload = model(**data)

    assert _json(payload.model_dump()) == _json(data)


ADDED = {
    "RunJoined": ("run_name", "fab_hash"),
    "RunStarted": ("run_name", "fab_hash"),
    "RunResumed": ("run_name", "fab_hash"),
    "RunFinished": ("model_file_sha256",),
    "ReplyError": ("stage",),
}
"""Keys writers added later: records written before them read back as before."""


@pytest.mark.parametrize("name", sorted(ADDED))
def test_a_payload_written_before_a_key_was_added_still_reads(name: str) -> None:
    model = next(m for m in EVENT_MODELS if m.__name__ == name)
    older = {k: v for k, v in WRITTEN[name].items() if k not in ADDED[name]}

    payload = model.model_validate(older)

    assert all(getattr(payload, key) == "" for key in ADDED[name])


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_an_unknown_key_is_refused(model: type[AuditEvent]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate(WRITTEN[model.__name__] | {"patient_id": "p-17"})


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_records_read_back_as_their_model(
    model: type[AuditEvent], tmp_path: Path
) -> None:
    key = generate_audit_key(tmp_path / "audit_key")
    log = AuditLog(tmp_path / "a.jsonl", key=key, actor="site", actor_name="s")

    record = log.append(model(**WRITTEN[model.__name__]), run_id=1, round=1)

    assert record.event == model.event
    assert parse_payload(record) == model.model_validate(record.data)
    assert type(parse_payload(record)) is model


def test_parse_payload_refuses_unknown_keys_and_skips_unknown_events(
    tmp_path: Path,
) -> None:
    key = generate_audit_key(tmp_path / "audit_key")
    log = AuditLog(tmp_path / "a.jsonl", key=key, actor="site", actor_name="s")
    extra = log.append(foreign("round_refused", reason="x", slide="s-1.svs"))
    unknown = log.append(foreign("round.fit", epsilon=0.5))

    with pytest.raises(ValidationError, match="slide"):
        parse_payload(extra)
    assert parse_payload(unknown) is None


# --- the writers, read from the source ---------------------------------------------


def _writer_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "audit" not in path.relative_to(PACKAGE).parts[:2]
    ]


def _is_audit_call(node: ast.Call) -> bool:
    """A call that writes an audit record: ``<...audit...>.append(...)`` or a helper."""
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "append":
        return "audit" in ast.unparse(func.value)
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in {"_audit", "_audit_quietly"}


def _audit_calls() -> list[tuple[Path, ast.Call]]:
    found = []
    for path in _writer_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [
            (path, node)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _is_audit_call(node)
        ]
    return found


def test_writers_pass_payload_models_never_event_names() -> None:
    calls = _audit_calls()
    texts = [
        f"{path.relative_to(PACKAGE)}:{call.lineno}"
        for path, call in calls
        for arg in call.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    ]

    assert len(calls) >= 15  # the client, egress guard, approval and server writers
    assert texts == []


def test_every_model_is_written_and_every_written_model_is_registered() -> None:
    names = {model.__name__ for model in EVENT_MODELS}
    used: set[str] = set()
    defined_elsewhere: list[str] = []
    for path in _writer_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == events.__name__:
                used |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).endswith("AuditEvent") for base in node.bases
            ):
                defined_elsewhere.append(f"{path.name}:{node.name}")

    assert defined_elsewhere == []
    assert names <= used, f"models nothing writes: {sorted(names - used)}"
    assert used - {"AuditEvent", "ArrayInfo"} <= names
