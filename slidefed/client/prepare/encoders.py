"""Frozen tile encoders, by name: ``hed`` and ``timm:<arch>``.

The ``hed`` encoder needs no weights: colour deconvolution into haematoxylin,
eosin and DAB optical densities (Ruifrok and Johnston), then intensity,
nuclear-density and texture statistics per tile. It is fast on a CPU and is the
default for demos and CPU-only sites.

``timm:<arch>`` encoders (ViT pathology encoders such as UNI) load a local
weights file into a timm architecture; they need the optional ``timm`` extra
and run batched, in bfloat16 on a GPU when one is present. Their id, part of
the feature cache key (:mod:`slidefed.client.prepare.cache`), carries the
sha256 of the weights file, so that new weights never reuse features of old ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.client.prepare.cache import file_sha256
from slidefed.common.errors import ConfigError

if TYPE_CHECKING:
    from slidefed.client.config import FeaturesSection

logger = logging.getLogger(__name__)


#: Default mean and std (ImageNet) for timm models whose config gives none.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

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
    #: Cheap on a CPU: each worker process encodes the tiles it reads.
    in_workers = True

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


def _load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a weights file (.safetensors, or a torch pickle of tensors)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        raise ConfigError(
            f"features.weights={path}: not a readable weights file ({exc}); "
            "use a .safetensors file or a torch state dict"
        ) from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ConfigError(
            f"features.weights={path}: holds a {type(obj).__name__}, not a state "
            "dict of tensors"
        )
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


class TimmEncoder:
    """A frozen timm model with local weights; batched, bf16 on a GPU.

    Parameters
    ----------
    arch : str
        timm architecture name, e.g. ``vit_large_patch16_224``.
    weights : Path, optional
        Local weights file (.safetensors or a torch state dict). Without it the
        model keeps random weights, which only benchmarks and tests want.
    device : str, optional
        ``cuda``, ``cpu``, ...; default: CUDA when available.
    batch_size : int
        Tiles per forward pass.
    seed : int
        Seed of the random weights when ``weights`` is None.

    Raises
    ------
    ConfigError
        If timm is not installed, the architecture is unknown, or the weights
        file is missing or does not fit the architecture.
    """

    #: The model runs once, in the main process, fed by reader processes.
    in_workers = False

    def __init__(
        self,
        arch: str,
        weights: Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        try:
            import timm  # type: ignore[import-untyped, import-not-found, unused-ignore]
            import torch
        except ImportError as exc:
            raise ConfigError(
                f"features.encoder='timm:{arch}' needs the 'timm' extra: "
                f"pip install 'slidefed[timm]' ({exc})"
            ) from exc
        if weights is not None and not Path(weights).is_file():
            raise ConfigError(
                f"features.weights={weights}: file not found; download the "
                "weights once and point features.weights at the local file"
            )
        torch.manual_seed(seed)
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        except RuntimeError as exc:
            raise ConfigError(
                f"features.encoder='timm:{arch}': unknown timm architecture ({exc})"
            ) from exc
        if weights is not None:
            state = _load_state_dict(Path(weights))
            missing, _unexpected = model.load_state_dict(state, strict=False)
            if missing:
                raise ConfigError(
                    f"features.weights={weights} does not fit timm:{arch}: "
                    f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})"
                )
            digest = file_sha256(Path(weights))[:16]
        else:
            digest = f"random{seed}"
        self.arch = arch
        self.encoder_id = f"timm:{arch}:{digest}"
        self.device = torch.device(
            device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.batch_size = batch_size
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.dim = int(getattr(model, "num_features", 0))
        cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        mean = cfg.get("mean") or _IMAGENET_MEAN
        std = cfg.get("std") or _IMAGENET_STD
        size = cfg.get("input_size") or (3, 224, 224)
        self.input_size = (int(size[1]), int(size[2]))
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.bf16 = self.device.type == "cuda"

    def encode(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Encode (n, h, w, 3) uint8 tiles into (n, dim) float32 features."""
        import torch
        import torch.nn.functional as F

        if len(tiles) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts: list[NDArray[np.float32]] = []
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            for start in range(0, len(tiles), self.batch_size):
                chunk = torch.from_numpy(
                    np.ascontiguousarray(tiles[start : start + self.batch_size])
                )
                if cuda:
                    chunk = chunk.pin_memory()
                x = chunk.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                x = (x.float() - self._mean) / self._std
                if tuple(x.shape[-2:]) != self.input_size:
                    x = F.interpolate(
                        x, size=self.input_size, mode="bilinear", antialias=True
                    )
                with torch.autocast(
                    device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda
                ):
                    feats = self.model(x)
                parts.append(feats.float().cpu().numpy())
        return np.concatenate(parts).astype(np.float32)


def encoder_cache_id(name: str, weights: Path | None = None) -> str:
    """The encoder id that keys the feature cache, without loading a model.

    ``hed`` gives ``hed-v1``; ``timm:<arch>`` gives ``timm:<arch>:<first 16 hex
    digits of the weights file's sha256>``.

    Raises
    ------
    ConfigError
        For an unknown name, or a timm encoder without a readable weights file.
    """
    if name == "hed":
        return HedEncoder.encoder_id
    if name.startswith("timm:") and len(name) > 5:
        if weights is None:
            raise ConfigError(
                f"features.encoder={name!r} needs features.weights: the path of a "
                "local weights file (.safetensors or a torch state dict)"
            )
        if not Path(weights).is_file():
            raise ConfigError(
                f"features.weights={weights}: file not found; download the "
                "weights once and point features.weights at the local file"
            )
        return f"{name}:{file_sha256(Path(weights))[:16]}"
    raise ConfigError(
        f"features.encoder={name!r} is unknown; use 'hed', or 'timm:<arch>' "
        "(timm encoders need the 'timm' extra and a local weights file)"
    )


def get_encoder(
    name: str,
    *,
    weights: Path | None = None,
    device: str | None = None,
    batch_size: int = 64,
) -> Encoder:
    """Return the encoder registered under ``name``.

    Parameters
    ----------
    name : str
        ``hed`` or ``timm:<arch>``.
    weights : Path, optional
        Local weights file; required for ``timm:<arch>``.
    device : str, optional
        Device of a timm encoder (default: CUDA when available).
    batch_size : int
        Tiles per forward pass of a timm encoder.

    Raises
    ------
    ConfigError
        For an unknown name, a missing weights file, or timm not installed.
    """
    if name == "hed":
        return HedEncoder()
    if name.startswith("timm:") and len(name) > 5:
        encoder_cache_id(name, weights)  # the same checks, before importing timm
        return TimmEncoder(name[5:], weights, device=device, batch_size=batch_size)
    raise ConfigError(
        f"features.encoder={name!r} is unknown; use 'hed', or 'timm:<arch>' "
        "(timm encoders need the 'timm' extra and a local weights file)"
    )


def encoder_for(features: FeaturesSection, base_dir: Path | None = None) -> Encoder:
    """The encoder of a site's ``[features]`` section (weights resolved)."""
    weights = features.weights
    if weights is not None and base_dir is not None and not weights.is_absolute():
        weights = base_dir / weights
    return get_encoder(
        features.encoder, weights=weights, batch_size=features.batch_size
    )


__all__ = [
    "Encoder",
    "HedEncoder",
    "TimmEncoder",
    "encoder_cache_id",
    "encoder_for",
    "get_encoder",
    "rgb_to_hed",
]
