"""Tile reads in worker processes: each worker keeps its last slides open.

The parent process plans a slide's grid and sends chunks of its coordinates
to a process pool; :func:`read_tile_chunk` reads one chunk in a worker, where
:func:`worker_slide` keeps the slides of the last chunks open between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from slidefed.client.config import MAX_TILE_PIXELS
from slidefed.client.prepare.tiling import TileBatch, TileGrid, iter_tiles
from slidefed.client.slides.base import SlideSource
from slidefed.client.slides.dicomweb_ref import DicomWebRef
from slidefed.client.slides.sniff import open_slide


class _OpenSlides(LRUCache[str, SlideSource]):
    """Slides kept open by a worker process; the least recently used is closed."""

    def popitem(self) -> tuple[str, SlideSource]:
        path, slide = super().popitem()
        slide.close()
        return path, slide


# Slides kept open by a worker process between chunks of the same slide.
_MAX_OPEN = 2
_OPEN_SLIDES = _OpenSlides(maxsize=_MAX_OPEN)


def worker_slide(
    path: str | DicomWebRef, *, max_tile_pixels: int = MAX_TILE_PIXELS
) -> SlideSource:
    """The slide at ``path``, kept open in this (worker) process between calls."""
    key = path.key if isinstance(path, DicomWebRef) else str(path)
    slide = _OPEN_SLIDES.get(key)
    if slide is None:
        source = path if isinstance(path, DicomWebRef) else Path(path)
        slide = open_slide(source, max_tile_pixels=max_tile_pixels)
        _OPEN_SLIDES[key] = slide
    return slide


def read_tile_chunk(
    path: str | DicomWebRef,
    grid: TileGrid,
    coords: Sequence[tuple[int, int]],
    *,
    skip_unreadable: bool = True,
    max_tile_pixels: int = MAX_TILE_PIXELS,
) -> TileBatch:
    """Read some tiles of a slide in a worker process (the slide stays open).

    Meant for a process pool: the parent plans the grid and sends chunks of
    coordinates; each worker keeps its last slides open between chunks.
    """
    slide = worker_slide(path, max_tile_pixels=max_tile_pixels)
    batches = list(
        iter_tiles(
            slide,
            grid,
            max(len(coords), 1),
            coords=coords,
            skip_unreadable=skip_unreadable,
            planned=False,
        )
    )
    if not batches:
        ts = grid.tile_size
        return TileBatch([], np.empty((0, ts, ts, 3), np.uint8), [])
    return batches[0]


__all__ = ["read_tile_chunk", "worker_slide"]
