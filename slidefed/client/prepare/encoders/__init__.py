"""Frozen tile encoders, by name: ``hed``, ``timm:<arch>`` and ``hf:<name>``.

* ``hed`` (:mod:`~slidefed.client.prepare.encoders.hed`): stain and texture
  statistics, no weights, fast on a CPU; the default.
* ``timm:<arch>`` (:mod:`~slidefed.client.prepare.encoders.timm_encoder`): a
  timm architecture with a local weights file (UNI, Virchow, H-optimus, ...).
* ``hf:<name>`` (:mod:`~slidefed.client.prepare.encoders.hf_encoder`): a
  transformers vision model saved in a local folder (Phikon, DINOv2, ...).

Weights are read only from the site's disk (``[features] weights``). The
encoder id, part of the feature cache key (:mod:`slidefed.client.prepare.cache`),
carries the sha256 of the weights, so that new weights never reuse features of
old ones. Network encoders run in the main process, batched, in bfloat16 on a
GPU (:mod:`~slidefed.client.prepare.encoders.runner`), fed by reader processes.
torch, timm and transformers load only when such an encoder is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from slidefed.client.prepare.encoders.hed import HedEncoder, rgb_to_hed
from slidefed.client.prepare.encoders.weights import missing_weights, weights_sha256
from slidefed.common.encoder_names import check_encoder_name
from slidefed.common.errors import ConfigError

if TYPE_CHECKING:
    from slidefed.client.config import FeaturesSection, SiteConfig, TilingSection
    from slidefed.client.prepare.encoders.runner import TorchEncoder

#: How far (relative) a tile's resolution may be from the encoder's.
MPP_TOLERANCE = 0.1


class Encoder(Protocol):
    """A frozen tile encoder."""

    @property
    def encoder_id(self) -> str:
        """Stable id; part of the feature cache key."""

    @property
    def dim(self) -> int:
        """Length of one feature vector."""

    def encode(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Encode (n, h, w, 3) uint8 tiles into (n, dim) float32 features."""


def _unknown(name: str) -> ConfigError:
    return ConfigError(
        f"features.encoder={name!r} is unknown; use 'hed', 'timm:<arch>' (a local "
        "weights file) or 'hf:<name>' (a local transformers folder); these need "
        "the 'encoders' extra"
    )


def _kind(name: str) -> str:
    """``hed``, ``timm`` or ``hf``; refuses a malformed name."""
    try:
        check_encoder_name(name)
    except ValueError:
        raise _unknown(name) from None
    return name.split(":", 1)[0]


def default_weights(name: str, weights: Path | None) -> Path | None:
    """The weights of ``name``: ``weights``, or for ``hf:<name>`` the folder <name>."""
    if weights is None and name.startswith("hf:"):
        return Path(name[3:])
    return weights


def encoder_cache_id(name: str, weights: Path | None = None) -> str:
    """The encoder id that keys the feature cache, without loading a model.

    ``hed`` gives ``hed-v1``; ``timm:<arch>`` and ``hf:<name>`` give the name,
    a colon and the first 16 hex digits of the weights' sha256.

    Raises
    ------
    ConfigError
        For an unknown name, or weights that are not given or not on disk.
    """
    kind = _kind(name)
    if kind == "hed":
        return HedEncoder.encoder_id
    weights = default_weights(name, weights)
    folder = kind == "hf"
    if weights is None or not (weights.is_dir() if folder else weights.is_file()):
        raise missing_weights(name, weights, folder=folder)
    return f"{name}:{weights_sha256(weights)[:16]}"


def get_encoder(
    name: str,
    *,
    weights: Path | None = None,
    device: str | None = None,
    batch_size: int = 64,
    features: FeaturesSection | None = None,
) -> Encoder:
    """Return the encoder registered under ``name``.

    Parameters
    ----------
    name : str
        ``hed``, ``timm:<arch>`` or ``hf:<name>``.
    weights : Path, optional
        Local weights: a file for timm, a folder for hf (required for both).
    device : str, optional
        Device of a network encoder (default: ``features.device``, else CUDA
        when available).
    batch_size : int
        Tiles per forward pass, when ``features`` is not given.
    features : FeaturesSection, optional
        The site's ``[features]`` (input size, mean, std, mpp, model_args).

    Raises
    ------
    ConfigError
        For an unknown name, missing or unfitting weights, or the 'encoders'
        extra not installed.
    """
    from slidefed.client.config import FeaturesSection

    kind = _kind(name)
    if kind == "hed":
        return HedEncoder()
    encoder_cache_id(name, weights)  # the same checks, before importing torch
    feats = features or FeaturesSection(encoder=name, batch_size=batch_size)
    weights = default_weights(name, weights)
    if kind == "timm":
        from slidefed.client.prepare.encoders.timm_encoder import timm_encoder

        return timm_encoder(name[5:], weights, feats, device=device)
    from slidefed.client.prepare.encoders.hf_encoder import hf_encoder

    return hf_encoder(name, weights, feats, device=device)


def TimmEncoder(  # noqa: N802 (the class this function replaced)
    arch: str,
    weights: Path | None = None,
    *,
    device: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    compile: bool = False,
) -> TorchEncoder:
    """A ``timm:<arch>`` encoder; random (seeded) weights when ``weights`` is None."""
    from slidefed.client.config import FeaturesSection
    from slidefed.client.prepare.encoders.timm_encoder import timm_encoder

    feats = FeaturesSection(
        encoder=f"timm:{arch}", batch_size=batch_size, compile=compile
    )
    return timm_encoder(arch, weights, feats, device=device, seed=seed)


def check_tiling_fits(encoder: Encoder, tiling: TilingSection) -> None:
    """Refuse a tiling whose tiles are not at the encoder's resolution.

    A tile of ``tile_size`` px at ``target_mpp``, resized to the encoder's input
    size, must be within 10 % of the resolution the encoder was trained at.

    Raises
    ------
    ConfigError
        Naming both resolutions and the [tiling] that fits.
    """
    mpp = getattr(encoder, "mpp", None)
    size = getattr(encoder, "input_size", None)
    if mpp is None or size is None:
        return
    seen = tiling.target_mpp * tiling.tile_size / size
    if abs(seen / mpp - 1.0) > MPP_TOLERANCE:
        raise ConfigError(
            f"[tiling] gives tiles of {tiling.tile_size} px at {tiling.target_mpp} "
            f"um/px, which {encoder.encoder_id.rsplit(':', 1)[0]} sees at "
            f"{seen:.3g} um/px, but it expects {size} px at {mpp} um/px; set "
            f"[tiling] target_mpp = {mpp} and tile_size = {size} (or [features] "
            "mpp, if the model was trained at another resolution)"
        )


def encoder_for(features: FeaturesSection, base_dir: Path | None = None) -> Encoder:
    """The encoder of a site's ``[features]`` section (weights resolved)."""
    weights = default_weights(features.encoder, features.weights)
    if weights is not None and base_dir is not None and not weights.is_absolute():
        weights = base_dir / weights
    return get_encoder(features.encoder, weights=weights, features=features)


#: ``submit(tiles)`` of an encoder that can work ahead, else None.
def submitter(
    encoder: Encoder,
) -> Callable[[NDArray[np.uint8]], Callable[[], NDArray[np.float32]]] | None:
    """The encoder's ``submit`` (start now, result later), if it has one."""
    fn = getattr(encoder, "submit", None)
    return fn if callable(fn) else None


def check_encoder_allowed(config: SiteConfig) -> None:
    """Refuse a features.encoder that the site's own policy does not allow.

    Raises
    ------
    ConfigError
        Naming the encoder and policy.allowed_encoders.
    """
    allowed = config.policy.allowed_encoders
    if allowed and config.features.encoder not in allowed:
        raise ConfigError(
            f"features.encoder={config.features.encoder!r} is not in "
            f"policy.allowed_encoders={list(allowed)}; add it there or change "
            "features.encoder in site.toml"
        )


__all__ = [
    "MPP_TOLERANCE",
    "Encoder",
    "HedEncoder",
    "TimmEncoder",
    "check_encoder_allowed",
    "check_tiling_fits",
    "default_weights",
    "encoder_cache_id",
    "encoder_for",
    "get_encoder",
    "rgb_to_hed",
    "submitter",
]
