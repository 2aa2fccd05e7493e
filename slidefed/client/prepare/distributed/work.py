"""What runs on a cluster node: plan a slide, read and encode a region of it.

Plain functions of plain values, without Ray: the scheduler
(:mod:`slidefed.client.prepare.distributed.scheduler`) runs them as Ray tasks.
A node reads the slide at the same path as the machine that runs ``site
prepare`` (the site's slide store, mounted on every node) and returns features
and tile positions; only that machine writes the feature cache.

The tiles are cut and batched exactly as a local run cuts and batches them
(regions start on whole feature batches), so the features are the same, bit
for bit, as those of :func:`slidefed.client.prepare.slide.prepare_slide`.

With ``[qc]`` enabled, the task that plans a slide assesses it (the QC masks the
grid is laid on) and returns the masks; every region of the slide filters its
tiles with those same masks (the driver sends them), and returns its tiles'
tally, from which the driver makes the slide's QC record.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import FeaturesSection, QcSection, TilingSection
from slidefed.client.prepare.encoders import Encoder, get_encoder
from slidefed.client.prepare.qc.checker import SlideChecker
from slidefed.client.prepare.qc.masks import SlideMasks
from slidefed.client.prepare.qc.tiles import TileTally
from slidefed.client.prepare.slide import _collect
from slidefed.client.prepare.tiling import TileGrid, iter_tiles, plan_tiles
from slidefed.client.slides.base import SlideSource
from slidefed.client.slides.sniff import open_slide
from slidefed.common.errors import SlideDecodeRefused, SlideReadError


@dataclass(frozen=True)
class SlideWork:
    """One slide to prepare, as a node needs it.

    Attributes
    ----------
    row : int
        The slide's row in the manifest (for messages).
    path : str
        The slide file (or DICOM folder), the same path on every node.
    tiling, features : TilingSection, FeaturesSection
        The site's settings (weights resolved to an absolute path).
    max_tile_pixels : int
        The site's cap on pixels per stored tile.
    region_tiles : int
        Tiles per region; a slide with more is split (see :func:`region_bounds`).
    qc : QcSection or None
        The site's ``[qc]`` when it is enabled, else None (no QC).
    """

    row: int
    path: str
    tiling: TilingSection
    features: FeaturesSection
    max_tile_pixels: int
    region_tiles: int
    qc: QcSection | None = None


@dataclass(frozen=True)
class RegionDone:
    """Features of the readable tiles of a region (or of a whole small slide).

    With QC, ``tally`` counts the region's tiles QC saw and dropped; a whole
    small slide also brings its QC ``masks`` and its ``grid``.
    """

    features: NDArray[np.float32]
    coords: list[tuple[int, int]]
    failed: list[str]
    decoded: int
    tally: TileTally | None = None
    masks: SlideMasks | None = None
    grid: TileGrid | None = None


@dataclass(frozen=True)
class SlidePlan:
    """A large slide's tile grid, its regions (index ranges into ``coords``),
    and its QC masks (None without QC), which every region filters with."""

    grid: TileGrid
    regions: list[tuple[int, int]]
    masks: SlideMasks | None = None


@dataclass(frozen=True)
class SlideSkip:
    """Why a slide gives no features; ``remember`` when the slide caused it."""

    reason: str
    remember: bool


@dataclass(frozen=True)
class NodeFacts:
    """What one node reports before it gets work."""

    host: str
    pid: int
    version: str
    slides_visible: bool


SlideStart = RegionDone | SlidePlan | SlideSkip

# Encoders loaded by this (long-lived worker) process, so a network loads once.
_ENCODERS: dict[tuple[str, str, int], Encoder] = {}


def _encoder(features: FeaturesSection) -> Encoder:
    key = (features.encoder, str(features.weights or ""), features.batch_size)
    if key not in _ENCODERS:
        _ENCODERS[key] = get_encoder(
            features.encoder, weights=features.weights, batch_size=features.batch_size
        )
    return _ENCODERS[key]


def remembered(exc: SlideReadError) -> bool:
    """Whether a skip is the slide's own fault, to be kept in the cache.

    The rule of a local run: not a refusal by the pixel cap (the site may raise
    it), nor a failure that an ``OSError`` (a disk, a mount) caused.
    """
    if isinstance(exc, SlideDecodeRefused):
        return False
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    return cause is None


def region_bounds(
    n_tiles: int, region_tiles: int, batch_size: int
) -> list[tuple[int, int]]:
    """Index ranges of the regions of a grid of ``n_tiles`` tiles.

    A region holds ``region_tiles`` rounded up to whole batches of
    ``batch_size``, so that its batches are those of a local run.
    """
    step = math.ceil(region_tiles / batch_size) * batch_size
    return [(i, min(i + step, n_tiles)) for i in range(0, n_tiles, step)]


def _checker(
    work: SlideWork, slide: SlideSource, masks: SlideMasks | None
) -> SlideChecker | None:
    """The slide's QC (None without QC): with its ``masks``, or assessed here
    (the same masks: the assessment reads only the slide)."""
    if work.qc is None:
        return None
    checker = SlideChecker(work.qc, work.features.encoder, masks)
    if masks is None:
        checker.assess(slide)
    return checker


def _encode(
    slide: SlideSource,
    grid: TileGrid,
    features: FeaturesSection,
    checker: SlideChecker | None,
) -> RegionDone:
    """Read, filter (with QC) and encode ``grid``'s tiles as a local run does."""
    encoder = _encoder(features)
    before = int(getattr(slide, "tiles_decoded", 0))
    batches = iter_tiles(slide, grid, features.batch_size, skip_unreadable=True)
    if checker is not None:
        batches = checker.filter(batches)
    parts, coords, failed = _collect(batches, encoder)
    feats = np.concatenate(parts) if parts else np.empty((0, encoder.dim), np.float32)
    decoded = int(getattr(slide, "tiles_decoded", 0)) - before
    return RegionDone(
        features=feats,
        coords=coords,
        failed=failed,
        decoded=decoded,
        tally=checker.tally if checker is not None else None,
    )


def start_slide(work: SlideWork) -> SlideStart:
    """Plan a slide's tiles (after its QC assessment); encode them here when
    they make one region.

    Never raises for a bad slide: it gives a :class:`SlideSkip`.
    """
    try:
        with open_slide(Path(work.path), max_tile_pixels=work.max_tile_pixels) as slide:
            checker = None
            if work.qc is not None:
                checker = SlideChecker(work.qc, work.features.encoder)
            mask = checker.assess(slide) if checker is not None else None
            grid = plan_tiles(slide, work.tiling, mask=mask)
            if not grid.coords:
                raise SlideReadError(work.path, "no tissue found")
            regions = region_bounds(
                len(grid.coords), work.region_tiles, work.features.batch_size
            )
            masks = checker.masks if checker is not None else None
            if len(regions) > 1:
                return SlidePlan(grid=grid, regions=regions, masks=masks)
            done = _encode(slide, grid, work.features, checker)
            return replace(done, masks=masks, grid=grid)
    except SlideReadError as exc:
        return SlideSkip(reason=exc.reason, remember=remembered(exc))


def read_region(
    work: SlideWork, grid: TileGrid, masks: SlideMasks | None = None
) -> RegionDone | SlideSkip:
    """Read and encode the tiles of one region (``grid`` holds only its tiles).

    ``masks`` are the slide's QC masks (from its :class:`SlidePlan`; assessed
    again here when missing): the region's tiles are filtered as the whole
    slide's are in a local run.
    """
    try:
        with open_slide(Path(work.path), max_tile_pixels=work.max_tile_pixels) as slide:
            checker = _checker(work, slide, masks)
            return _encode(slide, grid, work.features, checker)
    except SlideReadError as exc:
        return SlideSkip(reason=exc.reason, remember=remembered(exc))


def node_facts(paths: list[str]) -> NodeFacts:
    """This node's host, slidefed version, and whether it sees ``paths``."""
    from slidefed import __version__

    return NodeFacts(
        host=socket.gethostname(),
        pid=os.getpid(),
        version=__version__,
        slides_visible=all(Path(p).exists() for p in paths),
    )


__all__ = [
    "NodeFacts",
    "RegionDone",
    "SlidePlan",
    "SlideSkip",
    "SlideStart",
    "SlideWork",
    "node_facts",
    "read_region",
    "region_bounds",
    "remembered",
    "start_slide",
]
