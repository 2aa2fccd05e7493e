"""``timm:<arch>``: a timm architecture with a local weights file.

The model is built with ``pretrained=False`` (nothing is downloaded) and
``num_classes=0`` (its pooled embedding), plus the ``[features] model_args``
that some pathology encoders need (UNI: ``init_values = 1e-5``). Input size,
mean and std come from the architecture's timm config unless ``[features]``
overrides them; the resolution (``mpp``) is 0.5 um/px unless ``[features] mpp``
says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidefed.client.prepare.encoders.runner import TorchEncoder
from slidefed.client.prepare.encoders.weights import (
    load_state_dict,
    missing_weights,
    weights_sha256,
)
from slidefed.common.errors import ConfigError

if TYPE_CHECKING:
    from slidefed.client.config import FeaturesSection

#: Mean and std (ImageNet) for models whose config gives none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The resolution of an encoder whose site.toml names none (20x scans).
DEFAULT_MPP = 0.5


def triple(values: Any) -> tuple[float, float, float]:
    """Three floats (a mean or std per RGB channel)."""
    r, g, b = (float(v) for v in values)
    return (r, g, b)


def _layer_args(args: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` with the layer names timm takes as classes resolved."""
    import torch
    from timm.layers import (  # type: ignore[attr-defined, unused-ignore]
        SwiGLUPacked,
    )

    layers: dict[str, Any] = {
        "SwiGLUPacked": SwiGLUPacked,
        "SiLU": torch.nn.SiLU,
        "GELU": torch.nn.GELU,
    }
    out = dict(args)
    for key in ("mlp_layer", "act_layer"):
        if key in out:
            name = str(out[key])
            if name not in layers:
                raise ConfigError(
                    f"features.model_args.{key}={name!r} is not known; use one of "
                    f"{sorted(layers)}"
                )
            out[key] = layers[name]
    return out


def _create(arch: str, args: dict[str, Any]) -> Any:
    try:
        import timm  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"features.encoder='timm:{arch}' needs the 'encoders' extra: "
            f"pip install 'slidefed[site,encoders]' ({exc})"
        ) from exc
    if not timm.is_model(arch):
        raise ConfigError(
            f"features.encoder='timm:{arch}': not a timm architecture; see "
            "docs/encoders.md for the names of common pathology encoders"
        )
    try:
        return timm.create_model(
            arch, pretrained=False, num_classes=0, **_layer_args(args)
        )
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"features.encoder='timm:{arch}' with model_args {args}: {exc}; fix "
            "[features] model_args"
        ) from exc


def _load_weights(model: Any, arch: str, weights: Path) -> None:
    """Load ``weights`` into ``model``; refuse a file that does not fit."""
    state = load_state_dict(weights)
    try:
        missing, _unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(
            f"features.weights={weights} does not fit timm:{arch} ({first}); use "
            "the weights made for this architecture, or fix features.encoder "
            "and [features] model_args"
        ) from exc
    if missing:
        raise ConfigError(
            f"features.weights={weights} does not fit timm:{arch}: "
            f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])}); use "
            "the weights made for this architecture"
        )


def timm_encoder(
    arch: str,
    weights: Path | None,
    features: FeaturesSection,
    *,
    device: str | None = None,
    seed: int = 0,
) -> TorchEncoder:
    """Build a ``timm:<arch>`` encoder.

    ``weights`` None keeps random weights (seeded): only benchmarks want that.

    Raises
    ------
    ConfigError
        If timm is missing, the architecture unknown, or the weights file
        missing or not fitting the architecture.
    """
    import torch

    if weights is not None and not Path(weights).is_file():
        raise missing_weights(f"timm:{arch}", weights, folder=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _create(arch, dict(features.model_args))
    if weights is not None:
        _load_weights(model, arch, Path(weights))
        digest = weights_sha256(Path(weights))[:16]
    else:
        digest = f"random{seed}"
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    size = cfg.get("input_size") or (3, 224, 224)
    return TorchEncoder(
        model,
        encoder_id=f"timm:{arch}:{digest}",
        dim=int(getattr(model, "num_features", 0)),
        input_size=features.input_size or int(size[-1]),
        mean=triple(features.mean or cfg.get("mean") or IMAGENET_MEAN),
        std=triple(features.std or cfg.get("std") or IMAGENET_STD),
        mpp=features.mpp or DEFAULT_MPP,
        device=device or features.device,
        batch_size=features.batch_size,
        compile=features.compile,
    )


__all__ = ["DEFAULT_MPP", "IMAGENET_MEAN", "IMAGENET_STD", "timm_encoder", "triple"]
