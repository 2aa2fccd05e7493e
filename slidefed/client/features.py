"""Frozen tile encoders and the on-disk feature cache.

The ``hed`` encoder needs no weights: colour deconvolution into haematoxylin,
eosin and DAB optical densities (Ruifrok and Johnston), then intensity,
nuclear-density and texture statistics per tile. It is fast on a CPU and is the
default for demos and CPU-only sites.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.common.errors import ConfigError

# Ruifrok & Johnston stain vectors (rows: H, E, DAB) in optical-density space.
_STAINS = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(_STAINS).astype(np.float32)


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


def rgb_to_hed(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Optical densities of the H, E and DAB stains, shape (..., 3)."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    return np.asarray(np.maximum(od @ _UNMIX, 0.0), dtype=np.float32)


class HedEncoder:
    """Stain and texture statistics per tile; no weights."""

    encoder_id = "hed-v1"
    dim = 24

    def encode(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Encode (n, h, w, 3) uint8 tiles into (n, 24) float32 features."""
        return np.stack([self._one(t) for t in tiles]).astype(np.float32)

    def _one(self, tile: NDArray[np.uint8]) -> NDArray[np.float64]:
        hed = rgb_to_hed(tile)
        h, e = hed[..., 0], hed[..., 1]
        grey = tile.astype(np.float32).mean(axis=2) / 255.0
        tissue = (255.0 - tile.astype(np.float32).min(axis=2)) > 40.0
        nuclei = h > 0.5
        labels, count = ndimage.label(nuclei)
        sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(1)
        gy, gx = np.gradient(grey)
        feats = [
            *np.percentile(h, [10, 50, 90]),
            float(h.mean()),
            float(h.std()),
            *np.percentile(e, [10, 50, 90]),
            float(e.mean()),
            float(e.std()),
            float((h > 0.3).mean()),
            float((e > 0.3).mean()),
            float(nuclei.mean()),
            float((h > 0.8).mean()),
            float(h[nuclei].mean()) if nuclei.any() else 0.0,
            float(count) / 100.0,
            float(sizes.mean()) / 100.0,
            float(tissue.mean()),
            float(np.hypot(gx, gy).mean()) * 10.0,
            float(ndimage.laplace(grey).var()) * 100.0,
            *(tile.reshape(-1, 3).mean(axis=0) / 255.0),
            float(grey.std()),
        ]
        return np.asarray(feats, dtype=np.float64)


def get_encoder(name: str) -> Encoder:
    """Return the encoder registered under ``name``.

    Raises
    ------
    ConfigError
        For an unknown name.
    """
    if name == "hed":
        return HedEncoder()
    raise ConfigError(
        f"features.encoder={name!r} is unknown; use 'hed' "
        "(timm encoders need the 'timm' extra and a local weights file)"
    )


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(content_hash: str, encoder_id: str, tiling: dict[str, object]) -> str:
    """Key of one slide's features: content, encoder and tiling parameters."""
    blob = json.dumps(
        {"slide": content_hash, "encoder": encoder_id, "tiling": tiling},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class FeatureCache:
    """Per-slide features on disk, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """File that holds the features of ``key``."""
        return self.root / f"{key}.npz"

    def has(self, key: str) -> bool:
        """Whether features for ``key`` are cached."""
        return self.path(key).is_file()

    def load(self, key: str) -> NDArray[np.float32]:
        """Features (n, dim) of ``key``."""
        with np.load(self.path(key)) as data:
            return np.asarray(data["features"], dtype=np.float32)

    def save(
        self, key: str, features: NDArray[np.float32], coords: NDArray[np.int64]
    ) -> None:
        """Store features and tile coordinates of ``key`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, features=features, coords=coords)
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


__all__ = [
    "Encoder",
    "FeatureCache",
    "HedEncoder",
    "cache_key",
    "file_sha256",
    "get_encoder",
    "rgb_to_hed",
]
