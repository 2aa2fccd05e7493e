"""Network encoders: timm and transformers models from local weights only."""

import json
from pathlib import Path

import numpy as np
import pytest

from slidefed.cli import main
from slidefed.client.config import FeaturesSection, TilingSection, load_site_config
from slidefed.client.prepare.encoders import (
    check_tiling_fits,
    encoder_cache_id,
    get_encoder,
)
from slidefed.common.errors import ConfigError
from slidefed.common.run_config import parse_run_config
from tests.encoders_support import need, save_hf_vit, save_timm_weights

TINY = "vit_tiny_patch16_224"


def _tiles(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), np.uint8)


# ------------------------------------------------------------------ run config
def test_run_config_names_the_encoder_and_its_feature_length() -> None:
    assert parse_run_config({}).encoder_dim() == 24
    timm_run = parse_run_config({"encoder": "timm:vit_small_patch16_224"})
    assert timm_run.encoder_dim() == 384
    hf_run = parse_run_config({"encoder": "hf:phikon", "feature-dim": 768})
    assert hf_run.encoder_dim() == 768
    with pytest.raises(ConfigError, match="no known feature length; set feature-dim"):
        parse_run_config({"encoder": "hf:phikon"})
    with pytest.raises(ConfigError, match="not an encoder name"):
        parse_run_config({"encoder": "uni"})
    with pytest.raises(ConfigError, match="not an encoder name"):
        parse_run_config({"encoder": "hf:../../etc", "feature-dim": 8})


def test_run_identity_of_a_hed_run_is_unchanged_by_the_new_key() -> None:
    base = parse_run_config({})
    assert base.identity_hash() == parse_run_config({"feature-dim": 0}).identity_hash()
    assert base.identity_hash() != parse_run_config({"feature-dim": 24}).identity_hash()


# ------------------------------------------------------------------------ timm
def test_timm_weights_must_exist_and_fit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs features.weights"):
        get_encoder(f"timm:{TINY}")
    with pytest.raises(ConfigError, match="file not found"):
        get_encoder(f"timm:{TINY}", weights=tmp_path / "none.safetensors")
    need("timm")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"0" * 64)
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        get_encoder(f"timm:{TINY}", weights=junk)
    small = save_timm_weights("vit_small_patch16_224", tmp_path / "small.safetensors")
    with pytest.raises(ConfigError, match=f"does not fit timm:{TINY}"):
        get_encoder(f"timm:{TINY}", weights=small)
    with pytest.raises(ConfigError, match="not a timm architecture"):
        get_encoder("timm:no_such_net", weights=small)


def test_timm_encoder_features_and_cache_id_follow_the_weights(tmp_path: Path) -> None:
    need("timm")
    a = save_timm_weights(TINY, tmp_path / "a.safetensors", seed=1)
    b = save_timm_weights(TINY, tmp_path / "b.safetensors", seed=2)
    enc_a = get_encoder(f"timm:{TINY}", weights=a, device="cpu")
    enc_b = get_encoder(f"timm:{TINY}", weights=b, device="cpu")
    tiles = _tiles(3)
    fa, fb = enc_a.encode(tiles), enc_b.encode(tiles)
    assert fa.shape == (3, 192)
    assert fa.dtype == np.float32
    assert not np.allclose(fa, fb)
    assert enc_a.encoder_id == encoder_cache_id(f"timm:{TINY}", a)
    assert enc_a.encoder_id != enc_b.encoder_id
    # Tiles of another size are resized to the model's input, not refused.
    assert enc_a.encode(_tiles(2, size=256)).shape == (2, 192)


def test_timm_normalisation_is_the_models_own(tmp_path: Path) -> None:
    need("timm")
    import torch

    weights = save_timm_weights(TINY, tmp_path / "w.safetensors")
    enc = get_encoder(f"timm:{TINY}", weights=weights, device="cpu")
    tiles = _tiles(2)
    cfg = enc.model.pretrained_cfg  # type: ignore[attr-defined]
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        expected = enc.model((x - mean) / std).numpy()  # type: ignore[attr-defined]
    np.testing.assert_allclose(enc.encode(tiles), expected, rtol=1e-4, atol=1e-4)
    custom = get_encoder(
        f"timm:{TINY}",
        weights=weights,
        device="cpu",
        features=FeaturesSection(
            encoder=f"timm:{TINY}", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
        ),
    )
    assert not np.allclose(custom.encode(tiles), expected, atol=1e-3)


def test_tiling_must_give_the_encoders_resolution(tmp_path: Path) -> None:
    need("timm")
    weights = save_timm_weights(TINY, tmp_path / "w.safetensors")
    enc = get_encoder(f"timm:{TINY}", weights=weights, device="cpu")
    check_tiling_fits(enc, TilingSection())  # 224 px at 0.5 um/px
    with pytest.raises(
        ConfigError, match=r"expects 224 px at 0.5 um/px; set \[tiling\]"
    ):
        check_tiling_fits(enc, TilingSection(target_mpp=0.25))
    with pytest.raises(ConfigError, match=r"sees at 0.571 um/px"):
        check_tiling_fits(enc, TilingSection(tile_size=256))
    coarse = get_encoder(
        f"timm:{TINY}",
        weights=weights,
        device="cpu",
        features=FeaturesSection(encoder=f"timm:{TINY}", mpp=1.0),
    )
    check_tiling_fits(coarse, TilingSection(target_mpp=1.0))


def test_a_device_out_of_memory_halves_the_batch(tmp_path: Path) -> None:
    import torch

    from slidefed.client.prepare.encoders.runner import TorchEncoder

    class Picky(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if len(x) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return x.mean(dim=(2, 3))

    enc = TorchEncoder(
        Picky(),
        encoder_id="picky",
        dim=3,
        input_size=32,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        mpp=None,
        device="cpu",
        batch_size=8,
    )
    tiles = _tiles(5, size=32)
    out = enc.encode(tiles)
    assert enc.batch_size == 2
    np.testing.assert_allclose(out, tiles.mean(axis=(1, 2)) / 255.0, rtol=1e-5)


# -------------------------------------------------------------------------- hf
def test_hf_encoder_from_a_local_folder(tmp_path: Path) -> None:
    folder = save_hf_vit(tmp_path / "vit", hidden=32)
    enc = get_encoder("hf:vit", weights=folder, device="cpu")
    out = enc.encode(_tiles(3))
    assert out.shape == (3, 32)
    assert np.all(np.isfinite(out))
    assert enc.encoder_id == encoder_cache_id("hf:vit", folder)
    # Its preprocessor config (mean 0.5, std 0.5) is the one used.
    assert enc._mean.flatten().tolist() == [127.5, 127.5, 127.5]  # type: ignore[attr-defined]


def test_hf_folder_must_exist_and_hold_its_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"folder .* not found"):
        get_encoder("hf:vit", weights=tmp_path / "none")
    folder = save_hf_vit(tmp_path / "vit", hidden=32)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="cannot be loaded as 'hf:vit'"):
        get_encoder("hf:vit", weights=folder)
    other = save_hf_vit(tmp_path / "other", hidden=32)
    config = json.loads((other / "config.json").read_text())
    config["hidden_size"], config["intermediate_size"] = 64, 128
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ConfigError, match=r"does not fit its config.json|cannot be loaded"
    ):
        get_encoder("hf:other", weights=other)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no config.json"):
        get_encoder("hf:empty", weights=empty)


# ------------------------------------------------------------------ the site
def test_site_prepare_refuses_missing_weights_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slidefed.demo.synth import synth_site

    synth_site(tmp_path, patients=1, seed=0, width=256, height=256)
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "s"\n[features]\nencoder = "timm:vit_small_patch16_224"\n'
        'weights = "models/vit_small.safetensors"\n'
    )
    code = main(["site", "prepare", "--config", str(tmp_path / "site.toml")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "vit_small.safetensors: file not found" in err
    assert "point features.weights in site.toml" in err


def test_policy_allows_only_its_encoders(tmp_path: Path) -> None:
    from slidefed.client.prepare.pipeline import prepare_site

    (tmp_path / "site.toml").write_text(
        '[site]\nname = "s"\n[features]\nencoder = "timm:vit_small_patch16_224"\n'
        '[policy]\nallowed_encoders = ["hed"]\n'
    )
    (tmp_path / "manifest.csv").write_text("slide,patient_id,label,split\n")
    config = load_site_config(tmp_path / "site.toml")
    with pytest.raises(ConfigError, match=r"not in policy.allowed_encoders=\['hed'\]"):
        prepare_site(config)
