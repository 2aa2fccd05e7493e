from pathlib import Path

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict

from slidefed.audit.verify import read_records
from slidefed.common.arrays import update_sha256
from slidefed.common.audit.writer import AuditLog
from slidefed.common.crypto import generate_audit_key
from slidefed.server.validation import weighted_metrics
from tests.server.replies import EXPECTED, reply, validating_strategy


def _server_log(folder: Path) -> AuditLog:
    key = generate_audit_key(folder / "keys" / "audit_key")
    return AuditLog(folder / "audit.jsonl", key=key, actor="server", actor_name="c")


def test_weighted_metrics_skip_missing_keys() -> None:
    contents = [
        RecordDict({"m": MetricRecord({"num-examples": 10, "auc": 0.9, "loss": 1.0})}),
        RecordDict({"m": MetricRecord({"num-examples": 30, "loss": 2.0})}),
    ]
    out = weighted_metrics(contents, "num-examples")
    assert out["auc"] == pytest.approx(0.9)
    assert out["loss"] == pytest.approx(1.75)
    assert out["num-examples"] == 40


def test_invalid_and_error_replies_are_dropped_and_recorded() -> None:
    strategy = validating_strategy()
    good = {k: v * 3 for k, v in EXPECTED.items()}
    replies = [
        reply(11, good, {"num-examples": 5, "epsilon": 1.5, "train_loss": 0.5}),
        reply(
            12,
            {"w": np.full((2, 3), np.nan, np.float32), "b": EXPECTED["b"]},
            {"num-examples": 5},
        ),
        reply(13, {**good, "extra": np.ones(2, np.float32)}, {"num-examples": 5}),
        reply(14, good, {"num-examples": 0}),
        reply(15, None, {}, error="site refused: budget"),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), good["w"])
    info = strategy.round_info[1]
    assert info["sites_trained"] == 1
    assert info["epsilon_per_site"] == {"11": 1.5}
    reasons = {r["node"]: r["reason"] for r in info["rejected"]}
    assert "NaN" in reasons["12"]
    assert "extra" in reasons["13"]
    assert "num-examples" in reasons["14"]
    # Shown by its code from the table of site errors, never the site's own text.
    assert info["errors"] == [
        {
            "node": "15",
            "code": 4001,
            "reason": "refused by the site's policy (site error 4001); "
            "the site sent another reason, not shown",
        }
    ]


def test_error_replies_of_both_stages_are_audited_with_their_stage(
    tmp_path: Path,
) -> None:
    log = _server_log(tmp_path)
    strategy = validating_strategy(audit=log)
    strategy.aggregate_train(1, [reply(7, None, {}, error="site refused: budget")])
    out = strategy.aggregate_evaluate(
        1, [reply(8, None, {}, error="too few held-out units", stage="evaluate")]
    )
    assert out is None
    assert strategy.round_info[1]["errors"][1]["node"] == "8"
    errors = [r for r in read_records(log.path) if r.event == "reply_error"]
    assert [(r.data["node"], r.data["stage"], r.round) for r in errors] == [
        ("7", "train", 1),
        ("8", "evaluate", 1),
    ]
    # Shown by its code, never the site's own text (which could carry anything).
    assert "too few held-out units" not in errors[1].data["reason"]
    assert "site error 4001" in errors[1].data["reason"]


def test_no_valid_reply_keeps_the_model() -> None:
    strategy = validating_strategy()
    arrays, metrics = strategy.aggregate_train(2, [reply(1, None, {}, error="down")])
    assert arrays is None
    assert metrics is None


def test_update_norm_bound_rejects_large_updates() -> None:
    strategy = validating_strategy(max_update_norm=1.0)
    strategy.current_global = {k: v.copy() for k, v in EXPECTED.items()}
    far = {k: v + 10.0 for k, v in EXPECTED.items()}
    near = {k: v + 0.01 for k, v in EXPECTED.items()}
    arrays, _ = strategy.aggregate_train(
        1, [reply(1, far, {"num-examples": 3}), reply(2, near, {"num-examples": 3})]
    )
    assert arrays is not None
    assert "max-update-norm" in strategy.round_info[1]["rejected"][0]["reason"]


def test_float16_updates_are_aggregated_in_float32() -> None:
    strategy = validating_strategy()
    half = {k: (v * 2).astype(np.float16) for k, v in EXPECTED.items()}
    arrays, _ = strategy.aggregate_train(1, [reply(1, half, {"num-examples": 3})])
    assert arrays is not None
    assert arrays["w"].numpy().dtype == np.float32


def test_packed_updates_are_checked_and_aggregated_by_the_models_layout(
    tmp_path: Path,
) -> None:
    log = _server_log(tmp_path)
    strategy = validating_strategy(audit=log)
    a = {k: v * 2 for k, v in EXPECTED.items()}
    b = {k: v + 1 for k, v in EXPECTED.items()}
    short = {"w": a["w"], "b": a["b"][:2]}
    nan = {"w": np.full((2, 3), np.nan, np.float32), "b": a["b"]}
    arrays, _ = strategy.aggregate_train(
        1,
        [
            reply(1, a, {"num-examples": 3}, packed=True),
            reply(2, b, {"num-examples": 1}),  # one Array per model array: accepted
            reply(3, short, {"num-examples": 3}, packed=True),
            reply(4, nan, {"num-examples": 3}, packed=True),
        ],
    )
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), (3 * a["w"] + b["w"]) / 4)
    np.testing.assert_allclose(arrays["b"].numpy(), (3 * a["b"] + b["b"]) / 4)
    reasons = {r["node"]: r["reason"] for r in strategy.round_info[1]["rejected"]}
    assert set(reasons) == {"3", "4"}
    assert "the model has 9 values" in reasons["3"]
    assert "NaN" in reasons["4"]
    records = read_records(log.path)
    aggregated = {
        r.data["node"]: r.data for r in records if r.event == "update_aggregated"
    }
    # The audit hashes the named arrays, however they travelled.
    assert aggregated["1"]["sha256"] == update_sha256(a)
    assert aggregated["2"]["sha256"] == update_sha256(b)
    assert {r.data["node"] for r in records if r.event == "update_rejected"} == {
        "3",
        "4",
    }
