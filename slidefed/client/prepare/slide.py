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
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import (
    MAX_TILE_PIXELS,
    FeaturesSection,
    SiteConfig,
    TilingSection,
)
from slidefed.client.prepare.cache import FeatureCache, cache_key, slide_sha256
from slidefed.client.prepare.encoders import Encoder, get_encoder
from slidefed.client.prepare.report import SlideOutcome
from slidefed.client.prepare.tiling import (
    GRID_VERSION,
    MppMissing,
    TileBatch,
    TileGrid,
    iter_tiles,
    plan_tiles,
    read_tile_chunk,
)
from slidefed.client.slides.sniff import open_slide
from slidefed.common.errors import SlideDecodeRefused, SlideReadError

# Features of the tiles read, their level-0 positions, and why tiles failed.
_Collected = tuple[list[NDArray[np.float32]], list[tuple[int, int]], list[str]]


def tiling_params(tiling: TilingSection) -> dict[str, object]:
    """The tiling parameters that key the feature cache."""
    return {
        "target_mpp": tiling.target_mpp,
        "tile_size": tiling.tile_size,
        "tissue_fraction": tiling.tissue_fraction,
        "fallback_mpp": tiling.fallback_mpp,
        "grid": GRID_VERSION,
    }


class SlideKeys(NamedTuple):
    """The two cache keys a slide may have.

    ``own`` serves a slide that states its own mpp: ``tiling.fallback_mpp``
    plays no part in it, so adding or changing the fallback redoes only the
    slides that need it, whose features lie under ``fallback``. Without a
    fallback the two are the same key.
    """

    own: str
    fallback: str

    def of(self, slide: Any) -> str:
        """The key of an opened slide (by whether the file states an mpp)."""
        return self.own if getattr(slide, "mpp", None) else self.fallback


def slide_keys(digest: str, encoder_id: str, tiling: TilingSection) -> SlideKeys:
    """Both cache keys of a slide of content ``digest``."""
    params = tiling_params(tiling)
    own = cache_key(digest, encoder_id, {**params, "fallback_mpp": None})
    return SlideKeys(own=own, fallback=cache_key(digest, encoder_id, params))


def known_outcome(
    cache: FeatureCache, keys: SlideKeys, slide_rel: str, row: int
) -> SlideOutcome | None:
    """The outcome of a slide whose features, or skip, are cached; else None."""
    for key in dict.fromkeys(keys):
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
    return None


def _remember_skip(cache: FeatureCache, key: str, exc: SlideReadError) -> None:
    """Remember a skip caused by the slide itself, not by a failing disk or mount.

    Unreadable tiles are not remembered either: they may come from the storage;
    nor a refusal by the pixel cap, which the site may raise, nor a missing
    mpp, which the site may give as ``tiling.fallback_mpp``.
    """
    if isinstance(exc, SlideDecodeRefused | MppMissing):
        return
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if cause is None:
        cache.save_skip(key, exc.reason)


def _collect(
    batches: Iterable[TileBatch],
    encode: Callable[[NDArray[np.uint8]], NDArray[np.float32]],
) -> _Collected:
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
    collected: _Collected,
    decoded: int,
    start: float,
) -> SlideOutcome:
    """Save a slide's features (if any) and describe the outcome."""
    parts, coords, failed = collected
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


def _read_and_encode(
    path: Path,
    tiling: TilingSection,
    batch_size: int,
    encoder: Encoder,
    *,
    cache: FeatureCache,
    keys: SlideKeys,
    max_tile_pixels: int,
) -> tuple[_Collected, int, str]:
    """Encode the tissue tiles of one slide, read here; the tiles decoded; its key.

    A :class:`SlideReadError` is remembered in ``cache`` under the slide's key
    when the slide itself caused it, then raised.
    """
    key = keys.own
    try:
        with open_slide(path, max_tile_pixels=max_tile_pixels) as slide:
            key = keys.of(slide)
            grid = plan_tiles(slide, tiling)
            if not grid.coords:
                raise SlideReadError(str(path), "no tissue found")
            batches = iter_tiles(slide, grid, batch_size, skip_unreadable=True)
            collected = _collect(batches, encoder.encode)
            return collected, int(getattr(slide, "tiles_decoded", 0)), key
    except SlideReadError as exc:
        _remember_skip(cache, key, exc)
        raise


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
    max_tile_pixels: int = MAX_TILE_PIXELS,
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
        The slide's line in the manifest (header = 1), for the outcome.
    max_tile_pixels : int
        The site's cap on pixels per stored tile (``[prepare]``); a slide with
        a tile past it is skipped, that tile undecoded.

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
        keys = slide_keys(digest, enc.encoder_id, tiling)
        known = known_outcome(cache, keys, slide_rel, row)
        if known is not None:
            return known
        collected, decoded, key = _read_and_encode(
            path,
            tiling,
            features.batch_size,
            enc,
            cache=cache,
            keys=keys,
            max_tile_pixels=max_tile_pixels,
        )
    except SlideReadError as exc:
        return SlideOutcome(
            slide=slide_rel, status="skipped", reason=exc.reason, row=row
        )
    return _finish(slide_rel, row, key, cache, collected, decoded, start)


# ------------------------------------------------------------- main-process mode
def _read_ahead(
    pool: ProcessPoolExecutor | None,
    path: Path,
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
            read_tile_chunk, str(path), grid, chunk, max_tile_pixels=max_tile_pixels
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
    path: Path,
    *,
    row: int,
    keys: SlideKeys,
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
    key = keys.own
    try:
        with open_slide(path, max_tile_pixels=cap) as slide:
            key = keys.of(slide)
            grid = plan_tiles(slide, config.tiling)
        if not grid.coords:
            raise SlideReadError(str(path), "no tissue found")
        batches = _read_ahead(pool, path, grid, config.features.batch_size, window, cap)
        collected = _collect(batches, encoder.encode)
    except SlideReadError as exc:
        _remember_skip(cache, key, exc)
        return SlideOutcome(
            slide=slide_rel, status="skipped", reason=exc.reason, row=row
        )
    decoded = len(collected[1]) + len(collected[2])
    return _finish(slide_rel, row, key, cache, collected, decoded, start)


__all__ = [
    "SlideKeys",
    "known_outcome",
    "prepare_slide",
    "prepare_slide_in_main",
    "slide_keys",
    "tiling_params",
]
