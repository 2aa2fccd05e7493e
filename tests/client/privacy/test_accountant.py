import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from slidefed.client.privacy.accountant import calibrate_noise, epsilon


def test_epsilon_matches_opacus_rdp_accountant() -> None:
    history = [(1.0, 0.25, 10), (1.5, 0.1, 20), (0.8, 0.25, 5)]
    acc = RDPAccountant()
    acc.history = list(history)
    assert epsilon(history, 1e-3) == pytest.approx(acc.get_epsilon(1e-3), rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    sigma=st.floats(0.5, 3.0),
    q=st.floats(0.05, 0.5),
    steps=st.integers(1, 50),
    extra=st.integers(1, 50),
)
def test_epsilon_grows_with_steps(
    sigma: float, q: float, steps: int, extra: int
) -> None:
    assert epsilon([(sigma, q, steps)], 1e-4) < epsilon(
        [(sigma, q, steps + extra)], 1e-4
    )


@settings(max_examples=5, deadline=None)
@given(target=st.floats(1.0, 12.0), q=st.floats(0.1, 0.5), steps=st.integers(5, 60))
def test_calibrated_noise_never_overshoots(target: float, q: float, steps: int) -> None:
    prior = [(1.2, 0.25, 10)]
    start = epsilon(prior, 1e-3)
    goal = start + target
    sigma = calibrate_noise(
        prior, sample_rate=q, steps=steps, target_epsilon=goal, delta=1e-3
    )
    assert epsilon([*prior, (sigma, q, steps)], 1e-3) <= goal
    # And it is tight: noticeably less noise would overshoot.
    assert epsilon([*prior, (sigma * 0.9, q, steps)], 1e-3) > goal - 0.5


def test_prv_accountant_is_tighter_than_rdp() -> None:
    history = [(1.0, 0.25, 30)]
    prv = epsilon(history, 1e-3, accountant="prv")
    rdp = epsilon(history, 1e-3)
    assert 0 < prv < rdp
    assert prv == pytest.approx(6.7744, abs=0.05)  # reference/opacus.md 4.3


@settings(max_examples=15, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(st.floats(0.5, 4.0), st.floats(0.02, 0.5), st.integers(1, 100)),
        min_size=1,
        max_size=5,
    )
)
def test_epsilon_never_decreases_as_history_grows(
    rounds: list[tuple[float, float, int]],
) -> None:
    values = [epsilon(rounds[: i + 1], 1e-5) for i in range(len(rounds))]
    assert all(b >= a for a, b in itertools.pairwise(values))
