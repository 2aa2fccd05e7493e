"""``slidefed bench qc``: what QC adds to preparing a slide, as a ratio in one run.

Each slide is prepared from scratch (an empty feature cache each time) with the
site's defaults and the ``hed`` encoder, in this process, once without QC and
once with the default ``[qc]`` (thumbnail assessment, focus and exposure of every
tile, the record and its drawn thumbnail), the two interleaved. The ratio is on
the process's CPU time, which other work on a shared machine does not inflate
(wall time is reported too). The goal: QC adds at most 20 %
(``ratio_qc_to_plain`` <= 1.2).

The slides: synthetic ones made here, plus the real reference slides of the
shared data (``$SLIDEFED_SHARED_DATA`` or ``../shared/data``) when present.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from slidefed.client.config import FeaturesSection, QcSection, TilingSection

#: The goal: QC adds at most this share to the preparation time.
MAX_QC_OVERHEAD = 0.2

REAL_SLIDES = (
    "slides/aperio/CMU-1-Small-Region.svs",
    "slides/hamamatsu/test3-DAPI-2-(387).ndpi",
    "slides/ome-tiff/OS-2-vsi.ome.tif",
)


def bench_slides(folder: Path, *, synthetic: int = 2, side: int = 6144) -> list[Path]:
    """Synthetic slides (``side`` x 2/3 ``side`` px) in ``folder``, and the real ones.

    The real reference slides are small crops (50 to 70 tiles each), where the
    per-slide part of QC (the thumbnail) weighs most; ``side`` sets how much of
    the set looks like a whole slide instead.
    """
    from slidefed.demo.synth.slide_writer import write_synthetic_slide

    slides = []
    for i in range(synthetic):
        path = folder / f"synth-{i}.tif"
        write_synthetic_slide(
            path, seed=100 + i, tumour=bool(i % 2), width=side, height=side * 2 // 3
        )
        slides.append(path)
    env = os.environ.get("SLIDEFED_SHARED_DATA")
    shared = Path(env) if env else Path.cwd() / ".." / "shared" / "data"
    slides += [shared / rel for rel in REAL_SLIDES if (shared / rel).is_file()]
    return slides


def _prepare_all(slides: list[Path], work: Path, qc: QcSection | None) -> int:
    """Prepare every slide into a fresh cache; the tiles with features."""
    from slidefed.client.prepare.encoders import get_encoder
    from slidefed.client.prepare.slide import prepare_slide

    run = Path(tempfile.mkdtemp(dir=work))
    features = FeaturesSection()
    encoder = get_encoder("hed")
    tiles = 0
    for path in slides:
        outcome = prepare_slide(
            path.name,
            path,
            TilingSection(),
            features,
            run / "cache",
            encoder=encoder,
            qc=qc,
            qc_dir=run / "qc" if qc is not None else None,
        )
        tiles += outcome.tiles
    return tiles


def _interleaved(
    variants: dict[str, QcSection | None], slides: list[Path], work: Path, reps: int
) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Median wall and CPU seconds of each variant, run in rotating order."""
    names = list(variants)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    tiles: dict[str, int] = {}
    for name in names:  # warm-up: imports, encoder, page cache
        _prepare_all(slides, work, variants[name])
    for rep in range(reps):
        for name in names[rep % 2 :] + names[: rep % 2]:
            w0, c0 = time.perf_counter(), time.process_time()
            tiles[name] = _prepare_all(slides, work, variants[name])
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return (
        {n: statistics.median(v) for n, v in wall.items()},
        {n: statistics.median(v) for n, v in cpu.items()},
        tiles,
    )


def bench_qc(*, reps: int = 3, side: int = 6144) -> dict[str, Any]:
    """Seconds to prepare the bench slides without and with QC, and the ratio.

    The ratio is taken on CPU time (the work done; steady on a shared machine)
    and reported on wall time too.

    Parameters
    ----------
    reps : int
        Interleaved repetitions of each variant (the median is reported).
    side : int
        Width of the two synthetic slides (px).

    Returns
    -------
    dict
        ``plain_cpu_seconds``, ``qc_cpu_seconds``, ``ratio_qc_to_plain`` (CPU),
        the same on wall time, the slides and tiles, and whether the goal (QC
        adds <= 20 %) is met.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slidefed-bench-qc-") as tmp:
        work = Path(tmp)
        slides = bench_slides(work, side=side)
        variants = {"plain": None, "qc": QcSection()}
        wall, cpu, tiles = _interleaved(variants, slides, work, reps)
    ratio = cpu["qc"] / cpu["plain"]
    return {
        "slides": [p.name for p in slides],
        "encoder": "hed",
        "reps": reps,
        "plain_cpu_seconds": round(cpu["plain"], 3),
        "qc_cpu_seconds": round(cpu["qc"], 3),
        "ratio_qc_to_plain": round(ratio, 3),
        "plain_wall_seconds": round(wall["plain"], 3),
        "qc_wall_seconds": round(wall["qc"], 3),
        "wall_ratio_qc_to_plain": round(wall["qc"] / wall["plain"], 3),
        "tiles_plain": tiles["plain"],
        "tiles_qc": tiles["qc"],
        "goal_qc_overhead_at_most_20pct": ratio <= 1.0 + MAX_QC_OVERHEAD,
        "load_average": round(os.getloadavg()[0], 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


__all__ = ["MAX_QC_OVERHEAD", "REAL_SLIDES", "bench_qc", "bench_slides"]
