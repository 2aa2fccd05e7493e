"""Manifest rows from the site's DICOMweb archive (``slidefed site import-dicomweb``).

The archive is asked (QIDO-RS) for the slide series (modality ``SM``) of a
study, of a patient, or of any query; each series that holds VL Whole Slide
Microscopy volume images becomes one row, ``dicomweb:<study>/<series>``, so that
nobody types UIDs. The archive's PatientID is not written: the row gets a
pseudonym, a keyed hash (HMAC-SHA256 with the site's secret) that groups a
patient's slides and means nothing outside the site. Labels and splits are
the operator's: every row gets ``--label`` and ``--split``, to be edited.
"""

from __future__ import annotations

import csv
import hmac
import io
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import DicomWebSection, SiteConfig
from slidefed.client.data.manifest import REQUIRED_COLUMNS, ManifestRow
from slidefed.client.slides.dicomweb_ref import dicomweb_slide, is_uid
from slidefed.common.errors import ConfigError
from slidefed.common.fileio import atomic_write_text

logger = logging.getLogger(__name__)

PatientIds = Literal["pseudonym", "archive"]


class ImportedSeries(BaseModel):
    """One series the archive listed, and whether it became a row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slide: str
    modality: str
    instances: int
    whole_slide: bool
    reason: str = ""


def _endpoint(config: SiteConfig) -> DicomWebSection:
    endpoint = config.dicomweb_endpoint
    if endpoint is None:
        raise ConfigError(
            "site.toml has no [dicomweb] section; add one with "
            'url = "https://<archive>/dicom-web" (see "Slides in a PACS" in the '
            "site guide)"
        )
    return endpoint


def _filters(
    study: str | None, patient: str | None, query: list[str]
) -> dict[str, str]:
    filters: dict[str, str] = {"Modality": "SM"}
    if study is not None:
        if not is_uid(study):
            raise ConfigError(f"--study {study!r} is not a DICOM UID (digits and dots)")
        filters["StudyInstanceUID"] = study
    if patient is not None:
        filters["PatientID"] = patient
    for item in query:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"--query {item!r} must be KEYWORD=VALUE, e.g. StudyDate=20240101-"
                "20241231 or AccessionNumber=A123"
            )
        filters[key.strip()] = value.strip()
    if study is None and patient is None and not query:
        raise ConfigError(
            "name what to import: --study UID, --patient ID or --query KEYWORD=VALUE"
        )
    return filters


def _pseudonym(config: SiteConfig, patient_id: str) -> str:
    """A keyed hash of the archive's PatientID, stable for this site."""
    from slidefed.client.privacy.randomness import (
        ensure_site_secret,
        load_site_secret,
        secret_path,
    )

    path = secret_path(config.state_dir)
    ensure_site_secret(path)
    key = load_site_secret(path)
    mac = hmac.new(
        key, b"slidefed manifest patient\x00" + patient_id.encode(), "sha256"
    )
    return "p-" + mac.hexdigest()[:16]


def list_whole_slide_series(
    config: SiteConfig,
    *,
    study: str | None = None,
    patient: str | None = None,
    query: list[str] | None = None,
    label: int = 0,
    split: Literal["train", "test"] = "train",
    patient_ids: PatientIds = "pseudonym",
) -> tuple[list[ManifestRow], list[ImportedSeries]]:
    """The rows of the whole-slide series matched, and every series seen.

    Raises
    ------
    ConfigError
        If there is no ``[dicomweb]`` section or nothing to search by.
    ArchiveError
        If the archive cannot be reached or refuses the credentials.
    """
    from slidefed.client.slides.dicomweb_archive import WSM_SOP_CLASS, Archive

    filters = _filters(study, patient, list(query or []))
    archive = Archive(_endpoint(config))
    rows: list[ManifestRow] = []
    seen: list[ImportedSeries] = []
    try:
        for entry in archive.search_series(filters):
            slide = dicomweb_slide(entry.study_uid, entry.series_uid)
            instances = archive.series_instances(entry.study_uid, entry.series_uid)
            volumes = [
                i
                for i in instances
                if i.sop_class_uid == WSM_SOP_CLASS and "VOLUME" in i.image_type
            ]
            reason = "" if volumes else "no VL Whole Slide Microscopy volume image"
            seen.append(
                ImportedSeries(
                    slide=slide,
                    modality=entry.modality,
                    instances=len(instances),
                    whole_slide=bool(volumes),
                    reason=reason,
                )
            )
            if not volumes:
                continue
            owner = entry.patient_id or entry.series_uid
            pid = owner if patient_ids == "archive" else _pseudonym(config, owner)
            rows.append(
                ManifestRow(slide=slide, patient_id=pid, label=label, split=split)
            )
    finally:
        archive.close()
    return rows, seen


def write_manifest_rows(
    path: Path, rows: list[ManifestRow], *, append: bool
) -> list[ManifestRow]:
    """Write ``rows`` as a new manifest, or add the new ones to an existing one.

    Returns
    -------
    list of ManifestRow
        The rows written (with ``append``, those not in the manifest already).

    Raises
    ------
    ConfigError
        If the manifest exists and ``append`` is false, or its header lacks
        the required columns.
    """
    columns = list(REQUIRED_COLUMNS)
    existing: list[dict[str, str]] = []
    if path.exists():
        if not append:
            raise ConfigError(
                f"{path} exists; pass --append to add the new series to it, or "
                "--out to write another file"
            )
        reader = csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines())
        columns = list(reader.fieldnames or [])
        missing = [c for c in ("slide", "label", "split") if c not in columns]
        if missing:
            raise ConfigError(
                f"{path}: header lacks {', '.join(missing)}; fix it first"
            )
        existing = list(reader)
    known = {(r.get("slide") or "").strip() for r in existing}
    new = [r for r in rows if r.slide not in known]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(existing)
    for row in new:
        values = row.model_dump()
        writer.writerow({c: values.get(c, "") for c in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    logger.info(
        "manifest: %d rows written (%d new)", len(existing) + len(new), len(new)
    )
    return new


__all__ = [
    "ImportedSeries",
    "PatientIds",
    "list_whole_slide_series",
    "write_manifest_rows",
]
