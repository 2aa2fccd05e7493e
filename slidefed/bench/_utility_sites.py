"""Real tile-site folders for ``slidefed bench utility``, and their samples.

Each site (and the held-out set) is a folder the sites' own code reads: its tiles
as links into the data folder (``site.extra_slide_roots`` allows them), a groups
file giving each tile's unit and split, and a ``site.toml`` with a ``[tiles]``
section, the policy's unit and ``delta = 1e-5``. Features are computed and cached
by :func:`slidefed.client.site.tile_samples`, as in a round; all folders share
one feature cache (keyed by tile content), so a second run encodes nothing.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidefed.bench._utility_data import BenchData, BenchTile
from slidefed.client.config import (
    SiteConfig,
    SitePolicy,
    SiteSection,
    TilesSection,
    dump_site_config,
    load_site_config,
)
from slidefed.client.data.tile_records import Split, TileSample
from slidefed.common.errors import SlidefedError
from slidefed.common.run_config import RunConfig

DELTA = 1e-5


@dataclass(frozen=True)
class BenchSite:
    """A site folder: its config and its samples (one per unit)."""

    name: str
    config: SiteConfig
    samples: list[TileSample]

    @property
    def n_units(self) -> int:
        """Units (samples) the site holds."""
        return len(self.samples)

    @property
    def n_tiles(self) -> int:
        """Tiles the site holds."""
        return int(sum(len(s.labels) for s in self.samples))


def _tile_size(tile: BenchTile) -> int:
    from PIL import Image

    with Image.open(tile.path) as img:
        return int(img.size[0])


def write_site(
    folder: Path,
    *,
    name: str,
    data: BenchData,
    tiles: list[BenchTile],
    split: Split,
    cache: Path,
) -> Path:
    """Write the site folder of ``tiles`` (all in ``split``); its site.toml path."""
    if folder.exists():
        shutil.rmtree(folder)
    root = folder / "tiles"
    for tile in tiles:
        link = root / tile.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(tile.path)
    column = "patient_id" if data.unit == "patient" else "group"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", column, "split"])
    writer.writerows([t.name, t.unit, split] for t in tiles)
    (root / "groups.csv").write_text(buf.getvalue(), encoding="utf-8")
    (folder / "state").mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    (folder / "state" / "cache").symlink_to(cache.resolve())
    config = SiteConfig(
        site=SiteSection(name=name, extra_slide_roots=(data.root.resolve(),)),
        tiles=TilesSection(
            path=Path("tiles"),
            groups=Path("groups.csv"),
            tile_size=_tile_size(tiles[0]),
        ),
        # A tile-unit site names each tile as its own "group" only to carry the
        # split; the policy says that the unit is the tile.
        policy=SitePolicy(unit=data.unit, delta=DELTA, accountant="best"),
        base_dir=folder,
    )
    path = folder / "site.toml"
    path.write_text(dump_site_config(config), encoding="utf-8")
    return path


def tiles_run(labels: list[str], seed: int) -> RunConfig:
    """The run config that the bench's sites load their samples for."""
    return RunConfig(task="tiles", labels=",".join(labels), seed=seed)


def _load(path: Path, labels: list[str], seed: int) -> tuple[str, list[Any]]:
    from slidefed.client.site import tile_samples

    config = load_site_config(path)
    samples, _ = tile_samples(config, tiles_run(labels, seed))
    return config.site.name, samples


def load_sites(
    paths: list[Path], labels: list[str], *, seed: int, workers: int
) -> list[BenchSite]:
    """The samples of each site folder, by the sites' own loader.

    With ``workers`` > 1 the folders are first loaded in that many processes, to
    fill the shared feature cache on both cores; then each is read from the cache.
    """
    if workers > 1 and len(paths) > 1:
        spawn = multiprocessing.get_context("spawn")  # no fork of torch's threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            list(pool.map(_count, paths, [labels] * len(paths), [seed] * len(paths)))
    out = []
    for path in paths:
        name, samples = _load(path, labels, seed)
        out.append(BenchSite(name=name, config=load_site_config(path), samples=samples))
    return out


def _count(path: Path, labels: list[str], seed: int) -> int:
    return len(_load(path, labels, seed)[1])


def _listed_units(site: BenchSite) -> set[str]:
    """The units that the site's groups file names (its second column)."""
    tiles = site.config.tiles
    if tiles is None or tiles.groups is None:
        return set()
    path = site.config.resolve(tiles.path) / tiles.groups
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    return {row[1] for row in rows[1:] if len(row) > 1}


def check_no_shared_unit(train: list[BenchSite], test: BenchSite) -> int:
    """Units of the held-out set, checking that no training site holds one.

    Checked twice: on the units the folders' groups files name, and on the
    samples the sites loaded (keyed by a hash of their unit).

    Raises
    ------
    SlidefedError
        If a held-out unit is at a site, or a folder holds the other split.
    """
    held = {s.sample_id for s in test.samples}
    held_listed = _listed_units(test)
    for site in train:
        shared = held & {s.sample_id for s in site.samples}
        shared_listed = held_listed & _listed_units(site)
        if shared or shared_listed:
            raise SlidefedError(
                f"{max(len(shared), len(shared_listed))} held-out units are also at "
                f"{site.name}; the split must never cut a unit"
            )
        if any(s.split != "train" for s in site.samples):
            raise SlidefedError(f"{site.name} holds samples outside train")
    if any(s.split != "test" for s in test.samples):
        raise SlidefedError("the held-out set holds training samples")
    return len(held)


__all__ = ["DELTA", "BenchSite", "check_no_shared_unit", "load_sites", "write_site"]
