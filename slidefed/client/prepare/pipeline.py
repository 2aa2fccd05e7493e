"""Site preparation: slides -> tissue -> tiles -> features, cached per slide.

Each slide's features are cached under a key made of its content hash, the
encoder id and the tiling parameters; a slide whose key is cached is never
opened again, so a run killed half-way resumes where it stopped. Content hashes
are remembered (``hashes.json``) while a slide's size and modification time are
unchanged, so a re-run does not even read unchanged slides.

Two ways to spread the work over processes:

* ``hed`` (cheap, CPU): one slide per worker process; each worker reads its
  tiles and encodes them.
* ``timm:<arch>`` (a network, GPU when present): the main process holds the
  model; worker processes read chunks of tiles and send them back, so that the
  model runs once, in large batches, while the workers decode ahead.

Bad slides (missing, truncated, not a slide, unsupported, no tissue, too small,
all tiles unreadable) are skipped with a reason and the rest is prepared.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.client.config import FeaturesSection, SiteConfig, TilingSection
from slidefed.client.data.manifest import Manifest, load_manifest
from slidefed.client.prepare.features import (
    Encoder,
    FeatureCache,
    HashMemo,
    cache_key,
    encoder_cache_id,
    get_encoder,
    slide_sha256,
)
from slidefed.client.prepare.tiling import (
    GRID_VERSION,
    TileBatch,
    TileGrid,
    iter_tiles,
    plan_tiles,
    read_tile_chunk,
)
from slidefed.client.slides.core import open_slide
from slidefed.common.errors import SlideReadError
from slidefed.common.fileio import atomic_write_text

logger = logging.getLogger(__name__)

#: Seconds between two writes of the partial report during a run.
REPORT_INTERVAL = 5.0
#: File name of the content-hash memo inside the cache folder.
HASH_MEMO = "hashes.json"


class SlideOutcome(BaseModel):
    """What happened to one slide.

    Attributes
    ----------
    slide : str
        The slide as the manifest names it.
    status : str
        ``ok`` (prepared now), ``cached`` (features already cached, nothing
        decoded) or ``skipped`` (see ``reason``).
    tiles : int
        Tiles with features.
    reason : str
        Why the slide was skipped, or a note (unreadable tiles left out).
    key : str
        Feature cache key.
    seconds : float
        Time spent on the slide.
    row : int
        Position of the slide among the manifest's accepted rows (1-based);
        logs name slides by this number, never by path.
    unreadable_tiles : int
        Tiles left out because they could not be read.
    decoded_tiles : int
        Stored tiles decoded for this slide (0 for a cached slide).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slide: str
    status: str  # "ok", "cached" or "skipped"
    tiles: int = 0
    reason: str = ""
    key: str = ""
    seconds: float = 0.0
    row: int = 0
    unreadable_tiles: int = 0
    decoded_tiles: int = 0


class PrepareReport(BaseModel):
    """The prepare report written to ``state/prepare-report.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 2
    site: str
    encoder: str
    encoder_id: str = ""
    manifest_sha256: str
    slides: list[SlideOutcome]
    rejected_rows: list[tuple[int, str]]
    seconds: float
    tiles_per_second: float = 0.0
    complete: bool = True

    @property
    def usable(self) -> list[SlideOutcome]:
        """Slides with features."""
        return [s for s in self.slides if s.status in ("ok", "cached") and s.tiles]

    @property
    def skipped(self) -> list[SlideOutcome]:
        """Slides left out, each with its reason."""
        return [s for s in self.slides if s.status == "skipped"]


def _tiling_params(tiling: TilingSection) -> dict[str, object]:
    return {
        "target_mpp": tiling.target_mpp,
        "tile_size": tiling.tile_size,
        "tissue_fraction": tiling.tissue_fraction,
        "fallback_mpp": tiling.fallback_mpp,
        "grid": GRID_VERSION,
    }


def _scrub(reason: str, path: Path) -> str:
    """A reason without the slide's path or folder, for logs."""
    for text in (str(path), str(path.parent), path.name):
        if text and text != ".":
            reason = reason.replace(text, "<slide>")
    return reason


def _remember_skip(cache: FeatureCache, key: str, exc: SlideReadError) -> None:
    """Remember a skip caused by the slide itself, not by a failing disk or mount.

    Unreadable tiles are not remembered either: they may come from the storage.
    """
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if cause is None:
        cache.save_skip(key, exc.reason)


def _collect(
    batches: Iterable[TileBatch],
    encode: Callable[[NDArray[np.uint8]], NDArray[np.float32]],
) -> tuple[list[NDArray[np.float32]], list[tuple[int, int]], list[str]]:
    parts: list[NDArray[np.float32]] = []
    coords: list[tuple[int, int]] = []
    failed: list[str] = []
    for batch in batches:
        failed.extend(reason for _, reason in batch.failed)
        if batch.coords:
            parts.append(encode(batch.tiles))
            coords.extend(batch.coords)
    return parts, coords, failed


def _finish(
    slide_rel: str,
    row: int,
    key: str,
    cache: FeatureCache,
    parts: list[NDArray[np.float32]],
    coords: list[tuple[int, int]],
    failed: list[str],
    decoded: int,
    start: float,
) -> SlideOutcome:
    """Save a slide's features (if any) and describe the outcome."""
    seconds = round(time.perf_counter() - start, 3)
    if not coords:
        reason = f"all {len(failed)} tissue tiles unreadable ({failed[0]})"
        return SlideOutcome(
            slide=slide_rel,
            status="skipped",
            reason=reason,
            row=row,
            unreadable_tiles=len(failed),
            decoded_tiles=decoded,
            seconds=seconds,
        )
    feats = np.concatenate(parts).astype(np.float32)
    cache.save(key, feats, np.asarray(coords, dtype=np.int64))
    note = f"{len(failed)} unreadable tiles left out ({failed[0]})" if failed else ""
    return SlideOutcome(
        slide=slide_rel,
        status="ok",
        tiles=len(feats),
        reason=note,
        key=key,
        row=row,
        unreadable_tiles=len(failed),
        decoded_tiles=decoded,
        seconds=seconds,
    )


def prepare_slide(
    slide_rel: str,
    path: Path,
    tiling: TilingSection,
    features: FeaturesSection,
    cache_root: Path,
    *,
    content_hash: str | None = None,
    encoder: Encoder | None = None,
    row: int = 0,
) -> SlideOutcome:
    """Features of one slide, from the cache when its content is unchanged.

    Parameters
    ----------
    slide_rel : str
        The slide as the manifest names it.
    path : Path
        The slide file (or DICOM folder).
    tiling, features : TilingSection, FeaturesSection
        The site's settings.
    cache_root : Path
        Feature cache folder.
    content_hash : str, optional
        The slide's sha256 when the caller knows it already.
    encoder : Encoder, optional
        A loaded encoder (default: ``features.encoder`` loaded here).
    row : int
        The slide's position in the manifest, for the outcome.

    Returns
    -------
    SlideOutcome
        ``ok``, ``cached`` or ``skipped`` with a reason; never raises for a bad
        slide.
    """
    start = time.perf_counter()
    cache = FeatureCache(cache_root)
    try:
        if not path.exists():
            raise SlideReadError(str(path), "file named in the manifest does not exist")
        enc = encoder or get_encoder(
            features.encoder, weights=features.weights, batch_size=features.batch_size
        )
        digest = content_hash or slide_sha256(path)
        key = cache_key(digest, enc.encoder_id, _tiling_params(tiling))
        if cache.has(key):
            n = len(cache.load(key))
            return SlideOutcome(
                slide=slide_rel, status="cached", tiles=n, key=key, row=row
            )
        reason = cache.load_skip(key)
        if reason is not None:
            return SlideOutcome(
                slide=slide_rel, status="skipped", reason=reason, row=row
            )
        try:
            with open_slide(path) as slide:
                grid = plan_tiles(slide, tiling)
                if not grid.coords:
                    raise SlideReadError(str(path), "no tissue found")
                batches = iter_tiles(
                    slide, grid, features.batch_size, skip_unreadable=True
                )
                parts, coords, failed = _collect(batches, enc.encode)
                decoded = int(getattr(slide, "tiles_decoded", 0))
        except SlideReadError as exc:
            _remember_skip(cache, key, exc)
            raise
    except SlideReadError as exc:
        return SlideOutcome(
            slide=slide_rel, status="skipped", reason=exc.reason, row=row
        )
    return _finish(slide_rel, row, key, cache, parts, coords, failed, decoded, start)


# ------------------------------------------------------------- main-process mode
def _read_ahead(
    pool: ProcessPoolExecutor | None,
    path: Path,
    grid: TileGrid,
    batch_size: int,
    window: int,
) -> Iterator[TileBatch]:
    """Tile batches in order, read by ``pool`` with ``window`` chunks in flight."""
    chunks = [
        grid.coords[i : i + batch_size] for i in range(0, len(grid.coords), batch_size)
    ]
    if pool is None:
        with open_slide(path) as slide:
            yield from iter_tiles(slide, grid, batch_size, skip_unreadable=True)
        return
    pending: deque[Future[TileBatch]] = deque()
    todo = iter(chunks)
    for chunk in todo:
        pending.append(pool.submit(read_tile_chunk, str(path), grid, chunk))
        if len(pending) >= window:
            break
    while pending:
        batch = pending.popleft().result()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(pool.submit(read_tile_chunk, str(path), grid, nxt))
        yield batch


def _prepare_in_main(
    slide_rel: str,
    path: Path,
    row: int,
    digest: str,
    key: str,
    config: SiteConfig,
    encoder: Encoder,
    pool: ProcessPoolExecutor | None,
    window: int,
) -> SlideOutcome:
    start = time.perf_counter()
    cache = FeatureCache(config.cache_dir)
    try:
        with open_slide(path) as slide:
            grid = plan_tiles(slide, config.tiling)
        if not grid.coords:
            raise SlideReadError(str(path), "no tissue found")
        batches = _read_ahead(pool, path, grid, config.features.batch_size, window)
        parts, coords, failed = _collect(batches, encoder.encode)
    except SlideReadError as exc:
        _remember_skip(cache, key, exc)
        return SlideOutcome(
            slide=slide_rel, status="skipped", reason=exc.reason, row=row
        )
    decoded = len(coords) + len(failed)
    return _finish(slide_rel, row, key, cache, parts, coords, failed, decoded, start)


# ------------------------------------------------------------------------ site
class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    row: int
    slide: str
    path: Path
    digest: str
    key: str


def _write_report(config: SiteConfig, report: PrepareReport) -> None:
    atomic_write_text(
        config.state_dir / "prepare-report.json", report.model_dump_json(indent=2)
    )


def _weights_path(config: SiteConfig) -> Path | None:
    weights = config.features.weights
    return config.resolve(weights) if weights is not None else None


def prepare_site(
    config: SiteConfig,
    *,
    workers: int | None = None,
    progress: Callable[[SlideOutcome], None] | None = None,
) -> PrepareReport:
    """Prepare every slide of the site's manifest; bad slides are skipped.

    Parameters
    ----------
    config : SiteConfig
        The site.
    workers : int, optional
        Worker processes (default: ``tiling.workers``, else up to 4 cores).
    progress : callable, optional
        Called with each slide's outcome as soon as it is known.

    Returns
    -------
    PrepareReport
        Also written to ``state/prepare-report.json`` (during the run as well,
        with ``complete`` false).

    Raises
    ------
    ManifestError
        If the manifest is missing or has no usable row.
    ConfigError
        If the encoder is unknown or its weights file is missing.
    """
    start = time.perf_counter()
    manifest: Manifest = load_manifest(config.manifest_path)
    weights = _weights_path(config)
    features = config.features.model_copy(update={"weights": weights})
    encoder_id = encoder_cache_id(features.encoder, weights)
    n_workers = workers or config.tiling.workers or min(os.cpu_count() or 1, 4)
    cache = FeatureCache(config.cache_dir)
    memo_path = config.cache_dir / HASH_MEMO
    memo = HashMemo.load(memo_path)
    outcomes: list[SlideOutcome] = []
    last_write = time.perf_counter()

    def report(complete: bool) -> PrepareReport:
        elapsed = time.perf_counter() - start
        fresh = sum(o.tiles for o in outcomes if o.status == "ok")
        return PrepareReport(
            site=config.site.name,
            encoder=config.features.encoder,
            encoder_id=encoder_id,
            manifest_sha256=manifest.sha256,
            slides=sorted(outcomes, key=lambda o: o.row),
            rejected_rows=manifest.rejected,
            seconds=round(elapsed, 3),
            tiles_per_second=round(fresh / elapsed, 1) if elapsed > 0 else 0.0,
            complete=complete,
        )

    def record(outcome: SlideOutcome) -> None:
        nonlocal last_write
        outcomes.append(outcome)
        if outcome.status == "skipped":
            logger.warning(
                "slide #%d skipped: %s",
                outcome.row,
                _scrub(outcome.reason, config.slides_root / outcome.slide),
            )
        if progress:
            progress(outcome)
        if time.perf_counter() - last_write > REPORT_INTERVAL:
            _write_report(config, report(complete=False))
            memo.save(memo_path)
            last_write = time.perf_counter()

    # Hash, find duplicates and cache hits here; only the rest is decoded.
    jobs: list[_Job] = []
    seen: dict[str, int] = {}
    params = _tiling_params(config.tiling)
    for row, entry in enumerate(manifest.rows, start=1):
        path = config.slides_root / entry.slide
        if not path.exists():
            record(
                SlideOutcome(
                    slide=entry.slide,
                    status="skipped",
                    reason="file named in the manifest does not exist",
                    row=row,
                )
            )
            continue
        try:
            digest = memo.sha256(path)
        except OSError as exc:
            record(
                SlideOutcome(
                    slide=entry.slide,
                    status="skipped",
                    reason=f"cannot read the file ({exc.strerror or exc})",
                    row=row,
                )
            )
            continue
        if digest in seen:
            record(
                SlideOutcome(
                    slide=entry.slide,
                    status="skipped",
                    reason=f"same content as manifest slide #{seen[digest]} "
                    "(a copy of it)",
                    row=row,
                )
            )
            continue
        seen[digest] = row
        key = cache_key(digest, encoder_id, params)
        if cache.has(key):
            n = len(cache.load(key))
            record(
                SlideOutcome(
                    slide=entry.slide, status="cached", tiles=n, key=key, row=row
                )
            )
            continue
        reason = cache.load_skip(key)
        if reason is not None:
            record(
                SlideOutcome(
                    slide=entry.slide, status="skipped", reason=reason, row=row
                )
            )
            continue
        jobs.append(_Job(row=row, slide=entry.slide, path=path, digest=digest, key=key))
    memo.save(memo_path)

    if features.encoder.startswith("timm:"):
        _run_in_main(config, features, jobs, n_workers, record)
    else:
        _run_in_workers(config, features, jobs, n_workers, record)

    final = report(complete=True)
    _write_report(config, final)
    memo.save(memo_path)
    return final


def _run_in_workers(
    config: SiteConfig,
    features: FeaturesSection,
    jobs: list[_Job],
    n_workers: int,
    record: Callable[[SlideOutcome], None],
) -> None:
    def args(job: _Job) -> tuple[str, Path, TilingSection, FeaturesSection, Path]:
        return (job.slide, job.path, config.tiling, features, config.cache_dir)

    if n_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            record(prepare_slide(*args(job), content_hash=job.digest, row=job.row))
        return
    with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs))) as pool:
        futures = [
            pool.submit(prepare_slide, *args(job), content_hash=job.digest, row=job.row)
            for job in jobs
        ]
        for fut in as_completed(futures):
            record(fut.result())


def _run_in_main(
    config: SiteConfig,
    features: FeaturesSection,
    jobs: list[_Job],
    n_workers: int,
    record: Callable[[SlideOutcome], None],
) -> None:
    if not jobs:
        return
    encoder = get_encoder(
        features.encoder, weights=features.weights, batch_size=features.batch_size
    )
    pool = ProcessPoolExecutor(max_workers=n_workers) if n_workers > 1 else None
    try:
        for job in jobs:
            record(
                _prepare_in_main(
                    job.slide,
                    job.path,
                    job.row,
                    job.digest,
                    job.key,
                    config,
                    encoder,
                    pool,
                    window=2 * n_workers,
                )
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


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
