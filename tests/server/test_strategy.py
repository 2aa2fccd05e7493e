import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from slidefed.common.arrays import specs_of
from slidefed.common.run_config import RunConfig
from slidefed.server.strategy import (
    ValidatingMixin,
    build_strategy,
    load_strategy_state,
    strategy_state,
    weighted_metrics,
)

EXPECTED = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _reply(
    node: int,
    arrays: dict[str, np.ndarray] | None,
    metrics: dict[str, int | float | list[int] | list[float]],
    *,
    error: str | None = None,
) -> Message:
    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=1,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    if error is not None:
        return Message(error=Error(code=4001, reason=error), metadata=meta)  # type: ignore[call-overload,no-any-return]
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content=content, metadata=meta)  # type: ignore[call-overload,no-any-return]


def _strategy(name: str = "fedavg", **run: object) -> ValidatingMixin:
    strategy = build_strategy(
        RunConfig(strategy=name, **run),
        expected=specs_of(EXPECTED),
        audit=None,
        run_id=1,
    )
    assert isinstance(strategy, ValidatingMixin)
    return strategy


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
    strategy = _strategy()
    good = {k: v * 3 for k, v in EXPECTED.items()}
    replies = [
        _reply(11, good, {"num-examples": 5, "epsilon": 1.5, "train_loss": 0.5}),
        _reply(
            12,
            {"w": np.full((2, 3), np.nan, np.float32), "b": EXPECTED["b"]},
            {"num-examples": 5},
        ),
        _reply(13, {**good, "extra": np.ones(2, np.float32)}, {"num-examples": 5}),
        _reply(14, good, {"num-examples": 0}),
        _reply(15, None, {}, error="site refused: budget"),
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
    assert info["errors"] == [{"node": "15", "reason": "site refused: budget"}]


def test_no_valid_reply_keeps_the_model() -> None:
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(2, [_reply(1, None, {}, error="down")])
    assert arrays is None
    assert metrics is None


@pytest.mark.parametrize(
    "name", ["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"]
)
def test_every_strategy_aggregates_identical_updates_to_themselves(name: str) -> None:
    strategy = _strategy(name)
    same = {k: v + 0.5 for k, v in EXPECTED.items()}
    strategy.current_global = {k: v.copy() for k, v in EXPECTED.items()}
    if hasattr(strategy, "current_arrays"):
        strategy.current_arrays = {k: v.copy() for k, v in EXPECTED.items()}
    replies = [_reply(n, same, {"num-examples": 4}) for n in (1, 2, 3, 4, 5)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    if name == "fedadam":
        # A server optimiser step moves towards the average, not onto it.
        moved = arrays["w"].numpy() - EXPECTED["w"]
        assert np.all(moved > 0)
    else:
        np.testing.assert_allclose(arrays["w"].numpy(), same["w"], rtol=1e-6)


def test_update_norm_bound_rejects_large_updates() -> None:
    strategy = _strategy(max_update_norm=1.0)
    strategy.current_global = {k: v.copy() for k, v in EXPECTED.items()}
    far = {k: v + 10.0 for k, v in EXPECTED.items()}
    near = {k: v + 0.01 for k, v in EXPECTED.items()}
    arrays, _ = strategy.aggregate_train(
        1, [_reply(1, far, {"num-examples": 3}), _reply(2, near, {"num-examples": 3})]
    )
    assert arrays is not None
    assert "max-update-norm" in strategy.round_info[1]["rejected"][0]["reason"]


def test_float16_updates_are_aggregated_in_float32() -> None:
    strategy = _strategy()
    half = {k: (v * 2).astype(np.float16) for k, v in EXPECTED.items()}
    arrays, _ = strategy.aggregate_train(1, [_reply(1, half, {"num-examples": 3})])
    assert arrays is not None
    assert arrays["w"].numpy().dtype == np.float32


def test_fedadam_state_round_trips() -> None:
    strategy = _strategy("fedadam")
    strategy.m_t = {"w": np.ones((2, 3))}  # type: ignore[attr-defined]
    strategy.v_t = {"w": np.full((2, 3), 2.0)}  # type: ignore[attr-defined]
    state = strategy_state(strategy)
    fresh = _strategy("fedadam")
    load_strategy_state(fresh, state)
    np.testing.assert_array_equal(fresh.v_t["w"], np.full((2, 3), 2.0))  # type: ignore[attr-defined]
