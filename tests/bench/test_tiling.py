"""``slidefed bench tiling``: its cases, and a floor that counts each stored tile once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slidefed.bench._tile_readers import full_grid, stored_tiles_needed
from slidefed.bench.tiling import write_pyramid
from slidefed.cli import main
from slidefed.client.slides import TiffSlideSource


def test_floor_counts_each_needed_stored_tile_once(tmp_path: Path) -> None:
    path = tmp_path / "p.tif"
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), np.uint8)
    write_pyramid(path, image, mpp=0.5, downsamples=(1, 4))
    with TiffSlideSource(path) as slide:
        default = full_grid(slide, level=0, read_size=224, tile_size=224)
        aligned = full_grid(slide, level=0, read_size=256, tile_size=256)
    # 4 x 4 tiles of 224 px lie over all 4 x 4 stored tiles, 36 tile pieces.
    assert len(default.coords) == 16
    assert sorted(stored_tiles_needed(path, default)) == list(range(16))
    assert stored_tiles_needed(path, aligned) == list(range(16))


def test_tiling_bench_reports_both_headline_cases(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            [
                "bench",
                "tiling",
                "--json",
                "--size",
                "768",
                "--big",
                "1024",
                "--reps",
                "1",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    aligned, default = result["aligned_jpeg"], result["default_grid_jpeg"]
    assert (aligned["read_size"], aligned["tile_size"]) == (256, 256)
    assert (default["read_size"], default["tile_size"]) == (224, 224)
    # 768 px: 3 x 3 tiles of 224 px over the 3 x 3 stored tiles, decoded once.
    assert default["tiles"] == 9
    assert default["stored_tiles_needed"] == default["stored_tiles_decoded"] == 9
    assert aligned["stored_tiles_needed"] == aligned["stored_tiles_decoded"] == 9
    assert result["default_grid_ratio_to_floor"] == default["ratio_to_floor"]
    assert result["ratio_to_floor"] == aligned["ratio_to_floor"]
    assert "decoded (imagecodecs) once" in result["floor"]
    for case in (aligned, default, result["20x_from_40x_jpeg"]):
        assert case["tiles_per_s"] > 0
        assert case["floor_tiles_per_s"] > 0
        assert case["write_floor_tiles_per_s"] > 0
        assert case["ratio_to_write_floor"] == pytest.approx(
            case["tiles_per_s"] / case["write_floor_tiles_per_s"], abs=2e-3
        )
    for case in (aligned, default):
        assert case["placed_floor_tiles_per_s"] > 0
        assert case["ratio_to_placed_floor"] == pytest.approx(
            case["tiles_per_s"] / case["placed_floor_tiles_per_s"], abs=2e-3
        )
    assert "placed_floor_tiles_per_s" not in result["20x_from_40x_jpeg"]
    assert result["20x_from_40x_jpeg"]["read_size"] == 512
    assert result["aligned_jpeg2000"]["tiles"] > 0
    assert result["speedup_2_processes"] > 0
    assert set(result["goals"]) >= {
        "aligned ratio_to_floor>=0.9",
        "default_grid ratio_to_floor>=0.9",
    }


def test_placed_floor_decodes_each_needed_stored_tile_once_into_a_kept_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imagecodecs

    path = tmp_path / "p.tif"
    image = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), np.uint8)
    write_pyramid(path, image, mpp=0.5, downsamples=(1, 4))
    with TiffSlideSource(path) as slide:
        default = full_grid(slide, level=0, read_size=224, tile_size=224)
    decode = imagecodecs.jpeg8_decode
    outs: list[object] = []

    def counted(data: bytes, **kwargs: Any) -> Any:
        outs.append(kwargs.get("out"))
        return decode(data, **kwargs)

    monkeypatch.setattr(imagecodecs, "jpeg8_decode", counted)
    from slidefed.bench._tile_readers import floor_reader

    assert floor_reader(path, default, placed=True)() == len(default.coords)
    assert len(outs) == 16  # the 16 stored tiles under the grid, once each
    assert all(isinstance(o, np.ndarray) and o.shape == (256, 256, 3) for o in outs)
    outs.clear()
    floor_reader(path, default)()
    assert outs == [None] * 16  # the floor itself: imagecodecs' own arrays
