"""``slidefed demo --data tiles``: a federation on real labelled H&E tiles.

The tiles of any labelled collection of class folders (the Kather colorectal
sets or LC25000's ``lung_aca``/``lung_n``/``lung_scc`` under
``shared/data/patches``) are split into three sites with different class mixes;
the classes are the names of the class folders found (a class with too few
tiles is left out, and said so). The federation trains a tile classifier with
DP, and a centralised non-private baseline is trained on the same split in the
same run.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import (
    SiteConfig,
    SitePolicy,
    SiteSection,
    TilesSection,
    dump_site_config,
)
from slidefed.common.errors import ConfigError
from slidefed.common.run_config import RunConfig

LABELS = ("ADI", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
"""The eight Kather classes (their class mix below is hand-made)."""
# Relative share of each class that goes to each site: different class mixes.
MIX = {
    "hospital-a": {"TUM": 3, "STR": 3, "ADI": 1, "DEB": 2},
    "hospital-b": {"LYM": 3, "ADI": 3, "NORM": 1, "MUS": 1},
    "hospital-c": {"MUC": 3, "MUS": 3, "NORM": 3, "DEB": 1},
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
MIN_TILES_PER_CLASS = 10
"""A class with fewer tiles cannot give every site train and test tiles."""
MAX_TILES_PER_CLASS = 300
"""Tiles taken per class (chosen by a hash of the name): the demo stays minutes."""


class TileClasses(BaseModel):
    """The classes the demo found in the class folders, and what it left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: tuple[str, ...]
    counts: dict[str, int]
    used: dict[str, int]
    left_out: dict[str, int]

    def lines(self, root: Path) -> list[str]:
        """What the demo says about the classes it took."""
        found = ", ".join(
            f"{label} ({self.used[label]}"
            + (
                f" of {self.counts[label]}"
                if self.used[label] < self.counts[label]
                else ""
            )
            + " tiles)"
            for label in self.labels
        )
        lines = [f"classes from the class folders of {root}: {found}"]
        if self.left_out:
            few = ", ".join(f"{k} ({v})" for k, v in sorted(self.left_out.items()))
            lines.append(f"left out, fewer than {MIN_TILES_PER_CLASS} tiles: {few}")
        return lines


def find_tiles_dir(given: Path | None) -> Path:
    """The folder of tile sets (class folders below it, at any depth of one)."""
    candidates = [given] if given else []
    candidates += [Path.cwd() / ".." / "shared" / "data" / "patches"]
    for path in candidates:
        if path is not None and path.is_dir():
            return path.resolve()
    raise ConfigError(
        "no labelled tiles found; pass --tiles-dir PATH (a folder of class folders, "
        "e.g. shared/data/patches)"
    )


def _class_files(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            out.setdefault(folder.name, []).extend(files)
    return out


def _weight(site: int, label: str, labels: tuple[str, ...]) -> int:
    """Share of ``label`` that site number ``site`` gets (a different mix each)."""
    if label in LABELS:
        return list(MIX.values())[site].get(label, 1)
    return 3 if labels.index(label) % len(MIX) == site else 1


def _site_of(path: Path, label: str, seed: int, labels: tuple[str, ...]) -> str:
    weights = [(site, _weight(i, label, labels)) for i, site in enumerate(MIX)]
    total = sum(w for _, w in weights)
    digest = hashlib.sha256(f"{seed}:{path.name}".encode()).digest()
    point = int.from_bytes(digest[:8], "little") / 2**64 * total
    for site, w in weights:
        if point < w:
            return site
        point -= w
    return weights[-1][0]


def _pick(paths: list[Path], seed: int) -> list[Path]:
    """At most MAX_TILES_PER_CLASS of ``paths``, the same ones for the same seed."""

    def rank(path: Path) -> bytes:
        return hashlib.sha256(
            f"{seed}:{path.parent.parent.name}/{path.name}".encode()
        ).digest()

    return sorted(sorted(paths, key=rank)[:MAX_TILES_PER_CLASS])


def find_classes(
    tiles_dir: Path, *, seed: int = 0
) -> tuple[TileClasses, dict[str, list[Path]]]:
    """The classes of the class folders under ``tiles_dir``, and their tiles.

    Raises
    ------
    ConfigError
        If no class folder holds images, or no class has enough tiles.
    """
    files = _class_files(tiles_dir)
    if not files:
        raise ConfigError(
            f"--tiles-dir {tiles_dir}: no class folders with images found; give a "
            "folder whose sub-folders are named by class and hold the tiles"
        )
    counts = {label: len(paths) for label, paths in files.items()}
    kept = {
        k: _pick(v, seed) for k, v in files.items() if len(v) >= MIN_TILES_PER_CLASS
    }
    if len(kept) < 2:
        raise ConfigError(
            f"--tiles-dir {tiles_dir}: fewer than two classes with at least "
            f"{MIN_TILES_PER_CLASS} tiles ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})"
        )
    classes = TileClasses(
        labels=tuple(sorted(kept)),
        counts=counts,
        used={k: len(v) for k, v in kept.items()},
        left_out={k: v for k, v in counts.items() if k not in kept},
    )
    return classes, kept


def build_tile_sites(
    tiles_dir: Path, out: Path, *, seed: int
) -> tuple[list[Path], TileClasses]:
    """Copy the tiles into three site folders; write each site.toml.

    Returns
    -------
    tuple
        The sites' ``site.toml`` and the classes taken from the folders.
    """
    classes, files = find_classes(tiles_dir, seed=seed)
    configs = []
    for site in MIX:
        root = out / "sites" / site
        (root / "tiles").mkdir(parents=True, exist_ok=True)
        config = SiteConfig(
            site=SiteSection(name=site),
            tiles=TilesSection(path=Path("tiles"), labels=classes.labels),
            # The Kather tiles carry no patient ids: each tile is its own unit,
            # which a site must say explicitly.
            policy=SitePolicy(max_epsilon=10.0, min_eval_patients=5, unit="tile"),
            base_dir=root,
        )
        (root / "site.toml").write_text(dump_site_config(config))
        from slidefed.client.keys import ensure_site_keys

        ensure_site_keys(config)
        configs.append(root / "site.toml")
    for label, paths in files.items():
        for path in paths:
            site = _site_of(path, label, seed, classes.labels)
            target = out / "sites" / site / "tiles" / label
            target.mkdir(exist_ok=True)
            shutil.copy2(path, target / f"{path.parent.parent.name}-{path.name}")
    return configs, classes


def tiles_run_config(
    out: Path,
    sites: list[Path],
    rounds: int,
    seed: int,
    labels: tuple[str, ...] = LABELS,
) -> RunConfig:
    """The researcher's side of the tiles demo (``labels``: the classes found)."""
    return RunConfig(
        task="tiles",
        labels=",".join(labels),
        num_server_rounds=rounds,
        local_epochs=8,
        batch_size=4,
        lr=0.03,
        target_epsilon=8.0,
        max_grad_norm=1.0,
        seed=seed,
        min_sites=len(sites),
        run_dir=str(out / "run"),
        run_name=f"demo-tiles:{out / 'run'}",
        sim_sites=",".join(str(s) for s in sites),
    )


def centralised_baseline(
    sites: list[Path], run: RunConfig, *, epochs: int
) -> dict[str, Any]:
    """Non-private training on the pooled training tiles of all sites."""
    from slidefed.client.config import load_site_config
    from slidefed.client.data.tiles import load_tile_dataset
    from slidefed.client.evaluation import evaluate_tiles
    from slidefed.client.train import train_plain
    from slidefed.common.model import build_model, feature_dim

    train, test = [], []
    for path in sites:
        data = load_tile_dataset(load_site_config(path), run.label_list())
        train += [s for s in data.samples if s.split == "train"]
        test += [s for s in data.samples if s.split == "test"]
    model = build_model(
        "tiles",
        feature_dim(run.encoder, run.feature_dim),
        seed=run.seed,
        n_classes=run.n_classes(),
        inputs=run.inputs,
    )
    train_plain(
        model, train, epochs=epochs, batch_size=run.batch_size, lr=run.lr, seed=run.seed
    )
    result = evaluate_tiles(model, test, run.n_classes())
    return {
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
        "class_accuracy": dict(
            zip(run.label_list(), result.class_accuracy, strict=True)
        ),
        "class_support": dict(zip(run.label_list(), result.class_support, strict=True)),
        "train_tiles": len(train),
        "test_tiles": result.n_tiles,
    }


def spent_epsilons(sites: list[Path]) -> dict[str, float]:
    """Epsilon each site has spent after its last round, from its own ledger."""
    from slidefed.client.config import load_site_config
    from slidefed.client.privacy.ledger import PrivacyLedger

    eps = {}
    for path in sites:
        cfg = load_site_config(path)
        ledger = PrivacyLedger(cfg.ledger_path).load()
        eps[cfg.site.name] = ledger.rounds[-1].epsilon_after if ledger.rounds else 0.0
    return eps


def federated_summary(row: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Held-out metrics of the last round, per class where the sites released them."""
    return {
        "accuracy": row.get("accuracy", math.nan),
        "macro_f1": row.get("macro_f1", math.nan),
        "class_accuracy": {
            label: row[f"acc_class_{i:02d}"]
            for i, label in enumerate(labels)
            if f"acc_class_{i:02d}" in row
        },
    }


__all__ = [
    "LABELS",
    "MAX_TILES_PER_CLASS",
    "MIN_TILES_PER_CLASS",
    "TileClasses",
    "build_tile_sites",
    "centralised_baseline",
    "federated_summary",
    "find_classes",
    "find_tiles_dir",
    "spent_epsilons",
    "tiles_run_config",
]
