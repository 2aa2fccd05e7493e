from pathlib import Path

import numpy as np
import pytest

from slidefed.client.features import (
    FeatureCache,
    HedEncoder,
    cache_key,
    get_encoder,
    rgb_to_hed,
)
from slidefed.client.prepare import prepare_site
from slidefed.common.config import load_site_config
from slidefed.common.errors import ConfigError
from slidefed.common.model import ENCODER_DIMS
from slidefed.common.synth import SynthSite


def _tile(colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (224, 224, 3)).copy()


def test_hed_separates_haematoxylin_from_eosin() -> None:
    purple = rgb_to_hed(_tile((80, 60, 140)))[0, 0]
    pink = rgb_to_hed(_tile((230, 150, 190)))[0, 0]
    assert purple[0] > pink[0]
    assert pink[1] > 0


def test_hed_encoder_shape_and_dim_agree_with_model_registry() -> None:
    enc = get_encoder("hed")
    tiles = np.stack([_tile((80, 60, 140)), _tile((230, 150, 190))])
    out = enc.encode(tiles)
    assert out.shape == (2, ENCODER_DIMS["hed"]) == (2, HedEncoder.dim)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert not np.allclose(out[0], out[1])


def test_unknown_encoder() -> None:
    with pytest.raises(ConfigError, match=r"features\.encoder='uni'"):
        get_encoder("uni")


def test_cache_key_depends_on_content_encoder_and_tiling() -> None:
    base = cache_key("a" * 64, "hed-v1", {"tile_size": 224})
    assert base == cache_key("a" * 64, "hed-v1", {"tile_size": 224})
    assert base != cache_key("b" * 64, "hed-v1", {"tile_size": 224})
    assert base != cache_key("a" * 64, "other", {"tile_size": 224})
    assert base != cache_key("a" * 64, "hed-v1", {"tile_size": 256})


def test_cache_round_trip(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    feats = np.random.default_rng(0).random((5, 24), dtype=np.float32)
    cache.save("k", feats, np.zeros((5, 2), np.int64))
    assert cache.has("k")
    np.testing.assert_array_equal(cache.load("k"), feats)
    assert not list(tmp_path.glob("*.tmp"))


def test_prepare_caches_and_tumour_tiles_have_more_haematoxylin(
    small_site: SynthSite,
) -> None:
    config = load_site_config(small_site.root / "site.toml")
    first = prepare_site(config, workers=1)
    second = prepare_site(config, workers=1)

    assert all(s.status == "ok" for s in first.slides)
    assert all(s.status == "cached" for s in second.slides)
    assert [s.tiles for s in first.slides] == [s.tiles for s in second.slides]
    # Mean haematoxylin (feature 3) of the darkest tiles: tumour slides are higher.
    cache = FeatureCache(config.cache_dir)
    labels = dict(
        line.split(",")[0::2]
        for line in small_site.manifest.read_text().splitlines()[1:]
    )
    top: dict[str, list[float]] = {"0": [], "1": []}
    for s in first.slides:
        h = np.sort(cache.load(s.key)[:, 3])
        top[labels[s.slide]].append(float(h[-3:].mean()))
    assert np.mean(top["1"]) > np.mean(top["0"]) + 0.1
