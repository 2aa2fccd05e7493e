"""``slidefed bench dicomweb``: tiles/s from a DICOMweb archive against local files.

One run starts a local Orthanc with its DICOMweb plugin (on 127.0.0.1, a free
port, a temporary database), stores the DICOM slides in it, and reads every
whole 224-px tile of each slide's level 0 two ways, with interleaved
repetitions: from the DICOM files on disk (``local``) and from the archive
(``dicomweb``: frames fetched ``batch_frames`` at a time, decoded the same
way). Each repetition starts cold (decoded tiles and fetched frames
forgotten); the slides are opened once, outside the timing, and the time an
open takes is reported apart. ``ratio_dicomweb_to_local`` is the headline:
what reading over the network costs against a local copy, on the same slides
in the same run.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from slidefed.bench.orthanc import OrthancServer
from slidefed.bench.timing import interleaved_medians
from slidefed.client.config import DicomWebSection
from slidefed.client.prepare.tiling import TileGrid, iter_tiles
from slidefed.client.slides import SlideSource, StoredTileReader, open_slide
from slidefed.client.slides.dicomweb_ref import DicomWebRef
from slidefed.common.errors import ConfigError

TILE = 224


def default_slides() -> list[Path]:
    """The shared DICOM slides: the CMU-1 series folder and the three test files."""
    root = Path(os.environ.get("SLIDEFED_SHARED_DATA", "../shared/data"))
    dicom = root / "slides" / "dicom"
    found = [dicom / "cmu-1-small-region"]
    found += sorted((dicom / "google-wsi2dcm-tests").glob("*.dicom"))
    missing = [p for p in found if not p.exists()]
    if missing:
        raise ConfigError(
            f"{missing[0]} not found; set SLIDEFED_SHARED_DATA or pass --slides "
            "with DICOM series (a file, or a folder of one series)"
        )
    return found


def _files(slide: Path) -> list[Path]:
    return (
        sorted(p for p in slide.iterdir() if p.is_file()) if slide.is_dir() else [slide]
    )


def _uids(slide: Path) -> tuple[str, str]:
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_files(slide)[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _grid(slide: SlideSource) -> TileGrid:
    width, height = slide.level_dimensions[0]
    coords = [
        (tx * TILE, ty * TILE)
        for ty in range(height // TILE)
        for tx in range(width // TILE)
    ]
    return TileGrid(level=0, read_size=TILE, tile_size=TILE, mpp=0.5, coords=coords)


def _reader(slides: list[tuple[SlideSource, TileGrid]]) -> Any:
    def run() -> int:
        n = 0
        for slide, grid in slides:
            if isinstance(slide, StoredTileReader):  # start cold
                slide.clear_cache()
            for batch in iter_tiles(slide, grid, 64):
                n += len(batch.coords)
        return n

    return run


def _open_all(sources: list[Path | DicomWebRef]) -> tuple[list[Any], float]:
    start = time.perf_counter()
    opened = [open_slide(s) for s in sources]
    return opened, time.perf_counter() - start


def bench_dicomweb(
    slides: list[Path] | None = None, *, reps: int = 5, batch_frames: int = 32
) -> dict[str, Any]:
    """Tiles/s of the same slides from DICOMweb and from local files.

    Raises
    ------
    ConfigError
        If Orthanc is not installed or a slide is missing.
    """
    paths = slides or default_slides()
    prefix = "slidefed-bench-dicomweb-"
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        OrthancServer(Path(tmp)) as server,
    ):
        server.store(f for p in paths for f in _files(p))
        endpoint = DicomWebSection(url=server.url, batch_frames=batch_frames)
        refs: list[Path | DicomWebRef] = []
        for path in paths:
            study, series = _uids(path)
            refs.append(
                DicomWebRef(study_uid=study, series_uid=series, endpoint=endpoint)
            )
        local, local_open = _open_all(list(paths))
        web, web_open = _open_all(refs)
        try:
            pairs_local = [(s, _grid(s)) for s in local]
            pairs_web = [(s, _grid(s)) for s in web]
            tiles = sum(len(g.coords) for _, g in pairs_local)
            medians = interleaved_medians(
                {"local": _reader(pairs_local), "dicomweb": _reader(pairs_web)},
                reps=reps,
                warmup=1,
            )
            requests = sum(s._archive.requests for s in web)
            fetched = sum(s.frames_fetched for s in web)
        finally:
            for s in [*local, *web]:
                s.close()
    local_tps = tiles / medians["local"]
    web_tps = tiles / medians["dicomweb"]
    return {
        "slides": [p.name for p in paths],
        "tiles_per_pass": tiles,
        "tile_size": TILE,
        "batch_frames": batch_frames,
        "reps": reps,
        "local_tiles_per_s": round(local_tps, 1),
        "dicomweb_tiles_per_s": round(web_tps, 1),
        "ratio_dicomweb_to_local": round(web_tps / local_tps, 3),
        "open_seconds": {"local": round(local_open, 3), "dicomweb": round(web_open, 3)},
        "frames_fetched": fetched,
        "requests": requests,
        "server": "Orthanc (DICOMweb plugin) on 127.0.0.1",
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


__all__ = ["bench_dicomweb", "default_slides"]
