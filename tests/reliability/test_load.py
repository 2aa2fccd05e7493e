"""Load: 50 virtual sites for 3 rounds on the simulation engine of this machine."""

import pytest

from slidefed.bench.round import measure

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def test_load_fifty_virtual_sites_three_rounds(tmp_path) -> None:
    result = measure(50, rounds=3, workdir=tmp_path)
    assert result["sites_trained_per_round"] == [50, 50, 50]
    assert result["peak_rss_mib"] > 0
    print("load:", result)  # noqa: T201 - the figures go to docs/reliability.md
