"""QC records: one per slide (its verdict and reasons), and the site's QC report.

Everything here stays on site, in ``state/qc/``: ``<key>.json`` for each slide
(keyed like its features), ``<key>.png`` its thumbnail with the mask and the
artefacts drawn, and ``qc-report.json`` for the whole site after each
preparation. The HTML page (``slidefed site qc``) is rendered from the latter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slidefed.client.config import QcSection
from slidefed.client.prepare.qc.masks import MIN_GLASS_BRIGHTNESS, SlideMasks
from slidefed.client.prepare.qc.tiles import FLAW_TEXT, TileTally
from slidefed.common.fileio import atomic_write_text

Verdict = Literal["pass", "warn", "fail"]

#: File name of the site's QC report inside ``state/qc``.
QC_REPORT_FILE = "qc-report.json"
#: Dropped tiles listed per slide record (the rest are counted only).
MAX_DROPPED_LISTED = 5000


class SlideQc(BaseModel):
    """The QC of one slide.

    Attributes
    ----------
    slide, row, key : str, int, str
        The slide as the manifest names it, its row, and its feature cache key.
    modality : str
        ``brightfield`` or ``fluorescence``, as the thumbnail shows.
    verdict : str
        ``pass``, ``warn`` or ``fail`` (a failed slide is skipped).
    reasons : list of str
        Why the verdict is not ``pass``, one sentence each.
    tissue_fraction : float
        Share of the thumbnail that is tissue (ink and folds left out).
    ink_fraction, fold_fraction : float
        Share of the tissue (with the ink) under pen ink, and under folds.
    tiles_seen, tiles_kept : int
        Tissue tiles checked and tiles kept.
    tiles_dropped : dict
        Dropped tiles per flaw (``blur``, ``dark``, ``bright``).
    dropped : list
        Level-0 (x, y, flaw) of the dropped tiles (at most
        :data:`MAX_DROPPED_LISTED`).
    tile_side0 : float
        Side of a tile in level-0 pixels, for drawing.
    downsample : float
        The thumbnail's downsample relative to level 0.
    thumbnail : str
        File name of the drawn thumbnail in ``state/qc`` ("" when none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    slide: str
    row: int
    key: str
    modality: Literal["brightfield", "fluorescence"]
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    tissue_fraction: float
    ink_fraction: float
    fold_fraction: float
    glass_brightness: float = 0.0
    tiles_seen: int
    tiles_kept: int
    tiles_dropped: dict[str, int] = Field(default_factory=dict)
    dropped: list[tuple[int, int, str]] = Field(default_factory=list)
    tile_side0: float = 0.0
    downsample: float = 1.0
    thumbnail: str = ""


class QcReport(BaseModel):
    """The QC of every slide of the site's last preparation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    site: str
    generated: datetime
    encoder: str
    thresholds: QcSection
    slides: list[SlideQc]
    # Slides skipped before QC could look at them (unreadable, no tissue, ...).
    not_checked: list[tuple[int, str, str]] = Field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        """Slides with this verdict."""
        return sum(s.verdict == verdict for s in self.slides)

    def write(self, qc_dir: Path) -> Path:
        """Write ``qc_dir/qc-report.json`` atomically; returns its path."""
        path = qc_dir / QC_REPORT_FILE
        atomic_write_text(path, self.model_dump_json(indent=2))
        return path


def expected_modality(qc: QcSection, encoder: str) -> str | None:
    """The modality the encoder and task expect (None: any)."""
    if qc.modality == "any":
        return None
    if qc.modality != "auto":
        return qc.modality
    # hed is H&E stain statistics; the timm pathology encoders (UNI, Phikon, ...)
    # are trained on brightfield H&E too.
    return "brightfield"


def _share(n: int, total: int) -> str:
    return f"{n} of {total} tissue tiles ({100.0 * n / max(total, 1):.0f}%)"


def judge(
    masks: SlideMasks, tally: TileTally, *, qc: QcSection, encoder: str
) -> tuple[Verdict, list[str]]:
    """A slide's verdict and its reasons.

    Fails when no tile is kept or the dropped share reaches
    ``qc.fail_tile_fraction``; warns past the ``warn_*`` limits, on an
    under-exposed scan, or when the modality does not fit the encoder.
    """
    fails: list[str] = []
    warns: list[str] = []
    dropped = sum(tally.flaws.values())
    share = dropped / max(tally.seen, 1)
    flaws = ", ".join(
        f"{n} {FLAW_TEXT[f]}" for f, n in sorted(tally.flaws.items()) if n
    )
    if tally.seen and dropped == tally.seen:
        fails.append(f"every tissue tile failed QC ({flaws})")
    elif dropped and share >= qc.fail_tile_fraction:
        fails.append(f"{_share(dropped, tally.seen)} failed QC ({flaws})")
    elif dropped and share >= qc.warn_tile_fraction:
        warns.append(f"{_share(dropped, tally.seen)} dropped ({flaws})")
    ink, folds = ink_fraction(masks), fold_fraction(masks)
    if ink >= qc.warn_ink_fraction and ink > 0:
        warns.append(f"pen ink over {100 * ink:.1f}% of the tissue (left out)")
    if folds >= qc.warn_fold_fraction and folds > 0:
        warns.append(f"tissue folds over {100 * folds:.1f}% of the tissue (left out)")
    if (
        masks.modality == "brightfield"
        and masks.glass_brightness < MIN_GLASS_BRIGHTNESS
    ):
        warns.append(
            f"under-exposed scan: the glass is at {100 * masks.glass_brightness:.0f}% "
            "brightness; rescan it"
        )
    expected = expected_modality(qc, encoder)
    if expected is not None and masks.modality != expected:
        warns.append(
            f"{masks.modality} slide, but encoder {encoder!r} and the task expect "
            f"{expected} slides; set features.encoder for {masks.modality} slides "
            "or qc.modality in site.toml"
        )
    verdict: Verdict = "fail" if fails else "warn" if warns else "pass"
    return verdict, fails + warns


def ink_fraction(masks: SlideMasks) -> float:
    """Share of the tissue (ink included) under pen ink."""
    ink = int((masks.ink & (masks.tissue | masks.ink)).sum())
    return ink / max(int((masks.tissue | masks.ink).sum()), 1)


def fold_fraction(masks: SlideMasks) -> float:
    """Share of the tissue under folds."""
    return int(masks.folds.sum()) / max(int(masks.tissue.sum()), 1)


def slide_record(
    masks: SlideMasks,
    tally: TileTally,
    *,
    slide: str,
    row: int,
    key: str,
    tile_side0: float,
    qc: QcSection,
    encoder: str,
) -> SlideQc:
    """The QC record of one slide from its masks and its tiles' tally."""
    verdict, reasons = judge(masks, tally, qc=qc, encoder=encoder)
    return SlideQc(
        slide=slide,
        row=row,
        key=key,
        modality=masks.modality,
        verdict=verdict,
        reasons=reasons,
        tissue_fraction=round(float(masks.mask.mean()), 4),
        ink_fraction=round(ink_fraction(masks), 4),
        fold_fraction=round(fold_fraction(masks), 4),
        glass_brightness=round(masks.glass_brightness, 4),
        tiles_seen=tally.seen,
        tiles_kept=tally.seen - sum(tally.flaws.values()),
        tiles_dropped=dict(tally.flaws),
        dropped=tally.dropped[:MAX_DROPPED_LISTED],
        tile_side0=tile_side0,
        downsample=masks.downsample,
    )


def new_report(
    *,
    site: str,
    encoder: str,
    qc: QcSection,
    slides: list[SlideQc],
    not_checked: list[tuple[int, str, str]],
) -> QcReport:
    """A site QC report made now."""
    return QcReport(
        site=site,
        generated=datetime.now(UTC),
        encoder=encoder,
        thresholds=qc,
        slides=sorted(slides, key=lambda s: s.row),
        not_checked=not_checked,
    )


__all__ = [
    "MAX_DROPPED_LISTED",
    "QC_REPORT_FILE",
    "QcReport",
    "SlideQc",
    "Verdict",
    "expected_modality",
    "fold_fraction",
    "ink_fraction",
    "judge",
    "new_report",
    "slide_record",
]
