"""How a manifest names a slide held by the site's DICOMweb archive.

A row's ``slide`` cell reads ``dicomweb:<StudyInstanceUID>/<SeriesInstanceUID>``
(one series is one slide, its instances the pyramid levels). A
:class:`DicomWebRef` carries the two UIDs and the site's ``[dicomweb]`` section
(file paths only, never a secret), so that a worker process can open the slide
itself. Loads pydantic only.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict, Field

from slidefed.client.config import DicomWebSection

#: What starts the slide cell of a row that names a DICOMweb series.
DICOMWEB_PREFIX = "dicomweb:"
#: A DICOM UID: digits in dot-separated components, at most 64 characters.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
_UID = re.compile(UID_PATTERN)
#: What to write in a manifest row, for error messages.
DICOMWEB_FORM = "dicomweb:<StudyInstanceUID>/<SeriesInstanceUID>"


def is_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID."""
    return len(value) <= 64 and _UID.match(value) is not None


def parse_dicomweb_slide(value: str) -> tuple[str, str] | None:
    """(study, series) of a ``dicomweb:`` slide cell; None for any other value.

    Raises
    ------
    ValueError
        If the cell starts with ``dicomweb:`` but does not hold two valid UIDs.
    """
    if not value.startswith(DICOMWEB_PREFIX):
        return None
    parts = value[len(DICOMWEB_PREFIX) :].split("/")
    if len(parts) != 2 or not all(is_uid(p) for p in parts):
        msg = f"{value!r} is not {DICOMWEB_FORM} (UIDs are digits and dots)"
        raise ValueError(msg)
    return parts[0], parts[1]


def dicomweb_slide(study_uid: str, series_uid: str) -> str:
    """The slide cell that names a series."""
    return f"{DICOMWEB_PREFIX}{study_uid}/{series_uid}"


class DicomWebRef(BaseModel):
    """One slide (a series) on the site's DICOMweb archive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_uid: str = Field(pattern=UID_PATTERN, max_length=64)
    series_uid: str = Field(pattern=UID_PATTERN, max_length=64)
    endpoint: DicomWebSection

    @property
    def slide(self) -> str:
        """The manifest's name of the slide."""
        return dicomweb_slide(self.study_uid, self.series_uid)

    @property
    def key(self) -> str:
        """What identifies the open slide in a worker process."""
        return f"{self.endpoint.url} {self.slide}"

    @property
    def short(self) -> str:
        """A short stand-in for the series in logs (UIDs are not logged)."""
        return hashlib.sha256(self.series_uid.encode()).hexdigest()[:10]

    def __str__(self) -> str:
        return self.slide


__all__ = [
    "DICOMWEB_FORM",
    "DICOMWEB_PREFIX",
    "UID_PATTERN",
    "DicomWebRef",
    "dicomweb_slide",
    "is_uid",
    "parse_dicomweb_slide",
]
