"""Running a site's uncached slides: in worker processes, or encoding here.

:func:`run_in_workers` gives each worker process whole slides (the ``hed``
statistics are cheap to load anywhere); :func:`run_in_main` keeps one copy of a
network encoder in this process and lets workers decode tiles for it.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from slidefed.client.config import FeaturesSection, SiteConfig, TilingSection
from slidefed.client.prepare.encoders import check_tiling_fits, get_encoder
from slidefed.client.prepare.slide import prepare_slide, prepare_slide_in_main
from slidefed.client.slides.dicomweb_ref import DicomWebRef
from slidefed.common.errors import ArchiveError

if TYPE_CHECKING:
    from slidefed.client.prepare.pipeline import _Job, _SiteRun


def run_in_workers(
    config: SiteConfig,
    features: FeaturesSection,
    jobs: list[_Job],
    n_workers: int,
    run: _SiteRun,
) -> None:
    """Prepare ``jobs`` in worker processes (or here, for one job or worker)."""
    prepare = partial(
        prepare_slide,
        max_tile_pixels=config.prepare.max_tile_pixels,
        qc=config.qc,
        qc_dir=config.qc_dir,
    )

    def args(
        job: _Job,
    ) -> tuple[str, Path | DicomWebRef, TilingSection, FeaturesSection, Path]:
        return (job.slide, job.path, config.tiling, features, config.cache_dir)

    if n_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            run.starting(job.row, job.slide)
            run.record(prepare(*args(job), content_hash=job.digest, row=job.row))
        return
    with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs))) as pool:
        futures = [
            pool.submit(prepare, *args(job), content_hash=job.digest, row=job.row)
            for job in jobs
        ]
        pending = dict(zip(futures, jobs, strict=True))
        run.starting(jobs[0].row, jobs[0].slide)
        try:
            for fut in as_completed(futures):
                del pending[fut]
                if pending:  # the oldest slide still in the works
                    job = next(iter(pending.values()))
                    run.starting(job.row, job.slide)
                run.record(fut.result())
        except ArchiveError:  # the archive is down: start no other slide
            pool.shutdown(cancel_futures=True)
            raise


def run_in_main(
    config: SiteConfig,
    features: FeaturesSection,
    jobs: list[_Job],
    n_workers: int,
    run: _SiteRun,
) -> None:
    """Prepare ``jobs`` with the encoder in this process (readers in workers)."""
    if not jobs:
        return
    encoder = get_encoder(features.encoder, weights=features.weights, features=features)
    check_tiling_fits(encoder, config.tiling)
    pool = ProcessPoolExecutor(max_workers=n_workers) if n_workers > 1 else None
    try:
        for job in jobs:
            run.starting(job.row, job.slide)
            run.record(
                prepare_slide_in_main(
                    job.slide,
                    job.path,
                    row=job.row,
                    key=job.key,
                    config=config,
                    encoder=encoder,
                    pool=pool,
                    window=2 * n_workers,
                )
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


__all__ = ["run_in_main", "run_in_workers"]
