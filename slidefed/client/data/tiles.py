"""Tile-labelled sites: a folder of class folders, or a manifest of tiles.

Every tile belongs to a privacy unit, which is also its sample (the MIL bag): its
patient when the data name patients (``patient_id``), else the group it came from
(``group`` or ``source_group``: one source image and its rotated or flipped
copies). A site with any tile lacking its patient or group is refused, unless its
policy says ``unit = "tile"``, which makes every tile its own sample. The train/test
split never cuts a unit: a split given per tile must agree within the unit, and
without one the split is drawn per unit from a hash of its id. Each readable tile
of the expected size with a known label is encoded with the site's encoder (cached
per file content). Everything skipped is named.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import SiteConfig, TilesSection
from slidefed.client.data.tile_records import (
    Split,
    TileDataset,
    TileRecord,
    TileSample,
    TileUnit,
    UnitOf,
)
from slidefed.client.data.tile_skips import log_skips_once
from slidefed.client.prepare.cache import FeatureCache, cache_key, file_sha256
from slidefed.client.prepare.encoders import get_encoder
from slidefed.common.errors import ConfigError, ManifestError, SlidePathError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
GROUP_COLUMNS = ("group", "source_group")
TILE_COLUMNS = ("path", "tile")


def _split_of(name: str, test_fraction: float) -> Split:
    digest = hashlib.sha256(name.encode()).digest()
    return (
        "test"
        if int.from_bytes(digest[:4], "little") / 2**32 < test_fraction
        else "train"
    )


def _cell(row: dict[str, str | None], *columns: str) -> str | None:
    for column in columns:
        value = (row.get(column) or "").strip()
        if value:
            return value
    return None


def _given_split(
    row: dict[str, str | None], where: str, skipped: list[tuple[str, str]]
) -> tuple[bool, Split | None]:
    """The row's split (``None``: not given); False when the value is invalid."""
    split = _cell(row, "split")
    if split is None:
        return True, None
    if split not in ("train", "test"):
        skipped.append((where, f"split {split!r} is not train or test"))
        return False, None
    return True, "train" if split == "train" else "test"


def _norm(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).as_posix().removeprefix("./")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str | None]]]:
    reader = csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines())
    rows: list[dict[str, str | None]] = list(reader)
    return list(reader.fieldnames or []), rows


def read_groups(path: Path) -> dict[str, TileRecord]:
    """The units a groups file gives, by tile path (relative to the tiles folder).

    The returned records carry the patient or group, the split and ``where``
    (``file:line``); their path and label are filled in by the folder scan.

    Raises
    ------
    ManifestError
        If the file is missing, lacks its columns, or names a tile twice with
        different units or splits.
    """
    if not path.is_file():
        raise ManifestError(
            f"{path}: groups file not found; set tiles.groups in site.toml "
            "(relative to tiles.path)"
        )
    columns, rows = _read_csv(path)
    if not any(c in columns for c in TILE_COLUMNS) or not any(
        c in columns for c in ("patient_id", *GROUP_COLUMNS)
    ):
        raise ManifestError(
            f"{path}: the header needs a tile column (path or tile) and a "
            "patient_id, group or source_group column"
        )
    out: dict[str, TileRecord] = {}
    ignored: list[tuple[str, str]] = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        tile = _cell(row, *TILE_COLUMNS)
        if tile is None:
            continue
        ok, split = _given_split(row, where, ignored)
        if not ok:
            raise ManifestError(f"{where}: {ignored[-1][1]}; write train or test")
        rec = TileRecord(
            path=Path(tile),
            name=_norm(tile),
            label="",
            patient_id=_cell(row, "patient_id"),
            group=_cell(row, *GROUP_COLUMNS),
            split=split,
            where=where,
        )
        prev = out.setdefault(rec.name, rec)
        if (prev.patient_id, prev.group, prev.split) != (
            rec.patient_id,
            rec.group,
            rec.split,
        ):
            raise ManifestError(
                f"{where}: tile {rec.name} is listed before at {prev.where} with "
                "another patient, group or split; keep one row per tile"
            )
    return out


def scan_folder(
    root: Path, tiles: TilesSection, extra_roots: tuple[Path, ...] = ()
) -> tuple[list[TileRecord], list[tuple[str, str]]]:
    """Tiles of a folder of class folders; unknown classes are skipped by name.

    With ``tiles.groups`` each tile takes its patient or group (and split) from
    the groups file.
    """
    if not root.is_dir():
        raise ConfigError(
            f"tiles.path {root} is not a folder; point it at the class folders"
        )
    groups = read_groups(root / tiles.groups) if tiles.groups is not None else {}
    base, extra = root.resolve(), tuple(p.resolve() for p in extra_roots)
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
        for p in files:
            name = f"{folder.name}/{p.name}"
            _inside(base, p, str(p), name, extra)  # a symlink out of the folder
            listed = groups.get(name)
            records.append(
                TileRecord(
                    path=p,
                    name=name,
                    label=folder.name,
                    patient_id=listed.patient_id if listed else None,
                    group=listed.group if listed else None,
                    split=listed.split if listed else None,
                    where=listed.where if listed else str(p),
                )
            )
    for label in sorted(known - {r.label for r in records}):
        skipped.append((str(root / label), "empty class: no tile with this label"))
    return records, skipped


def _inside(
    base: Path, path: Path, where: str, name: str, extra: tuple[Path, ...] = ()
) -> Path:
    """``path`` resolved (symlinks followed), refused outside ``base`` and ``extra``.

    Raises
    ------
    SlidePathError
        Naming the row (``file:line``) or file, when the tile lies outside.
    """
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in (base, *extra)):
        raise SlidePathError(
            f"{where}: tile {name!r} resolves to {resolved}, outside the tiles "
            f"folder {base}",
            fix="move the tile under that folder or add its folder to "
            "site.extra_slide_roots in site.toml",
        )
    return resolved


def scan_manifest(
    path: Path, tiles: TilesSection, extra_roots: tuple[Path, ...] = ()
) -> tuple[list[TileRecord], list[tuple[str, str]]]:
    """Tiles of a manifest CSV.

    Columns: tile, label, and optionally patient_id, group (or source_group) and
    split; tile paths are relative to the manifest's folder.
    """
    if not path.is_file():
        raise ManifestError(
            f"{path}: tile manifest not found; set tiles.path in site.toml"
        )
    columns, rows = _read_csv(path)
    if not {"tile", "label"} <= set(columns):
        raise ManifestError(f"{path}: the header needs the columns tile and label")
    records: list[TileRecord] = []
    skipped: list[tuple[str, str]] = []
    known = set(tiles.labels)
    base = path.parent.resolve()
    extra = tuple(p.resolve() for p in extra_roots)
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        tile = _cell(row, "tile")
        label = _cell(row, "label")
        if not tile or not label:
            skipped.append((where, "tile or label missing"))
            continue
        if known and label not in known:
            skipped.append((tile, f"unknown label {label!r}"))
            continue
        ok, split = _given_split(row, where, skipped)
        if not ok:
            continue
        records.append(
            TileRecord(
                path=_inside(base, path.parent / tile, where, tile, extra),
                name=_norm(tile),
                label=label,
                patient_id=_cell(row, "patient_id"),
                group=_cell(row, *GROUP_COLUMNS),
                split=split,
                where=where,
            )
        )
    return records, skipped


def assign_units(
    records: list[TileRecord],
    tiles: TilesSection,
    policy_unit: TileUnit | None,
) -> tuple[TileUnit, list[UnitOf]]:
    """The site's privacy unit, and each record's unit and split (same order).

    The unit is the policy's, else the patient when any tile names one, else the
    group. With ``unit = "tile"`` every tile is its own unit, and tiles that name
    a patient or group are still split with it.

    Raises
    ------
    ManifestError
        If a tile lacks its patient or group (naming the first such row), or the
        split given for one unit's tiles differs.
    """
    unit: TileUnit
    if policy_unit is not None:
        unit = policy_unit
    elif any(r.patient_id for r in records):
        unit = "patient"
    else:
        unit = "group"
    if unit != "tile":
        for rec in records:
            if (rec.patient_id if unit == "patient" else rec.group) is None:
                raise ManifestError(_missing_unit(rec, unit, tiles, policy_unit))
    keyed: list[tuple[TileUnit, str]] = []
    for rec in records:
        if unit == "patient" or (unit == "tile" and rec.patient_id):
            keyed.append(("patient", rec.patient_id or ""))
        elif unit == "group" or (unit == "tile" and rec.group):
            keyed.append(("group", rec.group or ""))
        else:
            keyed.append(("tile", rec.name))
    given: dict[tuple[TileUnit, str], TileRecord] = {}
    for rec, unit_key in zip(records, keyed, strict=True):
        if rec.split is None:
            continue
        first = given.setdefault(unit_key, rec)
        if first.split != rec.split:
            kind, name = unit_key
            raise ManifestError(
                f"{rec.where}: {kind} {name!r} is in {rec.split} here but in "
                f"{first.split} at {first.where}; a {kind} must lie wholly in "
                "train or in test: give all its tiles one split, or leave the "
                "split empty to draw it per unit"
            )
    out: list[UnitOf] = []
    for rec, unit_key in zip(records, keyed, strict=True):
        stated = given.get(unit_key)
        out.append(
            UnitOf(
                kind=unit,
                key=unit_key[1] if unit != "tile" else str(rec.path),
                split=(
                    stated.split
                    if stated is not None and stated.split is not None
                    else _split_of(unit_key[1], tiles.test_fraction)
                ),
            )
        )
    return unit, out


def _missing_unit(
    rec: TileRecord, unit: TileUnit, tiles: TilesSection, policy_unit: TileUnit | None
) -> str:
    what = "patient_id" if unit == "patient" else "group"
    why = f' (policy unit = "{policy_unit}")' if policy_unit else ""
    if tiles.source == "manifest":
        fix = f"fill in its {what} column"
    elif tiles.groups is None:
        fix = (
            'name every tile\'s group in a groups file (tiles.groups = "groups.csv":'
            " columns path and group or patient_id, paths relative to tiles.path)"
        )
    else:
        fix = f"give it a row with its {what} in {tiles.groups}"
    return (
        f"{rec.where}: tile {rec.name} has no {what}{why}; every tile needs its "
        f'privacy unit: {fix}, or set unit = "tile" under [policy] in site.toml '
        "to make each tile its own unit"
    )


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
    ManifestError
        If a tile lacks its patient or group (and the policy does not say
        ``unit = "tile"``), or a unit's tiles are given different splits.
    """
    tiles = config.tiles
    if tiles is None:
        raise ConfigError(
            "this site has no [tiles] section in site.toml; it holds slides"
        )
    root = config.resolve(tiles.path)
    records, skipped = (
        scan_folder(root, tiles, config.extra_slide_roots)
        if tiles.source == "folder"
        else scan_manifest(root, tiles, config.extra_slide_roots)
    )
    unit, units = assign_units(records, tiles, config.policy.unit)
    index = {name: i for i, name in enumerate(labels)}
    usable, fingerprint = _encode_records(
        config, tiles, list(zip(records, units, strict=True)), index, skipped
    )
    if not usable:
        raise ConfigError(f"{root}: no usable tile; fix the files listed as skipped")
    log_skips_once(config, skipped)
    return TileDataset(
        unit=unit,
        labels=labels,
        samples=_group_samples(usable, index),
        skipped=skipped,
        fingerprint=fingerprint,
    )


def _encode_records(
    config: SiteConfig,
    tiles: TilesSection,
    records: list[tuple[TileRecord, UnitOf]],
    index: dict[str, int],
    skipped: list[tuple[str, str]],
) -> tuple[list[tuple[TileRecord, UnitOf, NDArray[np.float32]]], str]:
    """Features of each usable tile (cached per content), and their fingerprint.

    Tiles that cannot be used are appended to ``skipped`` with the reason.
    """
    encoder = get_encoder(config.features.encoder)
    cache = FeatureCache(config.cache_dir / "tiles")
    usable: list[tuple[TileRecord, UnitOf, NDArray[np.float32]]] = []
    digest = hashlib.sha256()
    for rec, unit in records:
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
        digest.update(
            f"{content}:{rec.label}:{unit.split}:{unit.kind}:{unit.key}\n".encode()
        )
        usable.append((rec, unit, feats))
    return usable, digest.hexdigest()


def _group_samples(
    usable: list[tuple[TileRecord, UnitOf, NDArray[np.float32]]],
    index: dict[str, int],
) -> list[TileSample]:
    """One sample per unit: all tiles of a patient or group, or one tile."""
    groups: dict[str, list[tuple[TileRecord, UnitOf, NDArray[np.float32]]]] = (
        defaultdict(list)
    )
    for item in usable:
        groups[item[1].key].append(item)
    return [
        TileSample(
            sample_id=hashlib.sha256(key.encode()).hexdigest()[:16],
            split=items[0][1].split,
            features=np.concatenate([f for _, _, f in items]).astype(np.float32),
            labels=np.asarray([index[r.label] for r, _, _ in items], dtype=np.int64),
        )
        for key, items in sorted(groups.items())
    ]


__all__ = [
    "TileDataset",
    "TileRecord",
    "TileSample",
    "TileUnit",
    "UnitOf",
    "assign_units",
    "load_tile_dataset",
    "read_groups",
    "scan_folder",
    "scan_manifest",
]
