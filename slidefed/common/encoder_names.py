"""Encoder names that a run config and a site config share, and their feature lengths.

An encoder name is ``hed`` (weight-free stain statistics), ``timm:<arch>`` (a
timm architecture with a local weights file) or ``hf:<name>`` (a transformers
vision model saved in a local folder). The coordinator builds the model from
the feature length alone, so that it needs neither timm nor the weights: the
length comes from :data:`KNOWN_DIMS` or from the run config's ``feature-dim``.
"""

from __future__ import annotations

import re

#: ``hed``, ``timm:<arch>`` or ``hf:<name>`` (a name, or a folder name).
ENCODER_PATTERN = (
    r"^(hed|timm:[A-Za-z0-9][A-Za-z0-9_.\-]*|hf:[A-Za-z0-9_.][A-Za-z0-9_.\-/]*)$"
)

#: Feature length of encoders whose length is fixed by their name.
KNOWN_DIMS: dict[str, int] = {
    "hed": 24,
    "timm:vit_tiny_patch16_224": 192,
    "timm:vit_small_patch16_224": 384,
    "timm:vit_base_patch16_224": 768,
    "timm:vit_large_patch16_224": 1024,
    "timm:vit_huge_patch14_224": 1280,
    "timm:vit_giant_patch14_dinov2": 1536,
    "timm:vit_giant_patch14_reg4_dinov2": 1536,
    "timm:vit_base_patch16_224.dino": 768,
}


def check_encoder_name(name: str) -> str:
    """Return ``name`` if it is a well-formed encoder name.

    Raises
    ------
    ValueError
        Naming the three forms.
    """
    if not re.match(ENCODER_PATTERN, name) or ".." in name:
        msg = (
            f"encoder={name!r} is not an encoder name; use 'hed', "
            "'timm:<arch>' or 'hf:<name>'"
        )
        raise ValueError(msg)
    return name


def known_dim(name: str) -> int | None:
    """The feature length fixed by an encoder's name, or None."""
    return KNOWN_DIMS.get(name)


__all__ = ["ENCODER_PATTERN", "KNOWN_DIMS", "check_encoder_name", "known_dim"]
