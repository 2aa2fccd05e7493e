"""What a preparation run did: one outcome per slide, and the site's report.

The report is written to ``state/prepare-report.json``, during the run as well
(with ``complete`` false), so that a killed run leaves a true account of what it
had done. A round reads its features through the last complete report
(:mod:`slidefed.client.prepare.prepared`), never by preparing slides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from slidefed.common.fileio import atomic_write_text

#: File name of the report inside the site's state folder.
REPORT_FILE = "prepare-report.json"


class SlideOutcome(BaseModel):
    """What happened to one slide.

    Attributes
    ----------
    slide : str
        The slide as the manifest names it.
    status : str
        ``ok`` (prepared now), ``cached`` (features already cached, nothing
        decoded) or ``skipped`` (see ``reason``).
    tiles : int
        Tiles with features.
    reason : str
        Why the slide was skipped, or a note (unreadable tiles left out).
    key : str
        Feature cache key.
    seconds : float
        Time spent on the slide.
    row : int
        The slide's line in the manifest (header = 1, as an editor numbers
        it); logs name slides by this number, never by path.
    unreadable_tiles : int
        Tiles left out because they could not be read.
    decoded_tiles : int
        Stored tiles decoded for this slide (0 for a cached slide).
    signature : str
        Names, sizes and modification times of the slide's files when it was
        hashed (:func:`~slidefed.client.prepare.cache.slide_signature`): a round
        refuses a slide whose files changed since.
    qc : str
        The slide's QC verdict (``pass``, ``warn``, ``fail``; "" when QC did
        not see it). A slide that failed QC is ``skipped``; its reasons are in
        its QC record (``state/qc``).
    qc_dropped_tiles : int
        Tiles QC dropped (out of focus, under- or over-exposed).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slide: str
    status: str  # "ok", "cached" or "skipped"
    tiles: int = 0
    reason: str = ""
    key: str = ""
    seconds: float = 0.0
    row: int = 0
    unreadable_tiles: int = 0
    decoded_tiles: int = 0
    signature: str = ""
    qc: str = ""
    qc_dropped_tiles: int = 0


class PrepareReport(BaseModel):
    """The prepare report written to ``state/prepare-report.json``.

    ``tiling`` holds the tiling parameters that keyed the cache and
    ``max_tile_pixels`` the cap in force; a round compares them, the encoder
    and the manifest's hash with the site's config of the moment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 3
    site: str
    encoder: str
    encoder_id: str = ""
    # Length of one tile's feature vector; 0 when no slide gave features.
    feature_dim: int = 0
    tiling: dict[str, Any] | None = None
    max_tile_pixels: int | None = None
    manifest_sha256: str
    slides: list[SlideOutcome]
    rejected_rows: list[tuple[int, str]]
    seconds: float
    tiles_per_second: float = 0.0
    complete: bool = True

    @property
    def usable(self) -> list[SlideOutcome]:
        """Slides with features."""
        return [s for s in self.slides if s.status in ("ok", "cached") and s.tiles]

    @property
    def skipped(self) -> list[SlideOutcome]:
        """Slides left out, each with its reason."""
        return [s for s in self.slides if s.status == "skipped"]

    def write(self, state_dir: Path) -> None:
        """Write the report to ``state_dir/prepare-report.json`` atomically."""
        atomic_write_text(state_dir / REPORT_FILE, self.model_dump_json(indent=2))


__all__ = ["REPORT_FILE", "PrepareReport", "SlideOutcome"]
