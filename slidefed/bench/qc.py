"""``slidefed bench qc``: what QC adds to preparing a slide, as a ratio in one run.

Each slide is prepared from scratch (an empty feature cache each time) with the
site's defaults and the ``hed`` encoder, once without QC and once with the
default ``[qc]`` (thumbnail assessment, focus and exposure of every tile, the
record and its drawn thumbnail), the two interleaved so that machine noise hits
both alike. The goal: QC adds at most 20 % (``ratio_qc_to_plain`` <= 1.2).

The slides: synthetic ones made here, plus the real reference slides of the
shared data (``$SLIDEFED_SHARED_DATA`` or ``../shared/data``) when present.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from slidefed.bench.timing import interleaved_medians
from slidefed.client.config import FeaturesSection, QcSection, TilingSection

#: The goal: QC adds at most this share to the preparation time.
MAX_QC_OVERHEAD = 0.2

REAL_SLIDES = (
    "slides/aperio/CMU-1-Small-Region.svs",
    "slides/hamamatsu/test3-DAPI-2-(387).ndpi",
    "slides/ome-tiff/OS-2-vsi.ome.tif",
)


def bench_slides(folder: Path, *, synthetic: int = 2) -> list[Path]:
    """Synthetic slides written to ``folder``, and the real ones found."""
    from slidefed.demo.synth.slide_writer import write_synthetic_slide

    slides = []
    for i in range(synthetic):
        path = folder / f"synth-{i}.tif"
        write_synthetic_slide(path, seed=100 + i, tumour=bool(i % 2), width=3072)
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


def bench_qc(*, reps: int = 3) -> dict[str, Any]:
    """Seconds to prepare the bench slides without and with QC, and the ratio.

    Parameters
    ----------
    reps : int
        Interleaved repetitions of each variant (the median is reported).

    Returns
    -------
    dict
        ``plain_seconds``, ``qc_seconds``, ``ratio_qc_to_plain``, the slides
        and tiles, and whether the goal (QC adds <= 20 %) is met.
    """
    with tempfile.TemporaryDirectory(prefix="slidefed-bench-qc-") as tmp:
        work = Path(tmp)
        slides = bench_slides(work)
        counts: dict[str, int] = {}

        def variant(name: str, qc: QcSection | None) -> Any:
            def run() -> None:
                counts[name] = _prepare_all(slides, work, qc)

            return run

        started = time.perf_counter()
        medians = interleaved_medians(
            {"plain": variant("plain", None), "qc": variant("qc", QcSection())},
            reps=reps,
            warmup=1,
        )
    ratio = medians["qc"] / medians["plain"]
    return {
        "slides": [p.name for p in slides],
        "encoder": "hed",
        "reps": reps,
        "plain_seconds": round(medians["plain"], 3),
        "qc_seconds": round(medians["qc"], 3),
        "tiles_plain": counts.get("plain", 0),
        "tiles_qc": counts.get("qc", 0),
        "ratio_qc_to_plain": round(ratio, 3),
        "goal_qc_overhead_at_most_20pct": ratio <= 1.0 + MAX_QC_OVERHEAD,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


__all__ = ["MAX_QC_OVERHEAD", "REAL_SLIDES", "bench_qc", "bench_slides"]
