"""QC during a slide's preparation, and where its results are kept.

:class:`SlideChecker` is what :mod:`slidefed.client.prepare.slide` uses: it
assesses the slide's thumbnail (the mask the tile grid is laid on, ink and
folds left out), drops the tiles that fail focus or exposure as they are read,
and makes the slide's record at the end. :class:`QcStore` keeps the records and
thumbnails in ``state/qc``, keyed like the features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import QcSection
from slidefed.client.prepare.qc.draw import write_thumbnail
from slidefed.client.prepare.qc.masks import SlideMasks, assess_slide
from slidefed.client.prepare.qc.record import SlideQc, slide_record
from slidefed.client.prepare.qc.tiles import TileTally, tile_flaws
from slidefed.client.prepare.tiling import TileBatch, TileGrid
from slidefed.client.slides.base import SlideSource
from slidefed.common.fileio import atomic_write_text

logger = logging.getLogger(__name__)


class QcStore:
    """The QC records and thumbnails of a site (``state/qc``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def record_path(self, key: str) -> Path:
        """The record of the slide of ``key``."""
        return self.root / f"{key}.json"

    def thumbnail_path(self, key: str) -> Path:
        """The drawn thumbnail of the slide of ``key``."""
        return self.root / f"{key}.png"

    def save(
        self,
        record: SlideQc,
        masks: SlideMasks | None = None,
        *,
        thumbnail: bool = True,
    ) -> SlideQc:
        """Write a record (and its thumbnail, when ``masks`` are given)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if masks is not None and thumbnail:
            path = self.thumbnail_path(record.key)
            try:
                write_thumbnail(masks, record, path)
            except (OSError, ValueError) as exc:
                # A thumbnail is for people; its failure never fails the slide.
                logger.warning("QC thumbnail not written: %s", exc)
            else:
                record = record.model_copy(update={"thumbnail": path.name})
        atomic_write_text(self.record_path(record.key), record.model_dump_json())
        return record

    def load(self, key: str) -> SlideQc | None:
        """The record of ``key``, or None when there is none (or it is unreadable)."""
        try:
            return SlideQc.model_validate_json(self.record_path(key).read_bytes())
        except (OSError, ValueError):
            return None


class SlideChecker:
    """The QC of one slide while it is prepared.

    Parameters
    ----------
    qc : QcSection
        The site's thresholds.
    encoder : str
        The site's encoder (``features.encoder``), for the modality check.
    masks : SlideMasks, optional
        The slide's masks when it was assessed already (by another process:
        a region of a slide on a cluster node); else :meth:`assess` it.
    """

    def __init__(
        self, qc: QcSection, encoder: str, masks: SlideMasks | None = None
    ) -> None:
        self.qc = qc
        self.encoder = encoder
        self.tally = TileTally()
        self._masks = masks

    @property
    def masks(self) -> SlideMasks:
        """The slide's masks (after :meth:`assess`)."""
        if self._masks is None:
            raise RuntimeError("SlideChecker.assess was not called")
        return self._masks

    def assess(self, slide: SlideSource) -> tuple[NDArray[np.bool_], float]:
        """Assess the thumbnail; the mask to lay tiles on and its downsample."""
        self._masks = assess_slide(slide, self.qc)
        return self._masks.mask, self._masks.downsample

    def filter(self, batches: Iterable[TileBatch]) -> Iterator[TileBatch]:
        """The batches without their tiles that fail focus or exposure."""
        fluorescence = self.masks.modality == "fluorescence"
        for batch in batches:
            if not batch.coords:
                yield batch
                continue
            flaws = tile_flaws(batch.tiles, fluorescence=fluorescence, qc=self.qc)
            keep = self.tally.add(batch.coords, flaws)
            if all(keep):
                yield batch
                continue
            kept = [xy for xy, k in zip(batch.coords, keep, strict=True) if k]
            yield TileBatch(
                kept, batch.tiles[np.asarray(keep, dtype=bool)], batch.failed
            )

    def record(self, *, slide: str, row: int, key: str, grid: TileGrid) -> SlideQc:
        """The slide's record, once its tiles were read."""
        return slide_record(
            self.masks,
            self.tally,
            slide=slide,
            row=row,
            key=key,
            tile_side0=grid.read_size * grid.level_downsample,
            qc=self.qc,
            encoder=self.encoder,
        )


__all__ = ["QcStore", "SlideChecker"]
