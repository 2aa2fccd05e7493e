"""Tile-labelled sites: a folder of class folders, or a manifest of tiles.

Each readable tile of the expected size with a known label is encoded with the
site's encoder (cached per file content) and grouped into samples: one sample per
patient when the manifest gives patient ids (privacy unit ``patient``), otherwise
one sample per tile (privacy unit ``tile``). Everything skipped is named.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig, TilesSection
from slidefed.client.prepare.cache import FeatureCache, cache_key, file_sha256
from slidefed.client.prepare.encoders import get_encoder
from slidefed.common.errors import ConfigError, ManifestError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


class TileRecord(BaseModel):
    """One tile named by the site's data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    label: str
    patient_id: str | None = None
    split: Literal["train", "test"]


class TileSample(BaseModel):
    """One training sample: a patient's tiles, or a single tile."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    sample_id: str
    split: Literal["train", "test"]
    features: NDArray[np.float32]
    labels: NDArray[np.int64]


class TileDataset(BaseModel):
    """The usable samples of a site and what was skipped."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    unit: Literal["patient", "tile"]
    labels: list[str]
    samples: list[TileSample]
    skipped: list[tuple[str, str]]
    fingerprint: str


def _split_of(name: str, test_fraction: float) -> Literal["train", "test"]:
    digest = hashlib.sha256(name.encode()).digest()
    return (
        "test"
        if int.from_bytes(digest[:4], "little") / 2**32 < test_fraction
        else "train"
    )


def scan_folder(
    root: Path, tiles: TilesSection
) -> tuple[list[TileRecord], list[tuple[str, str]]]:
    """Tiles of a folder of class folders; unknown classes are skipped by name."""
    if not root.is_dir():
        raise ConfigError(
            f"tiles.path {root} is not a folder; point it at the class folders"
        )
    records: list[TileRecord] = []
    skipped: list[tuple[str, str]] = []
    known = set(tiles.labels)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if known and folder.name not in known:
            skipped.extend((str(p), f"unknown label {folder.name!r}") for p in files)
            if not files:
                skipped.append((str(folder), f"unknown label {folder.name!r}"))
            continue
        if not files:
            skipped.append((str(folder), "empty class folder"))
            continue
        records.extend(
            TileRecord(
                path=p,
                label=folder.name,
                split=_split_of(f"{folder.name}/{p.name}", tiles.test_fraction),
            )
            for p in files
        )
    for label in sorted(known - {r.label for r in records}):
        skipped.append((str(root / label), "empty class: no tile with this label"))
    return records, skipped


def scan_manifest(
    path: Path, tiles: TilesSection
) -> tuple[list[TileRecord], list[tuple[str, str]]]:
    """Tiles of a manifest CSV (tile, label, optional patient_id, optional split)."""
    if not path.is_file():
        raise ManifestError(
            f"{path}: tile manifest not found; set tiles.path in site.toml"
        )
    rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    if rows and not {"tile", "label"} <= set(rows[0]):
        raise ManifestError(f"{path}: the header needs the columns tile and label")
    records: list[TileRecord] = []
    skipped: list[tuple[str, str]] = []
    known = set(tiles.labels)
    for line, row in enumerate(rows, start=2):
        tile = (row.get("tile") or "").strip()
        label = (row.get("label") or "").strip()
        if not tile or not label:
            skipped.append((f"{path}:{line}", "tile or label missing"))
            continue
        if known and label not in known:
            skipped.append((tile, f"unknown label {label!r}"))
            continue
        split = (row.get("split") or "").strip() or _split_of(tile, tiles.test_fraction)
        if split not in ("train", "test"):
            skipped.append((f"{path}:{line}", f"split {split!r} is not train or test"))
            continue
        records.append(
            TileRecord(
                path=(path.parent / tile).resolve(),
                label=label,
                patient_id=(row.get("patient_id") or "").strip() or None,
                split=split,
            )
        )
    return records, skipped


def _read_tile(path: Path, size: int) -> NDArray[np.uint8] | str:
    """The tile as (size, size, 3) uint8, or why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.size != (size, size):
                return f"size {img.size[0]}x{img.size[1]}, expected {size}x{size}"
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"unreadable image ({type(exc).__name__})"


def load_tile_dataset(config: SiteConfig, labels: list[str]) -> TileDataset:
    """Encode (or load from the cache) every usable tile of the site.

    Raises
    ------
    ConfigError
        If the site has no ``[tiles]`` section, or no usable tile remains.
    """
    tiles = config.tiles
    if tiles is None:
        raise ConfigError(
            "this site has no [tiles] section in site.toml; it holds slides"
        )
    root = config.resolve(tiles.path)
    records, skipped = (
        scan_folder(root, tiles)
        if tiles.source == "folder"
        else scan_manifest(root, tiles)
    )
    index = {name: i for i, name in enumerate(labels)}
    usable, fingerprint = _encode_records(config, tiles, records, index, skipped)
    if not usable:
        raise ConfigError(f"{root}: no usable tile; fix the files listed as skipped")
    for name, reason in skipped:
        logger.warning(
            "tile skipped: %s (%s)",
            hashlib.sha256(name.encode()).hexdigest()[:12],
            reason,
        )
    with_patients = all(rec.patient_id for rec, _ in usable)
    return TileDataset(
        unit="patient" if with_patients else "tile",
        labels=labels,
        samples=_group_samples(usable, index, with_patients=with_patients),
        skipped=skipped,
        fingerprint=fingerprint,
    )


def _encode_records(
    config: SiteConfig,
    tiles: TilesSection,
    records: list[TileRecord],
    index: dict[str, int],
    skipped: list[tuple[str, str]],
) -> tuple[list[tuple[TileRecord, NDArray[np.float32]]], str]:
    """Features of each usable tile (cached per content), and their fingerprint.

    Tiles that cannot be used are appended to ``skipped`` with the reason.
    """
    encoder = get_encoder(config.features.encoder)
    cache = FeatureCache(config.cache_dir / "tiles")
    usable: list[tuple[TileRecord, NDArray[np.float32]]] = []
    digest = hashlib.sha256()
    for rec in records:
        if rec.label not in index:
            skipped.append(
                (str(rec.path), f"label {rec.label!r} is not in the run's labels")
            )
            continue
        if not rec.path.is_file():
            skipped.append((str(rec.path), "file not found"))
            continue
        content = file_sha256(rec.path)
        key = cache_key(content, encoder.encoder_id, {"tile_size": tiles.tile_size})
        if cache.has(key):
            feats = cache.load(key)
        else:
            tile = _read_tile(rec.path, tiles.tile_size)
            if isinstance(tile, str):
                skipped.append((str(rec.path), tile))
                continue
            feats = encoder.encode(tile[None])
            cache.save(key, feats, np.zeros((1, 2), np.int64))
        digest.update(f"{content}:{rec.label}:{rec.split}:{rec.patient_id}".encode())
        usable.append((rec, feats))
    return usable, digest.hexdigest()


def _group_samples(
    usable: list[tuple[TileRecord, NDArray[np.float32]]],
    index: dict[str, int],
    *,
    with_patients: bool,
) -> list[TileSample]:
    """One sample per patient (and split) when all tiles name one, else per tile."""
    groups: dict[tuple[str, str], list[tuple[TileRecord, NDArray[np.float32]]]] = (
        defaultdict(list)
    )
    for rec, feats in usable:
        sample_id = (
            rec.patient_id if with_patients and rec.patient_id else str(rec.path)
        )
        groups[(sample_id, rec.split)].append((rec, feats))
    return [
        TileSample(
            sample_id=hashlib.sha256(sid.encode()).hexdigest()[:16],
            split=split,
            features=np.concatenate([f for _, f in items]).astype(np.float32),
            labels=np.asarray([index[r.label] for r, _ in items], dtype=np.int64),
        )
        for (sid, split), items in sorted(groups.items())
    ]


__all__ = [
    "TileDataset",
    "TileRecord",
    "TileSample",
    "load_tile_dataset",
    "scan_folder",
    "scan_manifest",
]
