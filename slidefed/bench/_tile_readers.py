"""The ways of reading a grid of tiles that ``slidefed bench tiling`` compares.

Each reader returns a callable that reads the whole grid once and returns the
number of tiles: slidefed's reader, the decode floor (each stored tile the grid
needs read and decoded once with imagecodecs, and nothing else) and a naive
tiffslide ``read_region`` loop.  Last, the comparison of one worker process
against two, each reading its share.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from slidefed.bench.timing import interleaved_medians
from slidefed.client.prepare.tile_workers import worker_slide
from slidefed.client.prepare.tiling import TileGrid, iter_tiles
from slidefed.client.slides import TiffSlideSource


def full_grid(
    slide: TiffSlideSource, *, level: int, read_size: int, tile_size: int
) -> TileGrid:
    """Every whole tile of ``level`` (no tissue filter), row by row."""
    width, height = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    step0 = read_size * ds
    coords = [
        (round(tx * step0), round(ty * step0))
        for ty in range(height // read_size)
        for tx in range(width // read_size)
    ]
    return TileGrid(
        level=level,
        read_size=read_size,
        tile_size=tile_size,
        mpp=0.5,
        coords=coords,
        level_downsample=ds,
    )


def stored_tiles_needed(path: Path, grid: TileGrid) -> list[int]:
    """Indices of the stored tiles under ``grid``, each once, in first-use order."""
    with tifffile.TiffFile(path) as tf:
        page: Any = tf.pages[grid.level]
        tw, th = int(page.tilewidth), int(page.tilelength)
        nx = math.ceil(int(page.imagewidth) / tw)
    indices: dict[int, None] = {}
    for x0, y0 in grid.coords:
        lx, ly = grid.level_xy((x0, y0))
        for ty in range(ly // th, (ly + grid.read_size - 1) // th + 1):
            for tx in range(lx // tw, (lx + grid.read_size - 1) // tw + 1):
                indices.setdefault(ty * nx + tx)
    return list(indices)


def _placed_floor(
    path: Path,
    tiles: int,
    jobs: list[tuple[int, int]],
    tables: Any,
    shape: tuple[int, int, int],
) -> Callable[[], int]:
    """The floor's JPEG decodes, each into the fastest of a few scratch buffers."""
    from imagecodecs import jpeg8_decode

    from slidefed.client.slides.scratch import decode_into_scratch

    def into(data: bytes, out: Any) -> Any:
        return jpeg8_decode(data, tables=tables, outcolorspace="RGB", out=out)

    def run() -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset, count in jobs:
                data = os.pread(fd, count, offset)
                decode_into_scratch(shape, functools.partial(into, data))
        finally:
            os.close(fd)
        return tiles

    return run


def floor_reader(
    path: Path, grid: TileGrid, *, write: bool = False, placed: bool = False
) -> Callable[[], int]:
    """Read and decode each stored tile under ``grid`` once, with imagecodecs only.

    A stored tile that several of the grid's tiles overlap (224-px tiles on
    256-px stored tiles) counts once: the floor is decoding what the grid
    needs, not what a tile-by-tile reader without a cache would decode.

    With ``write``, each decoded stored tile is then also copied once into
    batch arrays (64 tiles each, three in turn), as any reader has to put the
    pixels it delivers somewhere: the floor of decoding and writing, a
    diagnostic beside the floor itself.

    With ``placed``, each stored tile is decoded into the fastest of a few
    scratch buffers, as our reader decodes (:mod:`~slidefed.client.slides.
    scratch`), instead of into the array imagecodecs allocates, whose
    placement makes the same decodes up to 1.4x slower in some processes: the
    floor at its best placement, a diagnostic too.
    """
    import imagecodecs

    with tifffile.TiffFile(path) as tf:
        page: Any = tf.pages[grid.level]
        offsets = [int(o) for o in page.dataoffsets]
        counts = [int(c) for c in page.databytecounts]
        compression = int(page.compression)
        tables = page.jpegtables
    jobs = [(offsets[i], counts[i]) for i in stored_tiles_needed(path, grid)]
    if compression == 7:
        jpeg8_decode = imagecodecs.jpeg8_decode

        def decode(data: bytes) -> Any:
            return jpeg8_decode(data, tables=tables, outcolorspace="RGB")

    else:
        jpeg2k_decode = imagecodecs.jpeg2k_decode

        def decode(data: bytes) -> Any:
            return jpeg2k_decode(data, numthreads=1)

    def run() -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset, count in jobs:
                decode(os.pread(fd, count, offset))
        finally:
            os.close(fd)
        return len(grid.coords)

    if placed:
        if compression != 7:
            raise ValueError("the placed floor decodes JPEG only")
        shape = (int(page.tilelength), int(page.tilewidth), 3)
        return _placed_floor(path, len(grid.coords), jobs, tables, shape)
    if not write:
        return run
    shape = (int(page.tilelength), int(page.tilewidth), 3)
    batches = [np.empty((64, *shape), np.uint8) for _ in range(3)]

    def run_and_write() -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            for i, (offset, count) in enumerate(jobs):
                tile = decode(os.pread(fd, count, offset))
                batches[(i // 64) % 3][i % 64] = tile[: shape[0], : shape[1], :3]
        finally:
            os.close(fd)
        return len(grid.coords)

    return run_and_write


def ours_reader(slide: TiffSlideSource, grid: TileGrid) -> Callable[[], int]:
    def run() -> int:
        slide.clear_cache()
        n = 0
        for batch in iter_tiles(slide, grid, 64):
            n += len(batch.coords)
        return n

    return run


def naive_reader(ts: Any, grid: TileGrid) -> Callable[[], int]:
    """The naive loop: tiffslide ``read_region`` per tile over an open slide."""
    from PIL import Image

    def run() -> int:
        size = (grid.read_size, grid.read_size)
        for xy in grid.coords:
            arr = ts.read_region(xy, grid.level, size, as_array=True)
            if grid.resize:
                Image.fromarray(arr).resize(
                    (grid.tile_size, grid.tile_size), Image.Resampling.BILINEAR
                )
        return len(grid.coords)

    return run


def _count_tiles(
    path: str, grid: TileGrid, coords: list[tuple[int, int]]
) -> tuple[int, float]:
    """Worker: read its share of the tiles in batches, as ``site prepare`` does.

    Returns the tiles read and the CPU seconds this worker spent on them.
    """
    cpu = time.process_time()
    slide = worker_slide(path)
    if isinstance(slide, TiffSlideSource):
        slide.clear_cache()
    n = sum(len(b.coords) for b in iter_tiles(slide, grid, 64, coords=coords))
    return n, time.process_time() - cpu


def compare_processes(path: Path, *, reps: int, workers: int = 2) -> dict[str, Any]:
    """Tiles/s of one worker process against ``workers``, each with its share."""
    with TiffSlideSource(path) as slide:
        grid = full_grid(slide, level=0, read_size=256, tile_size=256)
    coords = grid.coords
    pools = {1: ProcessPoolExecutor(1), workers: ProcessPoolExecutor(workers)}
    cpu: dict[int, list[float]] = {1: [], workers: []}
    try:

        def runner(n: int) -> Callable[[], int]:
            # One contiguous share (rows of tiles) per worker and call.
            share = math.ceil(len(coords) / n)
            parts = [coords[i : i + share] for i in range(0, len(coords), share)]

            def run() -> int:
                futures = [
                    pools[n].submit(_count_tiles, str(path), grid, part)
                    for part in parts
                ]
                results = [f.result() for f in futures]
                cpu[n].append(max(c for _, c in results))
                return sum(k for k, _ in results)

            return run

        medians = interleaved_medians(
            {"one": runner(1), "two": runner(workers)}, reps=reps, warmup=1
        )
    finally:
        for pool in pools.values():
            pool.shutdown()
    one, two = len(coords) / medians["one"], len(coords) / medians["two"]
    # CPU time of the busiest worker over wall time: 1.0 when each worker had
    # a core to itself, lower when other work on the machine took its share.
    share_one = statistics.median(cpu[1]) / medians["one"]
    share_two = statistics.median(cpu[workers]) / medians["two"]
    # CPU cost per tile in each worker: equal when nothing is shared or
    # serialised between workers, so that free cores would scale throughput.
    cpu_one = statistics.median(cpu[1]) / len(coords)
    cpu_two = statistics.median(cpu[workers]) / math.ceil(len(coords) / workers)
    return {
        "tiles": len(coords),
        "workers": workers,
        "one_process_tiles_per_s": round(one, 1),
        "two_processes_tiles_per_s": round(two, 1),
        "speedup_2_processes": round(two / one, 3),
        "core_share_one_process": round(share_one, 3),
        "core_share_two_processes": round(share_two, 3),
        "cpu_ms_per_tile_one_process": round(cpu_one * 1e3, 4),
        "cpu_ms_per_tile_two_processes": round(cpu_two * 1e3, 4),
    }


__all__ = [
    "compare_processes",
    "floor_reader",
    "full_grid",
    "naive_reader",
    "ours_reader",
    "stored_tiles_needed",
]
