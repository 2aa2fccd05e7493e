"""A malicious site: scaled, sign-flipped and NaN updates against the strategies."""

from pathlib import Path

import pytest

from slidefed.bench._federation import synth_sites
from slidefed.bench.robust import run_attack

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory):
    return synth_sites(Path(tmp_path_factory.mktemp("robust")), seed=0)


def test_malicious_nan_updates_are_rejected_every_round(sites) -> None:
    result = run_attack(sites, strategy="fedavg", attack="nan", rounds=2)
    assert result["rejected_updates"] == 2
    assert result["auc"] is not None
    assert result["auc"] >= 0.9


def test_malicious_sign_flip_breaks_fedavg_but_not_the_median(sites) -> None:
    fedavg = run_attack(sites, strategy="fedavg", attack="sign_flip", rounds=3)
    median = run_attack(sites, strategy="fedmedian", attack="sign_flip", rounds=3)
    assert median["auc"] >= 0.9
    assert fedavg["auc"] < median["auc"] - 0.2
