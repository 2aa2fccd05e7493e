"""The fast discretisation gives Opacus's discretised PRV."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
)
from opacus.accountants.analysis.prv import discretize as opacus_discretize

from slidefed.client.privacy.prv_grid import _subsampled_cdf, compose, discretize


def _domain(half_width: float, dt: float) -> Domain:
    return Domain.create_aligned(-half_width, half_width, dt)


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "half_width", "dt"),
    [
        (1.3, 0.5, 64, 25.0, 4e-4),
        (1.1, 1 / 13, 117, 12.0, 3e-4),
        (4.0, 1.0, 3, 6.0, 2e-3),  # an evaluation: the plain Gaussian mechanism
        (0.8, 0.01, 500, 9.0, 1e-4),
    ],
)
def test_discretisation_matches_opacus(
    sigma: float, q: float, steps: int, half_width: float, dt: float
) -> None:
    domain = _domain(half_width, dt)
    # Opacus takes log(1 - q) in a masked branch: at q = 1 it warns.
    with np.errstate(divide="ignore", invalid="ignore"):
        prv = TruncatedPrivacyRandomVariable(
            PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max
        )
        theirs = opacus_discretize(prv, domain)
        ours = discretize(sigma, q, domain)
    assert ours.domain.size == theirs.domain.size
    assert np.max(np.abs(ours.pmf - theirs.pmf)) < 1e-12
    # The mean shift moves the whole grid: equal to well under a cell.
    assert ours.domain.t_min == pytest.approx(theirs.domain.t_min, abs=1e-6 * dt)
    delta = 1e-5
    eps = [
        compose_heterogeneous([d], [steps]).compute_epsilon(delta, delta / 1e3, 0.01)[2]
        for d in (theirs, ours)
    ]
    assert math.isfinite(eps[0])
    assert eps[1] == pytest.approx(eps[0], rel=1e-8)


@pytest.mark.parametrize("counts", [[1], [2], [117], [96, 3], [39, 1, 78]])
def test_composition_by_squaring_matches_opacus(counts: list[int]) -> None:
    domain = _domain(20.0, 5e-4)
    mechanisms = [(1.1, 1 / 13), (4.0, 1.0), (1.3, 0.25)][: len(counts)]
    with np.errstate(divide="ignore", invalid="ignore"):
        dprvs = [discretize(sigma, q, domain) for sigma, q in mechanisms]
    theirs = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)
    ours = compose(dprvs, counts)
    assert ours.domain == theirs.domain
    assert np.max(np.abs(ours.pmf - theirs.pmf)) < 1e-12
    delta = 1e-5
    assert ours.compute_epsilon(delta, delta / 1e3, 0.01) == pytest.approx(
        theirs.compute_epsilon(delta, delta / 1e3, 0.01), rel=1e-9
    )


def test_a_mechanism_composes_a_positive_number_of_times() -> None:
    dprv = discretize(1.0, 0.5, _domain(5.0, 1e-2))
    with pytest.raises(ValueError, match="positive"):
        compose([dprv], [0])
    with pytest.raises(ValueError, match="positive"):
        compose([dprv], [-3])


@pytest.mark.parametrize(
    ("q", "sigma"), [(8 / 36, 1.1), (0.01, 0.7), (0.5, 5.0), (1.0, 3.0)]
)
def test_cdf_on_its_nonzero_part_is_opacus_cdf_bit_for_bit(
    q: float, sigma: float
) -> None:
    prv = PoissonSubsampledGaussianPRV(q, sigma)
    edges = np.linspace(-40.0, 40.0, 20_001)
    nodes = np.random.default_rng(0).uniform(-3.0, 3.0, (300, 32))
    with np.errstate(divide="ignore"):
        for t in (edges, nodes, np.array([-40.0, 40.0])):
            np.testing.assert_array_equal(_subsampled_cdf(prv, t), prv.cdf(t))
