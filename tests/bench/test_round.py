"""``slidefed bench round``: a site message's fixed cost, from the site's own log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidefed.cli.root import app

pytestmark = pytest.mark.integration  # prepares a synthetic site: about a minute


def test_bench_round_reports_the_fixed_cost_of_a_site_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            *("bench", "round", "--json", "--sites", "0"),
            *("--patients", "8", "--tiles", "50", "--dim", "32"),
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    demo, realistic = out["site"]["demo"], out["site"]["realistic"]
    # Training time comes from the site's log, not from its (timing-free) replies.
    assert 0 < demo["training_seconds"] < demo["message_seconds"]
    fixed = (demo["message_seconds"] - demo["training_seconds"]) * 1000
    assert demo["fixed_ms_per_message"] == pytest.approx(fixed, abs=0.2)
    assert demo["overhead_fraction"] == pytest.approx(
        fixed / 1000 / demo["message_seconds"], abs=1e-3
    )
    assert realistic["steps"] == 1  # 8 patients, batch 8, one local epoch
    assert realistic["update_bytes"] > 0
    assert 0 < realistic["overhead_fraction"] < 1
    assert out["results"] == []
    assert out["bytes_ratio"] < 1.01  # the demo model, packed as sites send it
    assert out["bytes_ratio_abmil_1024"] < 1.01
