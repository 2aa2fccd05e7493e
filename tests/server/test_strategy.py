import numpy as np
import pytest

from slidefed.server.strategy import load_strategy_state, strategy_state
from tests.server.replies import EXPECTED, reply, validating_strategy


@pytest.mark.parametrize(
    "name", ["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"]
)
def test_every_strategy_aggregates_identical_updates_to_themselves(name: str) -> None:
    strategy = validating_strategy(name)
    same = {k: v + 0.5 for k, v in EXPECTED.items()}
    strategy.current_global = {k: v.copy() for k, v in EXPECTED.items()}
    if hasattr(strategy, "current_arrays"):
        strategy.current_arrays = {k: v.copy() for k, v in EXPECTED.items()}
    replies = [reply(n, same, {"num-examples": 4}) for n in (1, 2, 3, 4, 5)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    if name == "fedadam":
        # A server optimiser step moves towards the average, not onto it.
        moved = arrays["w"].numpy() - EXPECTED["w"]
        assert np.all(moved > 0)
    else:
        np.testing.assert_allclose(arrays["w"].numpy(), same["w"], rtol=1e-6)


def test_fedadam_state_round_trips() -> None:
    strategy = validating_strategy("fedadam")
    strategy.m_t = {"w": np.ones((2, 3))}  # type: ignore[attr-defined]
    strategy.v_t = {"w": np.full((2, 3), 2.0)}  # type: ignore[attr-defined]
    state = strategy_state(strategy)
    fresh = validating_strategy("fedadam")
    load_strategy_state(fresh, state)
    np.testing.assert_array_equal(fresh.v_t["w"], np.full((2, 3), 2.0))  # type: ignore[attr-defined]
