"""Site preparation: slides -> tissue -> tiles -> features, cached per slide."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.client.data import Manifest, load_manifest
from slidefed.client.features import FeatureCache, cache_key, file_sha256, get_encoder
from slidefed.client.slides import open_slide
from slidefed.client.tiling import iter_tile_batches, plan_tiles
from slidefed.common.config import FeaturesSection, SiteConfig, TilingSection
from slidefed.common.errors import SlideReadError

logger = logging.getLogger(__name__)


class SlideOutcome(BaseModel):
    """What happened to one slide."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slide: str
    status: str  # "ok", "cached" or "skipped"
    tiles: int = 0
    reason: str = ""
    key: str = ""
    seconds: float = 0.0


class PrepareReport(BaseModel):
    """The prepare report written next to the cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    site: str
    encoder: str
    manifest_sha256: str
    slides: list[SlideOutcome]
    rejected_rows: list[tuple[int, str]]
    seconds: float

    @property
    def usable(self) -> list[SlideOutcome]:
        """Slides with features."""
        return [s for s in self.slides if s.status in ("ok", "cached") and s.tiles]


def _tiling_params(tiling: TilingSection) -> dict[str, object]:
    return {
        "target_mpp": tiling.target_mpp,
        "tile_size": tiling.tile_size,
        "tissue_fraction": tiling.tissue_fraction,
        "fallback_mpp": tiling.fallback_mpp,
    }


def prepare_slide(
    slide_rel: str,
    path: Path,
    tiling: TilingSection,
    features: FeaturesSection,
    cache_root: Path,
) -> SlideOutcome:
    """Features of one slide, from the cache when its content is unchanged."""
    start = time.perf_counter()
    encoder = get_encoder(features.encoder)
    cache = FeatureCache(cache_root)
    try:
        if not path.is_file():
            raise SlideReadError(str(path), "file named in the manifest does not exist")
        key = cache_key(file_sha256(path), encoder.encoder_id, _tiling_params(tiling))
        if cache.has(key):
            n = len(cache.load(key))
            return SlideOutcome(slide=slide_rel, status="cached", tiles=n, key=key)
        with open_slide(path) as slide:
            grid = plan_tiles(slide, tiling)
            if not grid.coords:
                return SlideOutcome(
                    slide=slide_rel, status="skipped", reason="no tissue found"
                )
            parts = [
                encoder.encode(batch)
                for batch in iter_tile_batches(slide, grid, features.batch_size)
            ]
        feats: NDArray[np.float32] = np.concatenate(parts).astype(np.float32)
        cache.save(key, feats, np.asarray(grid.coords, dtype=np.int64))
    except SlideReadError as exc:
        return SlideOutcome(slide=slide_rel, status="skipped", reason=exc.reason)
    return SlideOutcome(
        slide=slide_rel,
        status="ok",
        tiles=len(feats),
        key=key,
        seconds=round(time.perf_counter() - start, 3),
    )


def prepare_site(
    config: SiteConfig,
    *,
    workers: int | None = None,
    progress: Callable[[SlideOutcome], None] | None = None,
) -> PrepareReport:
    """Prepare every slide of the site's manifest; bad slides are skipped."""
    start = time.perf_counter()
    manifest: Manifest = load_manifest(config.manifest_path)
    n_workers = workers or config.tiling.workers or min(os.cpu_count() or 1, 4)
    jobs = [
        (
            row.slide,
            config.slides_root / row.slide,
            config.tiling,
            config.features,
            config.cache_dir,
        )
        for row in manifest.rows
    ]
    outcomes: list[SlideOutcome] = []
    if n_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            outcomes.append(prepare_slide(*job))
            if progress:
                progress(outcomes[-1])
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            futures = [pool.submit(prepare_slide, *job) for job in jobs]
            for fut in futures:
                outcomes.append(fut.result())
                if progress:
                    progress(outcomes[-1])
    for out in outcomes:
        if out.status == "skipped":
            logger.warning("slide skipped: %s (%s)", out.key or "?", out.reason)
    report = PrepareReport(
        site=config.site.name,
        encoder=config.features.encoder,
        manifest_sha256=manifest.sha256,
        slides=outcomes,
        rejected_rows=manifest.rejected,
        seconds=round(time.perf_counter() - start, 3),
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = config.state_dir / "prepare-report.json.tmp"
    tmp.write_text(json.dumps(report.model_dump(mode="json"), indent=2))
    tmp.replace(config.state_dir / "prepare-report.json")
    return report


def load_site_features(
    config: SiteConfig,
) -> tuple[Manifest, dict[str, NDArray[np.float32]]]:
    """Manifest and cached features per slide; prepares missing slides first."""
    report = prepare_site(config, workers=1)
    manifest = load_manifest(config.manifest_path)
    cache = FeatureCache(config.cache_dir)
    feats = {s.slide: cache.load(s.key) for s in report.usable}
    return manifest, feats


__all__ = [
    "PrepareReport",
    "SlideOutcome",
    "load_site_features",
    "prepare_site",
    "prepare_slide",
]
