"""The site manifest: which slides a site has, whose they are, and their labels.

Each row names a slide (a path in the slide store, or
``dicomweb:<StudyInstanceUID>/<SeriesInstanceUID>`` for a series on the site's
DICOMweb archive), its patient, a label and a split; bad rows are rejected
one by one with a reason, and a patient whose slides disagree on the label or
the split is rejected whole. A row whose slide lies outside the site's slide
store refuses the whole manifest (:mod:`slidefed.client.data.slide_paths`): the
operator must fix it, nothing is skipped silently. Grouping the slides' features into patient bags is
:mod:`slidefed.client.data.bags`.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slidefed.client.data.slide_paths import SlideRoots
from slidefed.client.slides.dicomweb_ref import (
    DICOMWEB_FORM,
    DICOMWEB_PREFIX,
    parse_dicomweb_slide,
)
from slidefed.common.errors import ConfigError, ManifestError

if TYPE_CHECKING:
    from slidefed.client.config import SiteConfig

REQUIRED_COLUMNS = ("slide", "patient_id", "label", "split")


class ManifestRow(BaseModel):
    """One slide of the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slide: str = Field(min_length=1)
    patient_id: str = Field(min_length=1)
    label: int = Field(ge=0)
    split: Literal["train", "test"]

    @field_validator("slide")
    @classmethod
    def _dicomweb_form(cls, slide: str) -> str:
        parse_dicomweb_slide(slide)  # a "dicomweb:" cell must hold two UIDs
        return slide

    @property
    def dicomweb(self) -> tuple[str, str] | None:
        """(study, series) UIDs of a slide on the site's DICOMweb archive, or None."""
        return parse_dicomweb_slide(self.slide)


class Manifest(BaseModel):
    """A validated manifest and the rows it had to reject."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    sha256: str
    unit: Literal["patient", "slide"] = "patient"
    rows: list[ManifestRow]
    rejected: list[tuple[int, str]]
    #: The line of each row in the file (header = 1), as an editor shows it.
    lines: list[int] = []

    @property
    def n_patients(self) -> int:
        """Distinct patients among the accepted rows."""
        return len({r.patient_id for r in self.rows})


def load_manifest(path: Path, *, roots: SlideRoots | None = None) -> Manifest:
    """Read and validate the manifest CSV.

    Bad rows are rejected one by one with a reason (line, message); a patient
    whose slides carry different labels or splits is rejected whole.

    Parameters
    ----------
    path : Path
        The CSV.
    roots : SlideRoots, optional
        The folders slides may lie in; when given, a row whose slide resolves
        outside them refuses the whole manifest. Anything that reads slides
        loads the manifest with them (:func:`load_site_manifest`).

    Raises
    ------
    ManifestError
        If the file is missing, has no header with the required columns, or no
        usable row remains.
    SlidePathError
        If ``roots`` is given and a row's slide lies outside them (the message
        names the file, the line and the slide).
    """
    if not path.is_file():
        raise ManifestError(
            f"{path}: manifest not found; set site.manifest in site.toml"
        )
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(text.splitlines())
    unit = _privacy_unit(path, list(reader.fieldnames or []))
    rows, rejected = _validate_rows(reader, unit)
    if roots is not None:
        for line, row in rows:
            if row.dicomweb is None:  # a series on the archive is no path
                roots.check(row.slide, manifest=path, line=line)
    rows, conflicts = _drop_conflicting_patients(rows)
    rejected.extend(conflicts)
    if not rows:
        raise ManifestError(f"{path}: no usable row; fix the rows listed above")
    return Manifest(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        unit=unit,
        rows=[r for _, r in rows],
        rejected=rejected,
        lines=[line for line, _ in rows],
    )


def load_site_manifest(config: SiteConfig) -> Manifest:
    """The site's manifest, every slide confined to its slide store.

    Raises
    ------
    ManifestError
        As :func:`load_manifest`.
    SlidePathError
        If a row's slide lies outside ``site.slides_root`` and every folder of
        ``site.extra_slide_roots``.
    """
    manifest = load_manifest(config.manifest_path, roots=SlideRoots.of_site(config))
    web = sum(row.dicomweb is not None for row in manifest.rows)
    if web and config.dicomweb is None:
        raise ConfigError(
            f"{manifest.path}: {web} row(s) name slides on a DICOMweb archive "
            f"({DICOMWEB_FORM}) but site.toml has no [dicomweb] section; add one "
            'with url = "https://<archive>/dicom-web" (see "Slides in a PACS" in '
            "the site guide)"
        )
    return manifest


def _privacy_unit(path: Path, columns: list[str]) -> Literal["patient", "slide"]:
    """The privacy unit the header allows; refuses a header without its columns."""
    # Without patient ids each slide is its own sample: the privacy unit falls
    # back to the slide, and every record says so.
    unit: Literal["patient", "slide"] = (
        "patient" if "patient_id" in columns else "slide"
    )
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if [c for c in missing if c != "patient_id"]:
        # Every missing column at once, patient_id included: a header is fixed once.
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must be "
            f"{','.join(REQUIRED_COLUMNS)} (without patient_id each slide is its "
            "own privacy unit)"
        )
    return unit


_ROW_FIXES = {
    "slide": "slide is empty; give the slide's path relative to slides_root",
    "patient_id": "patient_id is empty; give the patient's pseudonymous id",
    "label": "label must be a whole number >= 0 (0, 1, ...); fix the label cell",
    "split": "split must be train or test; fix the split cell",
}
"""What to do about a row whose cell breaks a rule, by column."""
_DICOMWEB_FIX = (
    f"slide must be {DICOMWEB_FORM} (UIDs are digits and dots); write the rows "
    "with 'slidefed site import-dicomweb'"
)


def _validate_rows(
    reader: csv.DictReader[str], unit: Literal["patient", "slide"]
) -> tuple[list[tuple[int, ManifestRow]], list[tuple[int, str]]]:
    """(line, row) of each valid row, and (line, reason) of each rejected one."""
    rows: list[tuple[int, ManifestRow]] = []
    rejected: list[tuple[int, str]] = []
    seen: set[str] = set()
    for rec in reader:
        # The line a person sees in an editor (header = 1), blank lines counted.
        line = reader.line_num
        try:
            values = {k: (rec.get(k) or "").strip() for k in REQUIRED_COLUMNS}
            if unit == "slide":
                values["patient_id"] = values["slide"]
            row = ManifestRow.model_validate(values)
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0])
            if field == "slide" and values["slide"].startswith(DICOMWEB_PREFIX):
                rejected.append((line, _DICOMWEB_FIX))
                continue
            rejected.append((line, _ROW_FIXES.get(field, f"{field}: invalid")))
            continue
        if row.slide in seen:
            rejected.append((line, f"duplicate slide {row.slide}"))
            continue
        seen.add(row.slide)
        rows.append((line, row))
    return rows, rejected


def _drop_conflicting_patients(
    rows: list[tuple[int, ManifestRow]],
) -> tuple[list[tuple[int, ManifestRow]], list[tuple[int, str]]]:
    by_patient: dict[str, list[tuple[int, ManifestRow]]] = defaultdict(list)
    for item in rows:
        by_patient[item[1].patient_id].append(item)
    kept: list[tuple[int, ManifestRow]] = []
    rejected: list[tuple[int, str]] = []
    for items in by_patient.values():
        labels = {r.label for _, r in items}
        splits = {r.split for _, r in items}
        if len(labels) > 1 or len(splits) > 1:
            what = "labels" if len(labels) > 1 else "splits"
            rejected.extend(
                (line, f"patient has conflicting {what} across slides")
                for line, _ in items
            )
        else:
            kept.extend(items)
    kept.sort(key=lambda item: item[0])
    return kept, rejected


__all__ = [
    "REQUIRED_COLUMNS",
    "Manifest",
    "ManifestRow",
    "load_manifest",
    "load_site_manifest",
]
