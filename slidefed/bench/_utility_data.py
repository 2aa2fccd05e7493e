"""The data of ``slidefed bench utility``: tiles, their units, the split and the sites.

A *unit* is what must never be split between train and test and what DP protects:
the patient or the source group a groups file names (LC25000: one original
picture and its rotated and flipped copies), or each tile when there is no groups
file. The split is drawn per unit, stratified by the unit's label, from a seeded
generator: a third of the units held out as test, and a validation share of the
remaining training units for choosing hyperparameters. The training units are
dealt to the sites by a seeded Dirichlet draw per class, so that the sites hold
different class mixes.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from slidefed.client.config import TilesSection
from slidefed.client.data.tile_records import TileUnit
from slidefed.client.data.tiles import scan_folder
from slidefed.common.errors import ConfigError

BenchSplit = Literal["train", "val", "test"]
DEFAULT_SET = Path("patches") / "lc25000-lung"


@dataclass(frozen=True)
class BenchTile:
    """One tile: its name in the data folder (``class/file``), file, label and unit."""

    name: str
    path: Path
    label: str
    unit: str


@dataclass(frozen=True)
class BenchData:
    """The tiles of a data folder and the kind of unit that keys them."""

    root: Path
    labels: list[str]
    unit: TileUnit
    tiles: list[BenchTile]
    groups_file: Path | None
    skipped: int = 0

    def unit_labels(self) -> dict[str, str]:
        """The label of each unit: the most common label of its tiles."""
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for tile in self.tiles:
            counts[tile.unit][tile.label] += 1
        return {u: c.most_common(1)[0][0] for u, c in sorted(counts.items())}


def find_data(given: Path | None) -> Path:
    """The data folder: ``given``, else LC25000 lung in the shared data.

    The shared data are found at ``$SLIDEFED_SHARED_DATA`` or ``../shared/data``
    (from the working directory), like the test suite finds them.

    Raises
    ------
    ConfigError
        If the folder does not exist, naming the fix.
    """
    if given is not None:
        if not given.is_dir():
            raise ConfigError(
                f"--data {given} is not a folder; point it at a folder of class "
                "folders (one subfolder of tiles per label)"
            )
        return given.resolve()
    env = os.environ.get("SLIDEFED_SHARED_DATA")
    base = Path(env) if env else Path.cwd() / ".." / "shared" / "data"
    path = base / DEFAULT_SET
    if not path.is_dir():
        raise ConfigError(
            f"no tiles at {path}; pass --data DIR (a folder of class folders, "
            "e.g. shared/data/patches/lc25000-lung) or set SLIDEFED_SHARED_DATA"
        )
    return path.resolve()


def load_bench_data(root: Path, groups: Path | None) -> BenchData:
    """The tiles of ``root`` (class folders) with their units.

    ``groups`` (or ``root/groups.csv`` when present) names each tile's group or
    patient, read by the sites' own parser; without one, each tile is its own
    unit.

    Raises
    ------
    ConfigError
        If the folder holds no class folder with tiles, or fewer than two labels.
    ManifestError
        If the groups file is invalid or misses a tile.
    """
    if groups is None and (root / "groups.csv").is_file():
        groups = root / "groups.csv"
    section = TilesSection(path=root, groups=groups.resolve() if groups else None)
    records, skipped = scan_folder(root, section)
    unit: TileUnit = "tile"
    if groups is not None:
        unit = "patient" if any(r.patient_id for r in records) else "group"
    tiles = []
    for rec in records:
        key = rec.patient_id if unit == "patient" else rec.group
        if unit != "tile" and not key:
            raise ConfigError(
                f"{groups}: tile {rec.name} has no "
                f"{'patient_id' if unit == 'patient' else 'group'}; give every tile "
                "a row (columns path and group or patient_id), or drop --groups"
            )
        tiles.append(
            BenchTile(
                name=rec.name,
                path=rec.path.resolve(),
                label=rec.label,
                unit=key if key else rec.name,
            )
        )
    labels = sorted({t.label for t in tiles})
    if len(labels) < 2:
        raise ConfigError(
            f"{root}: found {len(labels)} class folder(s) with tiles; the bench "
            "needs at least two labels (one subfolder of tiles per label)"
        )
    return BenchData(
        root=root,
        labels=labels,
        unit=unit,
        tiles=tiles,
        groups_file=groups,
        skipped=len(skipped),
    )


def subsample(data: BenchData, *, units_per_label: int, seed: int) -> BenchData:
    """At most ``units_per_label`` units of each label (seeded): a quick run."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for unit, label in data.unit_labels().items():
        by_label[label].append(unit)
    keep: set[str] = set()
    for label in sorted(by_label):
        units = sorted(by_label[label])
        rng.shuffle(units)
        keep.update(units[:units_per_label])
    return replace(data, tiles=[t for t in data.tiles if t.unit in keep])


def split_units(
    data: BenchData,
    *,
    seed: int,
    test_fraction: float = 1 / 3,
    val_fraction: float = 0.25,
    fold: int = 0,
    folds: int = 1,
) -> dict[str, BenchSplit]:
    """The split of every unit: test, validation (inside train) or train.

    Per label, the units are shuffled by a seeded generator; the first
    ``test_fraction`` are test, then ``val_fraction`` of the rest validation.
    With ``folds`` > 1 (cross-validation), the shuffled units of each label are
    dealt to the folds in turn and fold ``fold`` is test (``test_fraction`` is
    then 1 / ``folds``): over the folds every unit is tested exactly once, with
    the same seed. Every label with at least two units keeps one in train.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for unit, label in data.unit_labels().items():
        by_label[label].append(unit)
    out: dict[str, BenchSplit] = {}
    for label in sorted(by_label):
        units = sorted(by_label[label])
        rng.shuffle(units)
        if folds > 1 and len(units) > 1:
            test = [u for i, u in enumerate(units) if i % folds == fold % folds]
            rest = [u for i, u in enumerate(units) if i % folds != fold % folds]
        else:
            n_test = min(round(len(units) * test_fraction), len(units) - 1)
            test, rest = units[:n_test], units[n_test:]
        n_val = max(0, min(round(len(rest) * val_fraction), len(rest) - 1))
        for unit in test:
            out[unit] = "test"
        for i, unit in enumerate(rest):
            out[unit] = "val" if i < n_val else "train"
    return out


def split_counts(data: BenchData, splits: dict[str, BenchSplit]) -> dict[str, int]:
    """Units and tiles of each split (a unit's tiles all take the unit's split)."""
    units = Counter(splits[u] for u in {t.unit for t in data.tiles})
    tiles = Counter(splits[t.unit] for t in data.tiles)
    return {
        **{f"{s}_units": units.get(s, 0) for s in ("train", "val", "test")},
        **{f"{s}_tiles": tiles.get(s, 0) for s in ("train", "val", "test")},
    }


def assign_sites(
    unit_labels: dict[str, str], *, sites: int, alpha: float, seed: int
) -> dict[str, int]:
    """The site of each unit: per label, shares drawn from Dirichlet(``alpha``).

    Draws are repeated (seeded) until every site holds at least a quarter of an
    even share of the units, so that no site is left nearly empty.

    Raises
    ------
    ConfigError
        If there are fewer units than sites.
    """
    if len(unit_labels) < sites:
        raise ConfigError(
            f"{len(unit_labels)} training units for {sites} sites; every site "
            "needs one: lower --sites or add data"
        )
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for unit, label in sorted(unit_labels.items()):
        by_label[label].append(unit)
    least = max(1, len(unit_labels) // (4 * sites))
    out: dict[str, int] = {}
    for _ in range(200):
        out = {}
        for label in sorted(by_label):
            units = list(by_label[label])
            rng.shuffle(units)
            shares = rng.dirichlet(np.full(sites, alpha))
            cuts = np.round(np.cumsum(shares) * len(units)).astype(int)
            start = 0
            for site, end in enumerate(cuts):
                out.update(dict.fromkeys(units[start:end], site))
                start = end
        counts = Counter(out.values())
        if all(counts.get(s, 0) >= least for s in range(sites)):
            return out
    # A tiny data set: deal the units out in turn instead.
    ordered = [u for label in sorted(by_label) for u in by_label[label]]
    return {unit: i % sites for i, unit in enumerate(ordered)}


__all__ = [
    "BenchData",
    "BenchSplit",
    "BenchTile",
    "assign_sites",
    "find_data",
    "load_bench_data",
    "split_counts",
    "split_units",
    "subsample",
]
