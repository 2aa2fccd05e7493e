"""The site's DICOMweb archive: one session, retries with backoff, plain errors.

Every request to the archive goes through :meth:`Archive.call`: a failure that
may pass (a refused or dropped connection, a timeout, HTTP 408, 429, 502, 503,
504) is tried again after ``backoff_seconds``, doubled at each try, up to
``retries`` times; then :class:`~slidefed.common.errors.ArchiveUnreachable`
says so in one line with the fix. A refused credential (HTTP 401, 403) is
never retried: :class:`~slidefed.common.errors.ArchiveAuthError` at once.
Other HTTP errors (404, ...) reach the caller, which knows what was asked for.

dicomweb-client's own retry (HTTP status only) is turned off, so that a
request is tried exactly as often as ``[dicomweb] retries`` says.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from slidefed.client.config import DicomWebSection
from slidefed.client.slides.base import quiet_loggers
from slidefed.common.errors import ArchiveAuthError, ArchiveUnreachable, ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: SOP class of a VL Whole Slide Microscopy image.
WSM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_RETRY_STATUS = {408, 429, 502, 503, 504}
_AUTH_STATUS = {401, 403}
# DICOM JSON tags used here.
_STUDY, _SERIES, _INSTANCE = "0020000D", "0020000E", "00080018"
_SOP_CLASS, _MODALITY, _FRAMES = "00080016", "00080060", "00280008"
_IMAGE_TYPE, _PATIENT = "00080008", "00100020"


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def read_secret(path: Path, what: str) -> str:
    """The first line of a secret file (a password or a token).

    Raises
    ------
    ConfigError
        If the file cannot be read or is empty.
    """
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"dicomweb.{what} {path} cannot be read ({exc.strerror or exc}); "
            f"write the secret into it (chmod 600) or fix dicomweb.{what} in site.toml"
        ) from exc
    if not secret:
        raise ConfigError(f"dicomweb.{what} {path} is empty; write the secret into it")
    return secret


class InstanceEntry(BaseModel):
    """One instance of a series, as the archive lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sop_instance_uid: str
    sop_class_uid: str
    frames: int
    image_type: tuple[str, ...] = ()


class SeriesEntry(BaseModel):
    """One series of the archive, as ``site import-dicomweb`` lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_uid: str
    series_uid: str
    modality: str
    patient_id: str
    instances: int


def _cause(exc: BaseException) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "timed out",
        "Connection reset",
        "Max retries",
    ):
        if marker in text:
            return marker.lower() if marker != "Max retries" else "no connection"
    return type(exc).__name__


class Archive:
    """A DICOMweb endpoint from the site's ``[dicomweb]`` section."""

    def __init__(self, endpoint: DicomWebSection) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient
        from wsidicom.web import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            WsiDicomWebClient,
        )

        self.endpoint = endpoint
        session = requests.Session()
        if endpoint.auth == "basic" and endpoint.password_file is not None:
            password = read_secret(endpoint.password_file, "password_file")
            session.auth = (endpoint.username or "", password)
        elif endpoint.auth == "bearer" and endpoint.token_file is not None:
            token = read_secret(endpoint.token_file, "token_file")
            session.headers["Authorization"] = f"Bearer {token}"
        if endpoint.ca_bundle is not None:
            if not endpoint.ca_bundle.is_file():
                raise ConfigError(
                    f"dicomweb.ca_bundle {endpoint.ca_bundle} not found; name the "
                    "PEM file of the CA that signed the archive's certificate"
                )
            session.verify = str(endpoint.ca_bundle)
        if endpoint.auth != "none" and endpoint.url.startswith("http://"):
            logger.warning("dicomweb: credentials sent without TLS (http://)")
        self.session = session
        self.client = DICOMwebClient(
            endpoint.url, session=session, timeout=endpoint.timeout_seconds
        )
        self.client.set_http_retry_params(retry=False)
        self.wsi_client = WsiDicomWebClient(self.client)
        self.requests = 0

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        self.session.close()

    # ------------------------------------------------------------------ retries
    def call(self, fn: Callable[[], T], *, what: str) -> T:
        """``fn()`` with the endpoint's retries; ``what`` names it in errors.

        Raises
        ------
        ArchiveAuthError
            On HTTP 401 or 403.
        ArchiveUnreachable
            When the archive did not answer after the retries, or its TLS
            certificate does not verify.
        requests.HTTPError
            Any other HTTP error, for the caller to explain.
        """
        import requests

        tries = self.endpoint.retries + 1
        for attempt in range(1, tries + 1):
            self.requests += 1
            try:
                # dicomweb-client logs every UID it asks for, at INFO.
                with quiet_loggers("dicomweb_client"):
                    return fn()
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if exc.response is not None:
                    # A streamed answer holds its connection until closed.
                    exc.response.close()
                if status in _AUTH_STATUS:
                    raise self._auth_error(what, status) from exc
                if status not in _RETRY_STATUS:
                    raise
                failure: BaseException = exc
                cause = f"HTTP {status}"
            except requests.exceptions.SSLError as exc:
                raise ArchiveUnreachable(
                    f"{what}: the archive's TLS certificate does not verify "
                    f"({self.endpoint.url}); set dicomweb.ca_bundle in site.toml to "
                    "the hospital's CA file"
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure, cause = exc, _cause(exc)
            except requests.exceptions.ChunkedEncodingError as exc:
                failure, cause = exc, "connection dropped"
            if attempt < tries:
                wait = self.endpoint.backoff_seconds * 2 ** (attempt - 1)
                logger.warning(
                    "dicomweb: archive did not answer (%s); try %d of %d in %.2f s",
                    cause,
                    attempt + 1,
                    tries,
                    wait,
                )
                time.sleep(wait)
        raise ArchiveUnreachable(
            f"{what}: archive {self.endpoint.url} unreachable after {tries} "
            f"tries ({cause}); check dicomweb.url in site.toml and that the archive "
            "is running"
        ) from failure

    def _auth_error(self, what: str, status: int) -> ArchiveAuthError:
        fix = {
            "none": 'the archive wants credentials: set dicomweb.auth = "basic" '
            '(username, password_file) or "bearer" (token_file)',
            "basic": "check dicomweb.username and the password in "
            f"{self.endpoint.password_file}",
            "bearer": f"renew the token in {self.endpoint.token_file}",
        }[self.endpoint.auth]
        return ArchiveAuthError(
            f"{what}: archive {self.endpoint.url} refused the site's credentials "
            f"(HTTP {status}); {fix} in site.toml"
        )

    # ---------------------------------------------------------------- queries
    def series_instances(self, study_uid: str, series_uid: str) -> list[InstanceEntry]:
        """The instances of one series (empty when the archive has no such series)."""
        import requests

        def search() -> list[dict[str, Any]]:
            try:
                found = self.client.search_for_instances(
                    study_uid,
                    series_uid,
                    fields=["SOPClassUID", "NumberOfFrames", "ImageType"],
                )
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return []
                raise
            return list(found)

        found = self.call(search, what=f"slide dicomweb:{study_uid}/{series_uid}")
        entries = [
            InstanceEntry(
                sop_instance_uid=str(_value(item, _INSTANCE) or ""),
                sop_class_uid=str(_value(item, _SOP_CLASS) or ""),
                frames=int(_value(item, _FRAMES) or 1),
                image_type=tuple(
                    str(v) for v in item.get(_IMAGE_TYPE, {}).get("Value", [])
                ),
            )
            for item in found
        ]
        return sorted(entries, key=lambda e: e.sop_instance_uid)

    def search_series(self, filters: dict[str, str]) -> list[SeriesEntry]:
        """Series matching QIDO-RS ``filters`` (attribute keyword: value)."""
        fields = ["PatientID", "NumberOfSeriesRelatedInstances", "Modality"]

        def search() -> list[dict[str, Any]]:
            return list(
                self.client.search_for_series(
                    search_filters=dict(filters), fields=fields, get_remaining=True
                )
            )

        found = self.call(search, what="listing series")
        return [
            SeriesEntry(
                study_uid=str(_value(item, _STUDY) or ""),
                series_uid=str(_value(item, _SERIES) or ""),
                modality=str(_value(item, _MODALITY) or ""),
                patient_id=str(_value(item, _PATIENT) or ""),
                instances=int(_value(item, "00201209") or 0),
            )
            for item in found
        ]

    def stored_syntax(self, study: str, series: str, instance: str) -> str | None:
        """The transfer syntax an instance is stored in, or None when not told.

        Asks for its first frame with ``transfer-syntax=*`` (DICOM PS3.18: as
        stored), so that frames arrive as the archive holds them, never
        transcoded; the answer's content type names the syntax.
        """
        import requests

        url = (
            f"{self.endpoint.url.rstrip('/')}/studies/{study}/series/{series}"
            f"/instances/{instance}/frames/1"
        )
        accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'

        def probe() -> requests.Response:
            response = self.session.get(
                url,
                headers={"Accept": accept},
                timeout=self.endpoint.timeout_seconds,
            )
            if response.status_code in _AUTH_STATUS | _RETRY_STATUS:
                response.raise_for_status()
            return response

        response = self.call(probe, what=f"slide dicomweb:{study}/{series}")
        if response.status_code != 200:
            return None
        content_type = response.headers.get("Content-Type", "")
        for part in content_type.replace('"', ";").split(";"):
            key, _, value = part.strip().partition("=")
            if key == "transfer-syntax" and value and value != "*":
                return value.strip()
        return None


def series_digest(instances: list[InstanceEntry], study: str, series: str) -> str:
    """The content identity of a series: its UIDs and its instances' frames.

    DICOM never changes the content behind a SOP instance UID, so this stands
    for the slide's content in the feature cache key, without reading pixels.
    """
    lines = ["dicomweb-series 1", study, series]
    lines += [f"{i.sop_instance_uid} {i.sop_class_uid} {i.frames}" for i in instances]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


__all__ = [
    "WSM_SOP_CLASS",
    "Archive",
    "InstanceEntry",
    "SeriesEntry",
    "read_secret",
    "series_digest",
]
