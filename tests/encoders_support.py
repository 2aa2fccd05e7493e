"""Optional encoder packages: skip without them, unless CI requires them.

CI sets ``SLIDEFED_REQUIRE_ENCODERS=1``: there a missing timm or transformers
fails the tests that need it instead of skipping them.
"""

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest


def need(module: str) -> ModuleType:
    """Import ``module``; skip the test without it (fail when CI requires it)."""
    if os.environ.get("SLIDEFED_REQUIRE_ENCODERS") == "1":
        return importlib.import_module(module)
    found: ModuleType = pytest.importorskip(module)
    return found


def save_timm_weights(arch: str, path: Path, seed: int = 0) -> Path:
    """Random-initialised weights of a timm architecture, as safetensors."""
    need("timm")
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def save_hf_vit(folder: Path, *, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny random-initialised transformers ViT saved with save_pretrained."""
    need("transformers")
    import json

    import torch
    from transformers import ViTConfig, ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call, unused-ignore]

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=224,
        patch_size=32,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "size": {"height": 224, "width": 224},
            }
        )
    )
    return folder
