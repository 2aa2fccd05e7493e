"""``slidefed bench features``: whole slide -> features against the encoder alone.

Three measurements on the same tiles of one slide, interleaved, in one run:

* ``decode``: reader processes decode the tissue tiles (``read_tile_chunk``), the
  pipeline's decode workers;
* ``encoder``: the encoder alone on those tiles, already decoded in memory;
* ``whole``: what ``site prepare`` does for an uncached slide
  (:func:`~slidefed.client.prepare.slide.prepare_slide_in_main`): tissue mask,
  grid, decode workers reading ahead, encoding, writing the cache.

``ratio_to_encoder`` (whole tiles/s over encoder tiles/s) says how close the
pipeline comes to the encoder; 1.0 means decoding is entirely hidden.
"""

from __future__ import annotations

import csv
import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import (
    FeaturesSection,
    SiteConfig,
    SiteSection,
    TilingSection,
)
from slidefed.client.prepare.encoders import Encoder, TimmEncoder, get_encoder
from slidefed.client.prepare.slide import prepare_slide_in_main
from slidefed.client.prepare.tile_workers import read_tile_chunk
from slidefed.client.prepare.tiling import TileGrid, plan_tiles
from slidefed.client.slides.sniff import open_slide

logger = logging.getLogger(__name__)


def _bench_slide(folder: Path, size: int, seed: int) -> Path:
    """A synthetic slide of ``size`` x ``size`` px, written under ``folder``."""
    from slidefed.demo.synth import synth_site

    site = synth_site(folder, patients=1, seed=seed, width=size, height=size)
    with site.manifest.open() as fh:
        first = next(csv.DictReader(fh))
    return site.root / first["slide"]


def _encoder(
    name: str, weights: Path | None, features: FeaturesSection, seed: int
) -> Encoder:
    if weights is None and name.startswith("timm:"):  # random weights: timing only
        return TimmEncoder(
            name[5:],
            None,
            device=features.device,
            batch_size=features.batch_size,
            seed=seed,
            compile=features.compile,
        )
    return get_encoder(name, weights=weights, features=features)


def _decode(
    pool: ProcessPoolExecutor, path: Path, grid: TileGrid, batch: int
) -> NDArray[np.uint8]:
    chunks = [grid.coords[i : i + batch] for i in range(0, len(grid.coords), batch)]
    futures = [pool.submit(read_tile_chunk, str(path), grid, c) for c in chunks]
    return np.concatenate([f.result().tiles for f in futures])


def _device_name(encoder: Encoder) -> str:
    device = getattr(encoder, "device", None)
    if device is None:
        return "cpu"
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def bench_features(
    *,
    encoder: str = "timm:vit_small_patch16_224",
    weights: Path | None = None,
    slide: Path | None = None,
    size: int = 2048,
    workers: int = 2,
    batch_size: int = 64,
    reps: int = 3,
    device: str | None = None,
    compile: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Whole-slide features tiles/s over encoder-only tiles/s, same tiles, same run.

    Parameters
    ----------
    encoder : str
        ``timm:<arch>`` (random weights unless ``weights``), ``hf:<name>`` (a
        local folder in ``weights``) or ``hed``.
    weights : Path, optional
        Local weights file or folder.
    slide : Path, optional
        A slide to read (default: a synthetic ``size`` x ``size`` px slide).
    workers : int
        Decode worker processes.
    batch_size : int
        Tiles per chunk read and per forward pass.
    reps : int
        Interleaved repetitions; medians are reported.
    device : str, optional
        Encoder device (default: CUDA when available).
    compile : bool
        Run the model through ``torch.compile``.
    """
    with tempfile.TemporaryDirectory(prefix="slidefed-bench-features-") as tmp:
        root = Path(tmp)
        features = FeaturesSection(
            encoder=encoder,
            weights=weights,
            batch_size=batch_size,
            device=device,
            compile=compile,
        )
        enc = _encoder(encoder, weights, features, seed)
        path = slide or _bench_slide(root / "site", size, seed)
        tiling = TilingSection(
            tile_size=getattr(enc, "input_size", None) or 224, workers=workers
        )
        config = SiteConfig(
            site=SiteSection(name="bench", state_dir=root / "state"),
            tiling=tiling,
            features=features,
            base_dir=root,
        )
        with open_slide(path) as opened:
            grid = plan_tiles(opened, tiling)
        n = len(grid.coords)
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            times = _timed(enc, pool, path, grid, config, reps)
        finally:
            pool.shutdown()
    return _result(enc, encoder, weights, times, n, config, reps)


def _timed(
    enc: Encoder,
    pool: ProcessPoolExecutor,
    path: Path,
    grid: TileGrid,
    config: SiteConfig,
    reps: int,
) -> dict[str, list[float]]:
    """Seconds of each measurement, per repetition (after one warm-up round)."""
    batch = config.features.batch_size
    tiles = _decode(pool, path, grid, batch)  # warm: workers open the slide
    enc.encode(tiles[:batch])
    times: dict[str, list[float]] = {"decode": [], "encoder": [], "whole": []}
    for rep in range(reps + 1):
        start = time.perf_counter()
        tiles = _decode(pool, path, grid, batch)
        decode = time.perf_counter() - start
        start = time.perf_counter()
        enc.encode(tiles)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        outcome = prepare_slide_in_main(
            path.name,
            path,
            row=1,
            key=f"bench-{rep}",
            config=config,
            encoder=enc,
            pool=pool,
            window=2 * (config.tiling.workers or 1),
        )
        whole = time.perf_counter() - start
        if outcome.status != "ok":
            msg = f"bench slide gave no features: {outcome.reason}"
            raise RuntimeError(msg)
        if rep:  # the first round warms the whole path too
            times["decode"].append(decode)
            times["encoder"].append(encode)
            times["whole"].append(whole)
    return times


def _sig(x: float) -> float:
    """``x`` to 4 significant digits (a CPU gives a tile or two per second)."""
    return float(f"{x:.4g}")


def _result(
    enc: Encoder,
    name: str,
    weights: Path | None,
    times: dict[str, list[float]],
    n: int,
    config: SiteConfig,
    reps: int,
) -> dict[str, Any]:
    import torch

    rate = {k: n / statistics.median(v) for k, v in times.items()}
    return {
        "encoder": name,
        "encoder_id": enc.encoder_id,
        "weights": "random" if weights is None else Path(weights).name,
        "device": _device_name(enc),
        "dtype": "bfloat16" if getattr(enc, "bf16", False) else "float32",
        "compile": config.features.compile,
        "batch": int(getattr(enc, "batch_size", config.features.batch_size)),
        "workers": config.tiling.workers,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "tiles": n,
        "tile_size": config.tiling.tile_size,
        "input_size": getattr(enc, "input_size", None),
        "dim": enc.dim,
        "reps": reps,
        "decode_tiles_per_s": _sig(rate["decode"]),
        "encoder_tiles_per_s": _sig(rate["encoder"]),
        "whole_tiles_per_s": _sig(rate["whole"]),
        "ratio_to_encoder": round(rate["whole"] / rate["encoder"], 3),
        "ratio_decode_to_encoder": round(rate["decode"] / rate["encoder"], 3),
    }


__all__ = ["bench_features"]
