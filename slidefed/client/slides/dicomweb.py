"""DICOM whole-slide images read from the hospital's archive over DICOMweb.

wsidicom's DICOMweb source (``WsiDicom.open_web``) parses the series from the
archive's metadata; the frames are fetched here, ``[dicomweb] batch_frames`` at
a time in one WADO-RS request, in the transfer syntax the archive stores them
in (never transcoded), and decoded exactly as the DICOM files on disk are
(:class:`~slidefed.client.slides.dicom.DicomSlideSource`): the same series
gives the same tiles from the archive as from its files. Encoded frames are
kept only in memory, in a cache bounded in bytes; nothing of the slide is
written to disk.

Errors a hospital meets:

* archive down or unreachable, after the retries: :class:`ArchiveUnreachable`
  (preparation stops, naming the slide; the slides prepared are kept);
* credentials refused: :class:`ArchiveAuthError`;
* a series that does not exist, or is not a whole-slide image, and a frame the
  archive does not have: :class:`SlideReadError` naming the slide, the reason
  and the fix (the slide, or the tile, is skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

from slidefed.client.config import MAX_TILE_PIXELS
from slidefed.client.slides.base import quiet_loggers
from slidefed.client.slides.dicom import DicomSlideSource, _dicom_errors, _DicomLevel
from slidefed.client.slides.dicomweb_archive import (
    WSM_SOP_CLASS,
    Archive,
    InstanceEntry,
    series_digest,
)
from slidefed.client.slides.dicomweb_ref import DicomWebRef
from slidefed.client.slides.stored_tiles import TILE_CACHE_BYTES, StoredTileReader
from slidefed.common.errors import SlideReadError

logger = logging.getLogger(__name__)

#: Bytes of encoded frames one open slide keeps in memory.
FRAME_CACHE_BYTES = 64 * 1024 * 1024
FrameKey = tuple[int, int, int]  # (wsidicom level, tx, ty)


class MissingFrame(OSError):
    """The archive has no such frame: storage, not the slide, is at fault.

    A :class:`SlideReadError` caused by it is not remembered as the slide's
    skip, so that the slide is read again once the series is stored again.
    """


def _lister(ref: DicomWebRef) -> str:
    return f"slidefed site import-dicomweb --study {ref.study_uid}"


def check_series(ref: DicomWebRef, instances: list[InstanceEntry]) -> None:
    """Refuse a series the archive lacks, or one that is not a whole-slide image.

    Raises
    ------
    SlideReadError
        Naming the slide, the reason and the fix.
    """
    if not instances:
        raise SlideReadError(
            ref.slide,
            "series not found on the archive; check the UIDs, or list the study's "
            f"slide series with '{_lister(ref)}'",
        )
    if not any(i.sop_class_uid == WSM_SOP_CLASS for i in instances):
        classes = sorted({i.sop_class_uid for i in instances})
        raise SlideReadError(
            ref.slide,
            f"series is not a whole-slide image (SOP class {', '.join(classes)}, "
            "not VL Whole Slide Microscopy); name a slide series, listed by "
            f"'{_lister(ref)}'",
        )


def slide_digest(ref: DicomWebRef, archive: Archive | None = None) -> str:
    """The content identity of a DICOMweb slide, from one QIDO-RS query.

    Raises
    ------
    SlideReadError
        If the series is missing or not a whole-slide image.
    ArchiveError
        If the archive cannot be reached or refuses the credentials.
    """
    own = archive is None
    archive = archive or Archive(ref.endpoint)
    try:
        instances = archive.series_instances(ref.study_uid, ref.series_uid)
    finally:
        if own:
            archive.close()
    check_series(ref, instances)
    return series_digest(instances, ref.study_uid, ref.series_uid)


def _frame_cache(budget: int) -> LRUCache[FrameKey, bytes]:
    return LRUCache(maxsize=max(budget, 1), getsizeof=lambda data: max(len(data), 1))


class DicomWebSlideSource(DicomSlideSource):
    """A DICOM whole-slide image (one series) read from a DICOMweb archive.

    Parameters
    ----------
    ref : DicomWebRef
        The series and the site's ``[dicomweb]`` section.
    """

    format = "dicomweb"

    def __init__(
        self,
        ref: DicomWebRef,
        cache_bytes: int = TILE_CACHE_BYTES,
        *,
        max_tile_pixels: int = MAX_TILE_PIXELS,
        frame_cache_bytes: int = FRAME_CACHE_BYTES,
    ) -> None:
        StoredTileReader.__init__(self, cache_bytes)
        self.ref = ref
        self.path = Path(ref.slide)
        self.max_tile_pixels = max_tile_pixels
        self.frames_fetched = 0
        self._frames = _frame_cache(frame_cache_bytes)
        self._errors = _dicom_errors()
        self._archive = Archive(ref.endpoint)
        try:
            instances = self._archive.series_instances(ref.study_uid, ref.series_uid)
            check_series(ref, instances)
            self._wsi = self._open(instances)
            self._by_scale = {int(lv.level): lv for lv in self._wsi.levels}
            self._finish_open()
        except BaseException:
            # A series that cannot be opened (the archive gone mid-open, a series
            # unlike its manifest row) leaves no connection behind.
            if getattr(self, "_wsi", None) is not None:
                self._wsi.close()
            self._archive.close()
            raise
        logger.debug(
            "dicomweb: opened series %s (%d levels)", ref.short, len(self._levels)
        )

    def _open(self, instances: list[InstanceEntry]) -> Any:
        """``WsiDicom.open_web`` asking for the frames as stored."""
        from wsidicom import WsiDicom  # type: ignore[import-untyped, import-not-found, unused-ignore]

        ref, what = self.ref, f"slide {self.ref.slide}"
        syntaxes: list[str] = []
        for inst in instances:
            if inst.sop_class_uid != WSM_SOP_CLASS:
                continue
            stored = self._archive.stored_syntax(
                ref.study_uid, ref.series_uid, inst.sop_instance_uid
            )
            if stored is not None and stored not in syntaxes:
                syntaxes.append(stored)
        if not syntaxes:
            logger.warning(
                "dicomweb: the archive does not say how series %s is stored; its "
                "frames may arrive transcoded",
                ref.short,
            )

        def open_web() -> Any:
            with quiet_loggers("wsidicom", "pydicom"):
                return WsiDicom.open_web(
                    self._archive.wsi_client,
                    ref.study_uid,
                    ref.series_uid,
                    requested_transfer_syntax=syntaxes or None,
                )

        try:
            return self._archive.call(open_web, what=what)
        except self._errors as exc:
            raise SlideReadError(
                ref.slide,
                f"not a readable whole-slide series ({type(exc).__name__}: {exc}); "
                f"list the study's slide series with '{_lister(ref)}'",
            ) from exc

    # ----------------------------------------------------------------- frames
    def _frame_index(self, lv: _DicomLevel, tx: int, ty: int) -> int:
        from wsidicom.geometry import Point  # type: ignore[import-untyped, import-not-found, unused-ignore]

        data = self._by_scale[lv.scale].default_instance.image_data
        return int(
            data.tiles.get_frame_index(Point(tx, ty), data.default_z, data.default_path)
        )

    def _fetch(self, lv: _DicomLevel, tiles: Sequence[tuple[int, int]]) -> None:
        """Fetch ``tiles`` of a level into the frame cache, in batches."""
        import requests

        level = self._by_scale[lv.scale]
        instance = level.default_instance
        image_data = instance.image_data
        todo: list[tuple[tuple[int, int], int]] = []
        for tx, ty in tiles:
            index = self._frame_index(lv, tx, ty)
            if index < 0:  # not stored (sparse): wsidicom's blank frame
                self._frames[(lv.scale, tx, ty)] = bytes(image_data.blank_encoded_tile)
            else:
                todo.append(((tx, ty), index))
        step = self.ref.endpoint.batch_frames
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            numbers = [index + 1 for _, index in batch]  # DICOMweb counts from 1

            def get(numbers: list[int] = numbers) -> list[bytes]:
                return list(
                    self._archive.wsi_client.get_frames(
                        self.ref.study_uid,
                        self.ref.series_uid,
                        instance.dataset.uids.instance,
                        numbers,
                        image_data.transfer_syntax,
                    )
                )

            try:
                got = self._archive.call(get, what=f"slide {self.ref.slide}")
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if len(batch) == 1 or status != 404:
                    raise self._missing(lv, batch[0][1], f"HTTP {status}")  # noqa: B904
                got = []
            if len(got) != len(batch):
                got = self._one_by_one(lv, batch, get)
            for ((tx, ty), _), data in zip(batch, got, strict=True):
                self._frames[(lv.scale, tx, ty)] = bytes(data)
            self.frames_fetched += len(batch)
            logger.debug(
                "dicomweb: fetched %d frames of series %s", len(batch), self.ref.short
            )

    def _one_by_one(
        self, lv: _DicomLevel, batch: list[tuple[tuple[int, int], int]], get: Any
    ) -> list[bytes]:
        """A short answer: ask for each frame alone, to name the missing one."""
        import requests

        out: list[bytes] = []
        for _, index in batch:

            def get_one(index: int = index) -> list[bytes]:
                return list(get([index + 1]))

            try:
                one = self._archive.call(get_one, what=f"slide {self.ref.slide}")
            except requests.HTTPError:
                raise self._missing(lv, index, "not served")  # noqa: B904
            if len(one) != 1 or not one[0]:
                raise self._missing(lv, index, "not served")
            out.append(one[0])
        return out

    def _missing(self, lv: _DicomLevel, index: int, why: str) -> SlideReadError:
        error = SlideReadError(
            self.ref.slide,
            f"frame {index + 1} of level {lv.scale} is missing on the archive "
            f"({why}); store the series on the archive again (all its instances), "
            "or remove the row from the manifest",
        )
        error.__cause__ = MissingFrame(why)
        return error

    def _encoded(self, lv: _DicomLevel, tx: int, ty: int) -> bytes:
        key = (lv.scale, tx, ty)
        data = self._frames.get(key)
        if data is None:
            self._fetch(lv, [(tx, ty)])
            data = self._frames.get(key)
        if data is None:  # evicted at once: a frame larger than the cache
            raise SlideReadError(self.ref.slide, f"frame of level {lv.scale} too large")
        return data

    def _check_frames(self) -> None:
        """The last frame of every level must be on the archive."""
        for lv in self._levels:
            self._encoded(lv, lv.nx - 1, lv.ny - 1)

    def prefetch(
        self,
        level: int,
        regions: Iterable[tuple[tuple[int, int], tuple[int, int]]],
    ) -> None:
        """Fetch the frames under ``regions`` (level location, size) not yet held."""
        self._check_level(level)
        lv = self._levels[level]
        wanted: dict[tuple[int, int], None] = {}
        for (x, y), (w, h) in regions:
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
            if x0 >= x1 or y0 >= y1:
                continue
            for ty in range(y0 // lv.th, (y1 - 1) // lv.th + 1):
                for tx in range(x0 // lv.tw, (x1 - 1) // lv.tw + 1):
                    if (level, tx, ty) in self._cache:
                        continue
                    if (lv.scale, tx, ty) not in self._frames:
                        wanted[(tx, ty)] = None
        if wanted:
            self._fetch(lv, list(wanted))

    def read_level_region(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """As :meth:`StoredTileReader.read_level_region`; frames fetched in batches."""
        with self._region_errors(level, int(location[0]), int(location[1])):
            self.prefetch(level, [(location, size)])
        return super().read_level_region(level, location, size, out)

    def read_level_region_reduced(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        factor: int,
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """As the base method; the frames are fetched in batches first."""
        span = (size[0] * factor, size[1] * factor)
        with self._region_errors(level, int(location[0]), int(location[1])):
            self.prefetch(level, [(location, span)])
        return super().read_level_region_reduced(level, location, size, factor, out)

    def _fallback_region(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> NDArray[np.uint8]:
        raise SlideReadError(self.ref.slide, f"level {level} is not tiled")

    def clear_cache(self) -> None:
        """Forget the decoded tiles and the fetched frames (benchmarks start cold)."""
        super().clear_cache()
        self._frames.clear()

    def close(self) -> None:
        """Forget the frames and tiles; close the session."""
        self._frames.clear()
        self._cache.clear()
        self._wsi.close()
        self._archive.close()


__all__ = [
    "FRAME_CACHE_BYTES",
    "DicomWebSlideSource",
    "MissingFrame",
    "check_series",
    "slide_digest",
]
