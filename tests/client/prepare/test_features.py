import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from slidefed.client.config import load_site_config
from slidefed.client.prepare.cache import (
    FeatureCache,
    HashMemo,
    cache_key,
    readers_id,
    slide_sha256,
)
from slidefed.client.prepare.encoders import (
    HedEncoder,
    encoder_cache_id,
    get_encoder,
    rgb_to_hed,
)
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.common.errors import ConfigError
from slidefed.common.model import ENCODER_DIMS
from slidefed.demo.synth import SynthSite


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
    # The site is shared by the session: start from an empty cache.
    shutil.rmtree(config.cache_dir, ignore_errors=True)
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


# ------------------------------------------------------------------ registry
def _timm_missing() -> bool:
    return importlib.util.find_spec("timm") is None


def test_timm_encoder_needs_a_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs features\.weights"):
        get_encoder("timm:vit_small_patch16_224")
    with pytest.raises(ConfigError, match="file not found"):
        get_encoder("timm:vit_small_patch16_224", weights=tmp_path / "none.pth")


@pytest.mark.skipif(not _timm_missing(), reason="timm is installed here")
def test_timm_encoder_without_timm_names_the_extra(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"0" * 16)
    with pytest.raises(
        ConfigError,
        match=r"needs the 'encoders' extra: pip install 'slidefed\[site,encoders\]'",
    ):
        get_encoder("timm:vit_small_patch16_224", weights=weights)


def test_encoder_cache_id_carries_the_weights_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    assert encoder_cache_id("hed") == "hed-v1"
    id_a = encoder_cache_id("timm:vit_large_patch16_224", a)
    assert id_a.startswith("timm:vit_large_patch16_224:")
    assert id_a == encoder_cache_id("timm:vit_large_patch16_224", a)
    assert id_a != encoder_cache_id("timm:vit_large_patch16_224", b)
    with pytest.raises(ConfigError, match="unknown"):
        encoder_cache_id("timm:")


def test_timm_tiny_model_with_random_weights() -> None:
    pytest.importorskip("timm")
    from slidefed.client.prepare.encoders import TimmEncoder

    enc = TimmEncoder("vit_tiny_patch16_224", None, device="cpu", batch_size=2)
    tiles = np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), np.uint8)
    out = enc.encode(tiles)
    assert out.shape == (3, enc.dim)
    assert out.dtype == np.float32
    assert enc.encoder_id == "timm:vit_tiny_patch16_224:random0"


# ---------------------------------------------------------- hashes and skips
def test_slide_hash_of_a_folder_and_the_memo(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"level zero")
    (folder / "b.dcm").write_bytes(b"level one")
    first = slide_sha256(folder)
    memo = HashMemo()
    assert memo.sha256(folder) == first
    memo.save(tmp_path / "hashes.json")
    again = HashMemo.load(tmp_path / "hashes.json")
    assert again.sha256(folder) == first
    (folder / "b.dcm").write_bytes(b"level one, rescanned")
    assert again.sha256(folder) != first
    assert HashMemo.load(tmp_path / "missing.json").entries == {}


def test_skip_records_hold_for_the_same_readers(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    assert cache.load_skip("k") is None
    cache.save_skip("k", "no tissue found")
    assert cache.load_skip("k") == "no tissue found"
    record = cache.skip_path("k").read_text()
    cache.skip_path("k").write_text(record.replace(readers_id(), "slidefed-0.0.0"))
    assert cache.load_skip("k") is None
