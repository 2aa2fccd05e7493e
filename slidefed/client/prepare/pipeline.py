"""Site preparation: slides -> tissue -> tiles -> features, cached per slide.

Each slide's features are cached under a key made of its content hash, the
encoder id and the tiling parameters; a slide whose key is cached is never
opened again, so a run killed half-way resumes where it stopped. Content hashes
are remembered (``hashes.json``) while a slide's size and modification time are
unchanged, so a re-run does not even read unchanged slides.

Two ways to spread the work over processes:

* ``hed`` (cheap, CPU): one slide per worker process; each worker reads its
  tiles and encodes them.
* ``timm:<arch>``, ``hf:<name>`` (a network, GPU when present): the main process holds the
  model; worker processes read chunks of tiles and send them back, so that the
  model runs once, in large batches, while the workers decode ahead.

Bad slides (missing, truncated, not a slide, unsupported, no tissue, too small,
all tiles unreadable, a stored tile past ``[prepare] max_tile_pixels``) are
skipped with a reason and the rest is prepared. A DICOMweb archive that stops
answering (after its retries) or refuses the site's credentials stops the run
instead: the slides finished are kept, the report is left incomplete, and the
next run resumes. One slide's work is in
:mod:`slidefed.client.prepare.slide`, the records in
:mod:`slidefed.client.prepare.report`. Preparation runs only when asked
(``slidefed site prepare``, the demo, ``site start`` and ``simulate`` before
they serve rounds); a round reads the report and the cache
(:mod:`slidefed.client.prepare.prepared`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import SiteConfig
from slidefed.client.data.manifest import Manifest, ManifestRow, load_site_manifest
from slidefed.client.data.slide_paths import SlideRoots
from slidefed.client.prepare.cache import (
    FeatureCache,
    HashMemo,
    cache_key,
    slide_signature,
)
from slidefed.client.prepare.encoders import (
    check_encoder_allowed,
    default_weights,
    encoder_cache_id,
)
from slidefed.client.prepare.prepared import (
    check_prepared,
    load_site_features,
    prepare_command,
)
from slidefed.client.prepare.qc.site_report import write_site_qc
from slidefed.client.prepare.report import PrepareReport, SlideOutcome
from slidefed.client.prepare.runners import run_in_main, run_in_workers
from slidefed.client.prepare.slide import (
    key_params,
    known_outcome,
    tiling_params,
)
from slidefed.client.slides.dicomweb_ref import DICOMWEB_PREFIX, DicomWebRef
from slidefed.common.errors import (
    ArchiveAuthError,
    ArchiveError,
    SiteNotPrepared,
    SlideReadError,
)

if TYPE_CHECKING:
    from slidefed.client.slides.dicomweb_archive import Archive

logger = logging.getLogger(__name__)

#: Seconds between two writes of the partial report during a run.
REPORT_INTERVAL = 5.0
#: File name of the content-hash memo inside the cache folder.
HASH_MEMO = "hashes.json"
#: Attribute set on the log record of a skipped slide (``record.<this>``).
SKIP_RECORD = "slidefed_slide_skipped"


def _scrub(reason: str, path: Path, slide: str = "") -> str:
    """A reason without the slide's path or folder (or DICOM UIDs), for logs."""
    for text in (str(path), str(path.parent), path.name):
        if text and text != ".":
            reason = reason.replace(text, "<slide>")
    if slide.startswith(DICOMWEB_PREFIX):
        for uid in slide[len(DICOMWEB_PREFIX) :].split("/"):
            reason = reason.replace(uid, "<uid>")
    return reason


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    row: int
    slide: str
    path: Path | DicomWebRef
    digest: str
    key: str


class _SiteRun:
    """The outcomes of one site's run so far, and the report they make."""

    def __init__(
        self,
        config: SiteConfig,
        manifest: Manifest,
        encoder_id: str,
        progress: Callable[[SlideOutcome], None] | None,
        *,
        start: float,
        on_start: Callable[[int, str], None] | None = None,
    ) -> None:
        self.start = start
        self.config = config
        self.manifest = manifest
        self.encoder_id = encoder_id
        self.progress = progress
        self.on_start = on_start
        self.memo_path = config.cache_dir / HASH_MEMO
        self.memo = HashMemo.load(self.memo_path)
        self.roots = SlideRoots.of_site(config)
        self.outcomes: list[SlideOutcome] = []
        self.archive: Archive | None = None  # the DICOMweb archive, once asked
        # Each row's files as they were hashed: a round refuses changed ones.
        self.signatures: dict[int, str] = {}
        self.last_write = time.perf_counter()
        self.dim = 0

    def report(self, complete: bool) -> PrepareReport:
        """The report of the outcomes so far."""
        elapsed = time.perf_counter() - self.start
        fresh = sum(o.tiles for o in self.outcomes if o.status == "ok")
        return PrepareReport(
            feature_dim=self._feature_dim(),
            site=self.config.site.name,
            encoder=self.config.features.encoder,
            encoder_id=self.encoder_id,
            tiling=tiling_params(self.config.tiling, self.config.qc),
            max_tile_pixels=self.config.prepare.max_tile_pixels,
            manifest_sha256=self.manifest.sha256,
            slides=sorted(self.outcomes, key=lambda o: o.row),
            rejected_rows=self.manifest.rejected,
            seconds=round(elapsed, 3),
            tiles_per_second=round(fresh / elapsed, 1) if elapsed > 0 else 0.0,
            complete=complete,
        )

    def _feature_dim(self) -> int:
        """Feature length, from the cached features of one usable slide."""
        if not self.dim:
            cache = FeatureCache(self.config.cache_dir)
            for o in self.outcomes:
                if o.status in ("ok", "cached") and o.tiles and cache.has(o.key):
                    self.dim = int(cache.load(o.key).shape[1])
                    break
        return self.dim

    def record(self, outcome: SlideOutcome) -> None:
        """Add one slide's outcome; write the partial report now and then."""
        signature = self.signatures.get(outcome.row, "")
        if signature:
            outcome = outcome.model_copy(update={"signature": signature})
        self.outcomes.append(outcome)
        if outcome.status == "skipped":
            # Tagged, so that a view printing its own skip line can drop this one.
            logger.warning(
                "manifest line %d skipped: %s",
                outcome.row,
                _scrub(
                    outcome.reason,
                    self.roots.resolve(outcome.slide) or Path(),
                    outcome.slide,
                ),
                extra={SKIP_RECORD: True},
            )
        if self.progress:
            self.progress(outcome)
        if time.perf_counter() - self.last_write > REPORT_INTERVAL:
            self.report(complete=False).write(self.config.state_dir)
            self.memo.save(self.memo_path)
            self.last_write = time.perf_counter()

    def starting(self, row: int, slide: str) -> None:
        """Tell the view which slide is being worked on."""
        if self.on_start is not None:
            self.on_start(row, slide)

    def finish(self) -> PrepareReport:
        """Write the final report and the hash memo."""
        final = self.report(complete=True)
        final.write(self.config.state_dir)
        self.memo.save(self.memo_path)
        write_site_qc(self.config, final)
        return final


def _skipped(entry: ManifestRow, row: int, reason: str) -> SlideOutcome:
    return SlideOutcome(slide=entry.slide, status="skipped", reason=reason, row=row)


def _triage(
    run: _SiteRun,
    cache: FeatureCache,
    seen: dict[str, int],
    row: int,
    entry: ManifestRow,
) -> SlideOutcome | _Job:
    """The outcome of a slide known without decoding it, or its job."""
    if entry.dicomweb is not None:
        return _triage_web(run, cache, seen, row, entry)
    # Checked when the manifest was loaded; checked again in case a symlink
    # changed since.
    path = run.roots.check(entry.slide, manifest=run.manifest.path)
    if not path.exists():
        return _skipped(entry, row, "file named in the manifest does not exist")
    try:
        signature = slide_signature(path)
        digest = run.memo.sha256(path)
    except OSError as exc:
        return _skipped(entry, row, f"cannot read the file ({exc.strerror or exc})")
    if digest in seen:
        return _skipped(
            entry,
            row,
            f"same content as manifest line {seen[digest]} (a copy of it)",
        )
    seen[digest] = row
    run.signatures[row] = signature
    return _cached_or_job(run, cache, row, entry, (path, digest))


def _cached_or_job(
    run: _SiteRun,
    cache: FeatureCache,
    row: int,
    entry: ManifestRow,
    slide: tuple[Path | DicomWebRef, str],
) -> SlideOutcome | _Job:
    """The slide's cached outcome, or the job of preparing it (``slide``: where it
    is and its content hash)."""
    path, digest = slide
    config = run.config
    key = cache_key(digest, run.encoder_id, key_params(config.tiling, config.qc))
    known = known_outcome(
        cache,
        key,
        entry.slide,
        row,
        qc_dir=config.qc_dir,
        fallback_mpp=config.tiling.fallback_mpp,
    )
    if known is not None:
        return known
    return _Job(row=row, slide=entry.slide, path=path, digest=digest, key=key)


def _triage_web(
    run: _SiteRun,
    cache: FeatureCache,
    seen: dict[str, int],
    row: int,
    entry: ManifestRow,
) -> SlideOutcome | _Job:
    """As :func:`_triage`, for a series on the site's DICOMweb archive.

    The content hash stands on the series' UIDs and instances (one query);
    nothing of the slide is read or copied.
    """
    from slidefed.client.slides.dicomweb import slide_digest
    from slidefed.client.slides.dicomweb_archive import Archive

    endpoint = run.config.dicomweb_endpoint
    study, series = entry.dicomweb or ("", "")
    if endpoint is None:  # load_site_manifest refuses this already
        return _skipped(entry, row, "site.toml has no [dicomweb] section")
    if run.archive is None:
        run.archive = Archive(endpoint)
    ref = DicomWebRef(study_uid=study, series_uid=series, endpoint=endpoint)
    try:
        digest = slide_digest(ref, run.archive)
    except SlideReadError as exc:
        return _skipped(entry, row, exc.reason)
    if digest in seen:
        return _skipped(entry, row, f"same series as manifest line {seen[digest]}")
    seen[digest] = row
    return _cached_or_job(run, cache, row, entry, (ref, digest))


def _plan_jobs(run: _SiteRun) -> list[_Job]:
    """Hash, find duplicates and cache hits here; only the rest is decoded."""
    cache = FeatureCache(run.config.cache_dir)
    jobs: list[_Job] = []
    seen: dict[str, int] = {}
    # Slides are numbered by their manifest line (header = 1), as an editor shows.
    lines = run.manifest.lines or list(range(2, len(run.manifest.rows) + 2))
    for row, entry in zip(lines, run.manifest.rows, strict=True):
        run.starting(row, entry.slide)
        found = _triage(run, cache, seen, row, entry)
        if isinstance(found, _Job):
            jobs.append(found)
        else:
            run.record(found)
    run.memo.save(run.memo_path)
    return jobs


def prepare_site(
    config: SiteConfig,
    *,
    workers: int | None = None,
    progress: Callable[[SlideOutcome], None] | None = None,
    ray_address: str | None = None,
    on_start: Callable[[int, str], None] | None = None,
) -> PrepareReport:
    """Prepare every slide of the site's manifest; bad slides are skipped.

    Parameters
    ----------
    config : SiteConfig
        The site.
    workers : int, optional
        Worker processes (default: ``tiling.workers``, else up to 4 cores).
    progress : callable, optional
        Called with each slide's outcome as soon as it is known.
    ray_address : str, optional
        The site's Ray cluster (default: ``[prepare] ray_address``): uncached
        slides are prepared on its nodes
        (:mod:`slidefed.client.prepare.distributed`), into the same cache.
    on_start : callable, optional
        Called with a slide's manifest line and name when work on it starts.

    Returns
    -------
    PrepareReport
        Also written to ``state/prepare-report.json`` (during the run as well,
        with ``complete`` false).

    Raises
    ------
    ManifestError
        If the manifest is missing or has no usable row.
    ConfigError
        If the encoder is unknown or its weights file is missing.
    """
    start = time.perf_counter()
    check_encoder_allowed(config)
    manifest = load_site_manifest(config)
    weights = default_weights(config.features.encoder, config.features.weights)
    weights = config.resolve(weights) if weights is not None else None
    features = config.features.model_copy(update={"weights": weights})
    encoder_id = encoder_cache_id(features.encoder, weights)
    n_workers = workers or config.tiling.workers or min(os.cpu_count() or 1, 4)
    run = _SiteRun(
        config, manifest, encoder_id, progress, start=start, on_start=on_start
    )
    try:
        jobs = _plan_jobs(run)
        address = ray_address or config.prepare.ray_address
        if address:
            from slidefed.client.prepare.distributed import SlideJob, prepare_on_ray

            # Slides on the archive are read here; files go to the cluster.
            files = [j for j in jobs if isinstance(j.path, Path)]
            jobs = [j for j in jobs if not isinstance(j.path, Path)]
            if files:
                prepare_on_ray(
                    address, config, features, cast(list[SlideJob], files), run.record
                )
        if address and not jobs:
            pass
        elif features.encoder != "hed":
            run_in_main(config, features, jobs, n_workers, run)
        else:
            run_in_workers(config, features, jobs, n_workers, run)
    except ArchiveError as exc:
        raise _stopped(run, exc) from exc
    finally:
        if run.archive is not None:
            run.archive.close()
    return run.finish()


def _stopped(run: _SiteRun, exc: ArchiveError) -> ArchiveError:
    """The archive failed: keep what was prepared, say how to resume."""
    run.report(complete=False).write(run.config.state_dir)
    run.memo.save(run.memo_path)
    done = sum(o.status in ("ok", "cached") for o in run.outcomes)
    if isinstance(exc, ArchiveAuthError):  # the fix is the credentials alone
        return type(exc)(str(exc))
    return type(exc)(
        f"{exc}; the {done} slide(s) prepared so far are kept, and "
        f"'{prepare_command(run.config)}' resumes from there"
    )


def prepare_unless_ready(
    config: SiteConfig,
    *,
    workers: int | None = None,
    progress: Callable[[SlideOutcome], None] | None = None,
) -> PrepareReport | None:
    """Prepare the site unless its last preparation still describes it.

    What ``site start`` and ``simulate`` run before a node serves rounds: a
    site prepared for its manifest, encoder and tiling, whose slides are
    unchanged, is left alone (nothing is hashed or opened).

    Returns
    -------
    PrepareReport or None
        The new report; None when the site was ready, or holds labelled tiles
        rather than slides.

    Raises
    ------
    ManifestError
        If the manifest is missing or invalid.
    ConfigError
        If the encoder is unknown or its weights file is missing.
    """
    if config.tiles is not None:
        return None
    try:
        check_prepared(config)
    except SiteNotPrepared as exc:
        logger.info("preparing site %s: %s", config.site.name, exc)
        return prepare_site(config, workers=workers, progress=progress)
    return None


__all__ = [
    "HASH_MEMO",
    "REPORT_INTERVAL",
    "SKIP_RECORD",
    "check_encoder_allowed",
    "load_site_features",
    "prepare_site",
    "prepare_unless_ready",
]
