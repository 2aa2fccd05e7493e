"""Local weights: reading a state dict, and the hash that keys the feature cache.

Weights are only ever read from the site's disk: ``[features] weights`` in
site.toml names a file (``timm:<arch>``) or a folder (``hf:<name>``). Their
sha256 is part of the encoder id, so new weights never reuse features of old
ones; it is remembered per process while the files' sizes and modification
times are unchanged, so that a node checking its preparation each round does
not read gigabytes again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slidefed.client.prepare.cache import slide_sha256, slide_signature
from slidefed.common.errors import ConfigError

#: (resolved path, signature) -> sha256, for this process.
_DIGESTS: dict[tuple[str, str], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, or of a folder's files (name and hash each)."""
    path = Path(path)
    key = (str(path.resolve()), slide_signature(path))
    if key not in _DIGESTS:
        _DIGESTS[key] = slide_sha256(path)
    return _DIGESTS[key]


def missing_weights(name: str, weights: Path | None, *, folder: bool) -> ConfigError:
    """The refusal for weights that are not given or not on disk."""
    what = "folder (a saved transformers model)" if folder else "file"
    if weights is None:
        return ConfigError(
            f"features.encoder={name!r} needs features.weights: the path of a local "
            f"weights {what}; download it once and set weights in site.toml"
        )
    return ConfigError(
        f"features.weights={weights}: {what} not found; download the weights "
        "once and point features.weights in site.toml at them"
    )


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a weights file (.safetensors, or a torch pickle of tensors).

    Raises
    ------
    ConfigError
        If the file is not a readable state dict.
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(
                f"features.weights={path}: not a readable safetensors file "
                f"({exc}); download it again"
            ) from exc
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


__all__ = ["load_state_dict", "missing_weights", "weights_sha256"]
