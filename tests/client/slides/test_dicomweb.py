"""Slides read from a live Orthanc over DICOMweb equal the same DICOM files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidefed.client.config import load_site_config
from slidefed.client.prepare.cache import FeatureCache, cache_key
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.client.prepare.report import PrepareReport
from slidefed.client.slides import open_slide
from slidefed.client.slides.dicomweb import DicomWebSlideSource, MissingFrame
from slidefed.client.slides.dicomweb_archive import Archive as ArchiveClient
from slidefed.client.slides.dicomweb_archive import series_digest
from slidefed.client.slides.dicomweb_ref import DicomWebRef
from slidefed.common.errors import SlideReadError
from tests.client.slides.conftest import Archive, delete_instance, write_site

pytestmark = pytest.mark.integration

SAME = ("cmu", "copy", "jpeg", "jpeg2000", "raw")


def _ref(archive: Archive, name: str) -> DicomWebRef:
    config = load_site_config(
        write_site(
            Path(archive.server.root) / "ref-site",
            [],
            dicomweb={"url": archive.server.url},
        )
    )
    endpoint = config.dicomweb_endpoint
    assert endpoint is not None
    s = archive.series[name]
    return DicomWebRef(study_uid=s.study, series_uid=s.series, endpoint=endpoint)


@pytest.mark.parametrize("name", SAME)
def test_every_level_reads_the_same_pixels_as_the_files(
    archive: Archive, name: str
) -> None:
    disk = archive.series[name].disk
    assert disk is not None
    with open_slide(disk) as local, open_slide(_ref(archive, name)) as web:
        assert isinstance(web, DicomWebSlideSource)
        assert web.info().levels == local.info().levels
        assert web.mpp == local.mpp
        for level, (w, h) in enumerate(local.level_dimensions):
            a = local.read_level_region(level, (0, 0), (w, h))
            b = web.read_level_region(level, (0, 0), (w, h))
            assert np.array_equal(a, b), f"{name} level {level}"
        # Frames came in batches: far fewer requests than frames.
        assert web.frames_fetched > 0
        assert web._archive.requests < web.frames_fetched + 20


def test_prepare_from_orthanc_gives_the_features_of_the_files(
    archive: Archive, tmp_path: Path
) -> None:
    disks = [str(archive.series[n].disk) for n in SAME]
    roots = sorted({str(Path(d).parent) for d in disks})
    local = write_site(tmp_path / "local", disks, extra_roots=roots)
    web = write_site(
        tmp_path / "web",
        [archive.series[n].slide for n in SAME],
        dicomweb={"url": archive.server.url},
    )
    reports: list[PrepareReport] = []
    for config in (local, web):
        reports.append(prepare_site(load_site_config(config), workers=1))
    r_local, r_web = reports
    assert r_local.encoder_id == r_web.encoder_id
    assert r_local.tiling == r_web.tiling
    prepared = 0
    for a, b in zip(r_local.slides, r_web.slides, strict=True):
        assert (a.status, a.tiles, a.decoded_tiles) == (
            b.status,
            b.tiles,
            b.decoded_tiles,
        )
        if a.status != "ok":
            assert a.reason.replace(a.slide, "") == b.reason.replace(b.slide, "")
            continue
        prepared += 1
        ca = FeatureCache(local.parent / "state" / "cache")
        cb = FeatureCache(web.parent / "state" / "cache")
        assert np.array_equal(ca.load(a.key), cb.load(b.key))
        assert np.array_equal(ca.load_coords(a.key), cb.load_coords(b.key))
    assert prepared == 2  # both CMU-1 series; the 16.8 um/px scans are too coarse
    # The keys differ by the source alone: same encoder and tiling, and the
    # web key is the series' identity in place of the files' hash.
    s = archive.series["cmu"]
    client = ArchiveClient(load_site_config(web).dicomweb_endpoint)  # type: ignore[arg-type]
    digest = series_digest(
        client.series_instances(s.study, s.series), s.study, s.series
    )
    assert r_web.tiling is not None
    assert r_web.slides[0].key == cache_key(digest, r_web.encoder_id, r_web.tiling)
    # No slide was copied to disk: only features, reports and memos.
    for path in (web.parent / "state").rglob("*"):
        if path.is_file():
            assert path.read_bytes()[128:132] != b"DICM", path


def test_a_series_that_is_not_a_slide_is_skipped_with_the_fix(
    archive: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ct = archive.series["ct"]
    missing = f"dicomweb:{ct.study}/1.2.3.4.5"
    config = write_site(
        tmp_path,
        [ct.slide, missing, archive.series["cmu"].slide],
        dicomweb={"url": archive.server.url},
    )
    report = prepare_site(load_site_config(config), workers=1)
    by_slide = {o.slide: o for o in report.slides}
    reason = by_slide[ct.slide].reason
    assert by_slide[ct.slide].status == "skipped"
    assert (
        "series is not a whole-slide image (SOP class 1.2.840.10008.5.1.4.1.1.2"
        in reason
    )
    assert f"'slidefed site import-dicomweb --study {ct.study}'" in reason
    assert by_slide[missing].reason.startswith("series not found on the archive;")
    assert by_slide[archive.series["cmu"].slide].status == "ok"
    # Diagnostic logs name slides by manifest line, never by their UIDs.
    assert "manifest line 2 skipped" in caplog.text
    assert ct.study not in caplog.text
    assert ct.series not in caplog.text
    with pytest.raises(SlideReadError, match="not a whole-slide image"):
        open_slide(_ref(archive, "ct"))


def test_a_frame_missing_on_the_archive_is_named_with_the_fix(
    archive: Archive, tmp_path: Path
) -> None:
    purge = archive.series["purge"]
    level0 = next(f for f in purge.files if f.name.startswith("level-0-"))
    with open_slide(_ref(archive, "purge")) as web:
        w, h = web.level_dimensions[1]
        assert web.read_level_region(1, (0, 0), (w, h)).any()
        # The archive loses level 0 while the slide is open (purged, re-sent).
        delete_instance(archive.server, level0)
        with pytest.raises(SlideReadError) as info:
            web.read_level_region(0, (0, 0), (500, 500))
    assert info.value.reason == (
        "frame 1 of level 0 is missing on the archive (HTTP 404); store the series "
        "on the archive again (all its instances), or remove the row from the manifest"
    )
    # Such a failure is the storage's, not the slide's: a skip caused by it is
    # not remembered, so the slide is read again once the series is re-sent.
    assert isinstance(info.value.__cause__, MissingFrame)
