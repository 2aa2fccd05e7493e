"""``slidefed bench features``: whole slide against the encoder alone, same tiles."""

import json
from pathlib import Path

import pytest

from slidefed.cli import main
from tests.encoders_support import need

pytestmark = [pytest.mark.integration]


def test_bench_features_reports_the_three_rates_and_their_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    need("timm")
    argv = ["bench", "features", "--json", "--encoder", "timm:vit_tiny_patch16_224"]
    argv += ["--size", "1024", "--workers", "1", "--batch-size", "8", "--reps", "1"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["encoder"] == "timm:vit_tiny_patch16_224"
    assert out["weights"] == "random"
    assert out["device"] == "cpu"
    assert out["dim"] == 192
    assert out["tiles"] > 0
    rates = [out[k] for k in ("decode_tiles_per_s", "encoder_tiles_per_s")]
    assert all(r > 0 for r in rates)
    whole, encoder = out["whole_tiles_per_s"], out["encoder_tiles_per_s"]
    assert out["ratio_to_encoder"] == pytest.approx(whole / encoder, rel=0.01)
    # The whole path also encodes: it cannot be much faster than the encoder.
    assert 0 < out["ratio_to_encoder"] < 1.5


def test_bench_features_refuses_a_missing_weights_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["bench", "features", "--encoder", "hf:phikon"]
    argv += ["--weights", str(tmp_path / "phikon"), "--size", "512"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "phikon: folder (a saved transformers model) not found" in err
