"""``slidefed bench dicomweb``: one run, both sources, a ratio (a real Orthanc)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slidefed.bench.orthanc import orthanc_available
from slidefed.cli.root import main


@pytest.mark.integration
def test_bench_reports_the_ratio_of_dicomweb_to_local_files(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not orthanc_available():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed")
    pytest.importorskip("wsidicom")
    cmu = shared_data / "slides" / "dicom" / "cmu-1-small-region"
    args = ["bench", "dicomweb", "--json", "--reps", "1", "--slides", str(cmu)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tiles_per_pass"] == 117  # every whole 224-px tile of level 0
    ratio = result["dicomweb_tiles_per_s"] / result["local_tiles_per_s"]
    assert result["ratio_dicomweb_to_local"] == pytest.approx(ratio, abs=0.002)
    # Frames come in batches: fewer requests than frames, the opening
    # requests (a query, a probe and the metadata of each instance) included.
    assert result["requests"] < result["frames_fetched"] / 2


def test_bench_without_orthanc_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("slidefed.bench.orthanc.orthanc_binary", lambda: None)
    assert main(["bench", "dicomweb", "--slides", "/nonexistent"]) == 2
    assert "apt-get install orthanc orthanc-dicomweb" in capsys.readouterr().err
