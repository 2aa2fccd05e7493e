"""``slidefed bench prepare``: local and Ray preparation of one site, compared."""

from __future__ import annotations

import json

import pytest

from slidefed.cli import main

pytestmark = pytest.mark.integration


def test_bench_prepare_reports_every_variant_with_equal_caches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(["bench", "prepare", "--json", "--patients", "2", "--size", "1024"])

    result = json.loads(capsys.readouterr().out)
    assert rc == 0
    rows = [
        result["local"]["1_process"],
        result["local"]["2_processes"],
        result["ray"]["1_worker_node"],
        result["ray"]["2_worker_nodes"],
    ]
    assert all(r["cache_equal_to_local"] for r in rows)
    assert {r["slides_prepared"] for r in rows} == {result["slides"]}
    one, two = rows[2]["slides_per_s"], rows[3]["slides_per_s"]
    assert result["speedup_ray_2_nodes_over_1"] == pytest.approx(two / one, rel=0.01)
    assert result["ray"]["connect_seconds"] > 0
