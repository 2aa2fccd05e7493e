"""``hf:<name>``: a transformers vision model (ViT, DINOv2, ...) in a local folder.

The folder is what ``save_pretrained`` writes (``config.json`` and
``model.safetensors``), named by ``[features] weights`` (or, without it, the
folder ``<name>`` beside site.toml). It is loaded with ``local_files_only``: no
download is ever tried. The feature of a tile is the class token of the last
hidden state (as Phikon and the DINOv2 family are used). Input size, mean and
std come from the folder's ``preprocessor_config.json`` when there is one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidefed.client.prepare.encoders.runner import TorchEncoder
from slidefed.client.prepare.encoders.timm_encoder import (
    DEFAULT_MPP,
    IMAGENET_MEAN,
    IMAGENET_STD,
    triple,
)
from slidefed.client.prepare.encoders.weights import missing_weights, weights_sha256
from slidefed.common.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from slidefed.client.config import FeaturesSection

logger = logging.getLogger(__name__)


def _cls_token(model: Any, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x)
    token: torch.Tensor = out.last_hidden_state[:, 0]
    return token


def _preprocessing(folder: Path) -> dict[str, Any]:
    """Mean, std and input side from ``preprocessor_config.json``, if present."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"features.weights={folder}: preprocessor_config.json is unreadable "
            f"({exc}); save the model again with save_pretrained"
        ) from exc
    out: dict[str, Any] = {}
    if cfg.get("image_mean") and cfg.get("image_std"):
        out["mean"], out["std"] = cfg["image_mean"], cfg["image_std"]
    size = cfg.get("crop_size") or cfg.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if isinstance(size, int):
        out["input_size"] = size
    return out


def _load(name: str, folder: Path) -> Any:
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise ConfigError(
            f"features.encoder={name!r} needs the 'encoders' extra: "
            f"pip install 'slidefed[site,encoders]' ({exc})"
        ) from exc
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"features.weights={folder}: no config.json; point features.weights "
            "at the folder that save_pretrained wrote (config.json and "
            "model.safetensors)"
        )
    from transformers.utils import logging as hf_logging

    # Its load report and progress bars would go to the operator's terminal;
    # what matters of them is checked below.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call, unused-ignore]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call, unused-ignore]
    try:
        model, info = AutoModel.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ConfigError(
            f"features.weights={folder} cannot be loaded as {name!r} ({first}); "
            "use a folder saved with save_pretrained, weights included"
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    wrong = info.get("mismatched_keys", [])
    if missing or wrong:
        bad = [*missing, *(str(w[0]) for w in wrong)]
        raise ConfigError(
            f"features.weights={folder} does not fit its config.json: "
            f"{len(bad)} tensors missing or of another shape (e.g. "
            f"{', '.join(bad[:3])}); download the model again"
        )
    return model


def hf_encoder(
    name: str, folder: Path | None, features: FeaturesSection, *, device: str | None
) -> TorchEncoder:
    """Build an ``hf:<name>`` encoder from a local folder.

    Raises
    ------
    ConfigError
        If transformers is missing, or the folder is missing or holds no
        loadable model of its config.
    """
    if folder is None or not Path(folder).is_dir():
        raise missing_weights(name, folder, folder=True)
    folder = Path(folder)
    model = _load(name, folder)
    pre = _preprocessing(folder)
    image_size = getattr(model.config, "image_size", 224)
    return TorchEncoder(
        model,
        encoder_id=f"{name}:{weights_sha256(folder)[:16]}",
        dim=int(model.config.hidden_size),
        input_size=features.input_size or int(pre.get("input_size", image_size)),
        mean=triple(features.mean or pre.get("mean") or IMAGENET_MEAN),
        std=triple(features.std or pre.get("std") or IMAGENET_STD),
        mpp=features.mpp or DEFAULT_MPP,
        device=device or features.device,
        batch_size=features.batch_size,
        compile=features.compile,
        forward=_cls_token,
    )


__all__ = ["hf_encoder"]
