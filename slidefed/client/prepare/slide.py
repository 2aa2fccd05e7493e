"""One slide becomes features: open, plan the tile grid, read, encode, cache.

Two ways to read a slide's tiles (see :mod:`slidefed.client.prepare.pipeline`
for when each is used):

* :func:`prepare_slide`: this process reads the tiles and encodes them (a
  worker process of the ``hed`` encoder, or a single-process run).
* :func:`prepare_slide_in_main`: the main process holds the encoder; a pool of
  reader processes decodes chunks of tiles ahead and sends them back.

A bad slide never raises: it gives a ``skipped`` outcome with the reason, and a
skip caused by the slide itself is remembered in the cache. A slide refused for
a stored tile past the site's pixel cap
(:class:`~slidefed.common.errors.SlideDecodeRefused`) is skipped too, but not
remembered: the next ``site prepare`` checks it again against the cap then in
force, still without decoding the refused tile.

With ``[qc]`` enabled (the default of a site), each slide goes through its QC
(:mod:`slidefed.client.prepare.qc`): the tile grid is laid on the QC mask (pen
ink and folds left out), tiles that fail focus or exposure are dropped before
they are encoded, and a slide that fails QC is skipped and remembered like an
unreadable one. Its QC record and thumbnail go to ``state/qc``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import (
    MAX_TILE_PIXELS,
    FeaturesSection,
    QcSection,
    SiteConfig,
    TilingSection,
)
from slidefed.client.prepare.cache import FeatureCache, cache_key, slide_sha256
from slidefed.client.prepare.encoders import Encoder, get_encoder, submitter
from slidefed.client.prepare.qc.checker import QcStore, SlideChecker
from slidefed.client.prepare.report import SlideOutcome
from slidefed.client.prepare.tile_workers import read_tile_chunk
from slidefed.client.prepare.tiling import (
    GRID_VERSION,
    MppMissing,
    TileBatch,
    TileGrid,
    iter_tiles,
    plan_tiles,
)
from slidefed.client.slides.dicomweb_ref import DicomWebRef
from slidefed.client.slides.sniff import open_slide
from slidefed.common.errors import SlideDecodeRefused, SlideReadError

# Features of the tiles read, their level-0 positions, and why tiles failed.
_Collected = tuple[list[NDArray[np.float32]], list[tuple[int, int]], list[str]]


def tiling_params(
    tiling: TilingSection, qc: QcSection | None = None
) -> dict[str, object]:
    """The tiling parameters that key the feature cache (QC's thresholds too)."""
    params: dict[str, object] = {
        "target_mpp": tiling.target_mpp,
        "tile_size": tiling.tile_size,
        "tissue_fraction": tiling.tissue_fraction,
        "fallback_mpp": tiling.fallback_mpp,
        "grid": GRID_VERSION,
    }
    if qc is not None and qc.enabled:
        params["qc"] = qc.model_dump(mode="json", exclude={"thumbnails", "enabled"})
    return params


def key_params(tiling: TilingSection, qc: QcSection | None = None) -> dict[str, object]:
    """The parameters in a slide's cache key: :func:`tiling_params` without the
    site's ``fallback_mpp``, which only slides without their own mpp use (their
    cache entries record it; see :meth:`FeatureCache.fallback_mpp`)."""
    return {**tiling_params(tiling, qc), "fallback_mpp": None}


def _content_hash(path: Path | DicomWebRef) -> str:
    """The slide's content hash: of its files, or its series on the archive."""
    if isinstance(path, DicomWebRef):
        from slidefed.client.slides.dicomweb import slide_digest

        return slide_digest(path)
    return slide_sha256(path)


def known_outcome(
    cache: FeatureCache,
    key: str,
    slide_rel: str,
    row: int,
    *,
    qc_dir: Path | None = None,
    fallback_mpp: float | None = None,
) -> SlideOutcome | None:
    """The outcome of a slide whose features, or skip, are cached; else None.

    ``fallback_mpp`` is the site's ``tiling.fallback_mpp`` now: features that
    stood on another fallback are not taken (the slide is prepared again).
    """
    record = QcStore(qc_dir).load(key) if qc_dir is not None else None
    verdict = record.verdict if record is not None else ""
    if cache.has(key) and cache.fallback_mpp(key) in (None, fallback_mpp):
        n = len(cache.load(key))
        return SlideOutcome(
            slide=slide_rel, status="cached", tiles=n, key=key, row=row, qc=verdict
        )
    reason = cache.load_skip(key, fallback_mpp=fallback_mpp)
    if reason is not None:
        return SlideOutcome(
            slide=slide_rel,
            status="skipped",
            reason=reason,
            row=row,
            key=key if record is not None else "",
            qc=verdict,
        )
    return None


def _skipped(slide_rel: str, row: int, exc: SlideReadError) -> SlideOutcome:
    """The outcome of a slide skipped for ``exc``."""
    return SlideOutcome(slide=slide_rel, status="skipped", reason=exc.reason, row=row)


def _remember_skip(
    cache: FeatureCache, key: str, exc: SlideReadError, fallback_mpp: float | None
) -> None:
    """Remember a skip caused by the slide itself, not by a failing disk or mount.

    Unreadable tiles are not remembered either: they may come from the storage;
    nor a refusal by the pixel cap, which the site may raise, nor a missing
    mpp, which the site may give as ``tiling.fallback_mpp``. The record holds
    while the site's ``fallback_mpp`` stays as it is (the skip may stand on it).
    """
    if isinstance(exc, SlideDecodeRefused | MppMissing):
        return
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if cause is None:
        cache.save_skip(key, exc.reason, fallback_mpp=fallback_mpp)


def _collect(batches: Iterable[TileBatch], encoder: Encoder) -> _Collected:
    """Encode each batch; an encoder that can work ahead gets the next batch
    read (and sent to its device) while it computes this one."""
    parts: list[NDArray[np.float32]] = []
    coords: list[tuple[int, int]] = []
    failed: list[str] = []
    submit = submitter(encoder)
    pending: Callable[[], NDArray[np.float32]] | None = None
    for batch in batches:
        failed.extend(reason for _, reason in batch.failed)
        if not batch.coords:
            continue
        if submit is None:
            parts.append(encoder.encode(batch.tiles))
        else:
            started = submit(batch.tiles)
            if pending is not None:
                parts.append(pending())
            pending = started
        coords.extend(batch.coords)
    if pending is not None:
        parts.append(pending())
    return parts, coords, failed


def _qc_verdict(
    checker: SlideChecker | None,
    qc_dir: Path | None,
    *,
    slide_rel: str,
    row: int,
    key: str,
    grid: TileGrid | None,
) -> tuple[str, str, int]:
    """Record the slide's QC; its verdict, the reason to skip it, tiles dropped."""
    if checker is None or grid is None:
        return "", "", 0
    record = checker.record(slide=slide_rel, row=row, key=key, grid=grid)
    if qc_dir is not None:
        QcStore(qc_dir).save(record, checker.masks, thumbnail=checker.qc.thumbnails)
    dropped = record.tiles_seen - record.tiles_kept
    if record.verdict == "fail":
        return record.verdict, f"failed QC: {'; '.join(record.reasons)}", dropped
    return record.verdict, "", dropped


def _finish(
    slide_rel: str,
    row: int,
    key: str,
    cache: FeatureCache,
    collected: _Collected,
    decoded: int,
    start: float,
    qc: tuple[str, str, int] = ("", "", 0),
    fallback_mpp: float | None = None,
) -> SlideOutcome:
    """Save a slide's features (if any) and describe the outcome.

    ``qc`` is the slide's QC verdict, the reason it failed QC ("" when it did
    not) and the tiles QC dropped; ``fallback_mpp`` the site's fallback the
    grid stood on (:attr:`TileGrid.fallback_mpp`).
    """
    parts, coords, failed = collected
    verdict, qc_reason, qc_dropped = qc
    seconds = round(time.perf_counter() - start, 3)
    if qc_reason or not coords:
        reason = qc_reason or f"all {len(failed)} tissue tiles unreadable ({failed[0]})"
        if qc_reason:
            cache.save_skip(key, reason, fallback_mpp=fallback_mpp)
        return SlideOutcome(
            slide=slide_rel,
            status="skipped",
            reason=reason,
            row=row,
            key=key if qc_reason else "",
            unreadable_tiles=len(failed),
            decoded_tiles=decoded,
            seconds=seconds,
            qc=verdict,
            qc_dropped_tiles=qc_dropped,
        )
    feats = np.concatenate(parts).astype(np.float32)
    cache.save(
        key, feats, np.asarray(coords, dtype=np.int64), fallback_mpp=fallback_mpp
    )
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
        qc=verdict,
        qc_dropped_tiles=qc_dropped,
    )


def _read_and_encode(
    path: Path | DicomWebRef,
    tiling: TilingSection,
    batch_size: int,
    encoder: Encoder,
    *,
    cache: FeatureCache,
    key: str,
    max_tile_pixels: int,
    checker: SlideChecker | None = None,
) -> tuple[_Collected, int, TileGrid]:
    """Encode the tissue tiles of one slide, read here; the tiles decoded; the grid.

    A :class:`SlideReadError` is remembered in ``cache`` under ``key`` when the
    slide itself caused it, then raised.
    """
    try:
        with open_slide(path, max_tile_pixels=max_tile_pixels) as slide:
            mask = checker.assess(slide) if checker is not None else None
            grid = plan_tiles(slide, tiling, mask=mask)
            if not grid.coords:
                raise SlideReadError(str(path), "no tissue found")
            batches = iter_tiles(slide, grid, batch_size, skip_unreadable=True)
            if checker is not None:
                batches = checker.filter(batches)
            collected = _collect(batches, encoder)
            return collected, int(getattr(slide, "tiles_decoded", 0)), grid
    except SlideReadError as exc:
        _remember_skip(cache, key, exc, tiling.fallback_mpp)
        raise


def prepare_slide(
    slide_rel: str,
    path: Path | DicomWebRef,
    tiling: TilingSection,
    features: FeaturesSection,
    cache_root: Path,
    *,
    content_hash: str | None = None,
    encoder: Encoder | None = None,
    row: int = 0,
    max_tile_pixels: int = MAX_TILE_PIXELS,
    qc: QcSection | None = None,
    qc_dir: Path | None = None,
) -> SlideOutcome:
    """Features of one slide, from the cache when its content is unchanged.

    Parameters
    ----------
    slide_rel : str
        The slide as the manifest names it.
    path : Path or DicomWebRef
        The slide file (or DICOM folder), or a series on the DICOMweb archive.
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
    max_tile_pixels : int
        The site's cap on pixels per stored tile (``[prepare]``); a slide with
        a tile past it is skipped, that tile undecoded.
    qc : QcSection, optional
        The site's ``[qc]``; None (or ``enabled = false``): no QC.
    qc_dir : Path, optional
        Where QC records and thumbnails go (``state/qc``).

    Returns
    -------
    SlideOutcome
        ``ok``, ``cached`` or ``skipped`` with a reason; never raises for a bad
        slide.
    """
    start = time.perf_counter()
    cache = FeatureCache(cache_root)
    try:
        if isinstance(path, Path) and not path.exists():
            raise SlideReadError(str(path), "file named in the manifest does not exist")
        enc = encoder or get_encoder(
            features.encoder, weights=features.weights, batch_size=features.batch_size
        )
        digest = content_hash or _content_hash(path)
        key = cache_key(digest, enc.encoder_id, key_params(tiling, qc))
        fb = tiling.fallback_mpp
        known = known_outcome(
            cache, key, slide_rel, row, qc_dir=qc_dir, fallback_mpp=fb
        )
        if known is not None:
            return known
        checker = SlideChecker(qc, features.encoder) if qc and qc.enabled else None
        collected, decoded, grid = _read_and_encode(
            path,
            tiling,
            features.batch_size,
            enc,
            cache=cache,
            key=key,
            max_tile_pixels=max_tile_pixels,
            checker=checker,
        )
    except SlideReadError as exc:
        return _skipped(slide_rel, row, exc)
    verdict = _qc_verdict(
        checker, qc_dir, slide_rel=slide_rel, row=row, key=key, grid=grid
    )
    done = (slide_rel, row, key, cache, collected, decoded, start, verdict)
    return _finish(*done, fallback_mpp=grid.fallback_mpp)


# ------------------------------------------------------------- main-process mode
def _read_ahead(
    pool: ProcessPoolExecutor | None,
    path: Path | DicomWebRef,
    grid: TileGrid,
    batch_size: int,
    window: int,
    max_tile_pixels: int,
) -> Iterator[TileBatch]:
    """Tile batches in order, read by ``pool`` with ``window`` chunks in flight."""
    chunks = [
        grid.coords[i : i + batch_size] for i in range(0, len(grid.coords), batch_size)
    ]
    if pool is None:
        with open_slide(path, max_tile_pixels=max_tile_pixels) as slide:
            yield from iter_tiles(slide, grid, batch_size, skip_unreadable=True)
        return
    pending: deque[Future[TileBatch]] = deque()
    todo = iter(chunks)

    def submit(chunk: list[tuple[int, int]]) -> Future[TileBatch]:
        return pool.submit(
            read_tile_chunk,
            path if isinstance(path, DicomWebRef) else str(path),
            grid,
            chunk,
            max_tile_pixels=max_tile_pixels,
        )

    try:
        for chunk in todo:
            pending.append(submit(chunk))
            if len(pending) >= window:
                break
        while pending:
            batch = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield batch
    finally:
        for future in pending:  # a refused slide: its other chunks are not read
            future.cancel()


def prepare_slide_in_main(
    slide_rel: str,
    path: Path | DicomWebRef,
    *,
    row: int,
    key: str,
    config: SiteConfig,
    encoder: Encoder,
    pool: ProcessPoolExecutor | None,
    window: int,
) -> SlideOutcome:
    """Features of one uncached slide, encoded here from tiles ``pool`` reads.

    ``window`` chunks of tiles are in flight at once; without a pool the tiles
    are read here. Never raises for a bad slide.
    """
    start = time.perf_counter()
    cache = FeatureCache(config.cache_dir)
    cap = config.prepare.max_tile_pixels
    qc = config.qc
    checker = SlideChecker(qc, config.features.encoder) if qc.enabled else None
    try:
        with open_slide(path, max_tile_pixels=cap) as slide:
            mask = checker.assess(slide) if checker is not None else None
            grid = plan_tiles(slide, config.tiling, mask=mask)
        if not grid.coords:
            raise SlideReadError(str(path), "no tissue found")
        batches = _read_ahead(pool, path, grid, config.features.batch_size, window, cap)
        if checker is not None:
            batches = checker.filter(batches)
        collected = _collect(batches, encoder)
    except SlideReadError as exc:
        _remember_skip(cache, key, exc, config.tiling.fallback_mpp)
        return _skipped(slide_rel, row, exc)
    decoded = len(collected[1]) + len(collected[2]) + _checker_dropped(checker)
    verdict = _qc_verdict(
        checker, config.qc_dir, slide_rel=slide_rel, row=row, key=key, grid=grid
    )
    done = (slide_rel, row, key, cache, collected, decoded, start, verdict)
    return _finish(*done, fallback_mpp=grid.fallback_mpp)


def _checker_dropped(checker: SlideChecker | None) -> int:
    """Tiles a slide's QC dropped so far (0 without QC)."""
    return sum(checker.tally.flaws.values()) if checker is not None else 0


__all__ = [
    "key_params",
    "known_outcome",
    "prepare_slide",
    "prepare_slide_in_main",
    "tiling_params",
]
