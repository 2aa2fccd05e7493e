import itertools
import time

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from slidefed.client.privacy.accountant import (
    _ALPHAS,
    _CAL_ALPHAS,
    calibrate_noise,
    epsilon,
    group_history,
    prv_epsilon,
    rdp_epsilon,
    tightest,
)


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
# Once overshot: the coarse grid had order 64, outside the fine grid.
@example(target=12.0, q=0.3125, steps=7)
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


def test_the_calibration_orders_are_a_subset_of_the_reported_ones() -> None:
    assert set(_CAL_ALPHAS) < set(_ALPHAS)


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


def _opacus_prv(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = PRVAccountant()
    acc.history = list(history)
    with np.errstate(divide="ignore"):  # log(1 - q) at q = 1, in a masked branch
        return float(acc.get_epsilon(delta))


def test_opacus_prv_accountant_reports_its_upper_bound() -> None:
    acc = PRVAccountant()
    acc.history = [(1.1, 0.1, 40)]
    delta = 1e-5
    dprv = acc._get_dprv(eps_error=0.01, delta_error=delta / 1000)
    lower, estimate, upper = dprv.compute_epsilon(delta, delta / 1000, 0.01)
    assert lower < estimate < upper
    assert acc.get_epsilon(delta) == upper


@pytest.mark.parametrize(
    "history",
    [
        [(1.0, 0.25, 30)],
        [(4.0, 1.0, 1)],  # one evaluation: the plain Gaussian mechanism
        [(1.1, 1 / 13, 117), (4.0, 1.0, 3)],
    ],
)
def test_prv_epsilon_is_opacus_prv_upper_bound(
    history: list[tuple[float, float, int]],
) -> None:
    assert prv_epsilon(history, 1e-5) == pytest.approx(
        _opacus_prv(history, 1e-5), rel=1e-7
    )


def test_equal_mechanisms_are_merged_before_prv() -> None:
    rounds = [(1.1, 1 / 13, 39)] * 3 + [(4.0, 1.0, 1)] * 3
    assert group_history(rounds) == [(1.1, 1 / 13, 117), (4.0, 1.0, 3)]
    unmerged = [(1.1, 1 / 13, 39), (4.0, 1.0, 1), (1.1, 1 / 13, 78), (4.0, 1.0, 2)]
    expected = _opacus_prv(unmerged, 1e-5)
    assert prv_epsilon(rounds, 1e-5) == pytest.approx(expected, abs=1e-6)


def test_best_is_the_smaller_valid_bound_and_says_which() -> None:
    history = [(1.0, 0.25, 30), (4.0, 1.0, 2)]
    rdp, prv = rdp_epsilon(history, 1e-5), prv_epsilon(history, 1e-5)
    assert prv is not None
    assert prv < rdp
    assert tightest(history, 1e-5, accountant="best") == (prv, "prv")
    assert tightest(history, 1e-5, accountant="prv") == (prv, "prv")
    assert tightest(history, 1e-5, accountant="rdp") == (rdp, "rdp")
    assert epsilon(history, 1e-5, accountant="best") == min(rdp, prv)
    assert tightest([], 1e-5) == (0.0, "rdp")
    # No noise: PRV cannot be computed; RDP says infinity.
    assert prv_epsilon([(0.0, 0.5, 1)], 1e-5) is None


@pytest.mark.slow
def test_many_distinct_mechanisms_are_bounded_by_dominating_ones() -> None:
    # Ten runs, each its own noise: merged onto fewer, noisier-never mechanisms.
    history = [(1.0 + 0.013 * i, 0.1, 20) for i in range(10)]
    merged = prv_epsilon(history, 1e-5)
    assert merged is not None
    assert _opacus_prv(history, 1e-5) <= merged < rdp_epsilon(history, 1e-5)


def test_prv_on_hundreds_of_entries_is_fast() -> None:
    # 100 runs' worth of rounds and evaluations of one site (a few mechanisms).
    history = (
        [(1.1, 1 / 13, 39)] * 150 + [(4.0, 1.0, 1)] * 100 + [(1.3, 1 / 13, 39)] * 150
    )
    rdp_epsilon(history, 1e-5)  # the RDP curves are cached per mechanism
    start = time.perf_counter()
    value, bound = tightest(history, 1e-5, accountant="best")
    elapsed = time.perf_counter() - start
    assert bound == "prv"
    assert value < rdp_epsilon(history, 1e-5)
    assert elapsed < 3.0  # about 0.2 s on one idle core
