"""A real Orthanc (DICOMweb plugin) holding the shared DICOM slides, and variants.

The variants are made from the shared files with pydicom, in tmp folders: two
copies of the CMU-1 series under new UIDs (a second slide, also kept on disk;
and one whose level 0 a test deletes from the archive while it is open), and a
CT image (a series that is not a whole-slide image).
"""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from slidefed.bench.orthanc import OrthancServer, orthanc_available

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("wsidicom")

CMU = "cmu-1-small-region"


@pytest.fixture(autouse=True)
def _connections_closed_by_each_test() -> Iterator[None]:
    """A connection a test leaves open fails that test, not a later one.

    An unclosed socket warns only when the garbage collector finds it, which is
    whenever; collecting after each test puts the warning on the test that left it.
    """
    yield
    gc.collect()


@dataclass
class Series:
    """One series stored on the archive, and where its files lie on disk."""

    study: str
    series: str
    files: list[Path]
    disk: Path | None = None  # the file or folder the disk manifest names

    @property
    def slide(self) -> str:
        return f"dicomweb:{self.study}/{self.series}"


@dataclass
class Archive:
    server: OrthancServer
    series: dict[str, Series] = field(default_factory=dict)


def _uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _renamed(files: list[Path], out: Path, tag: str) -> list[Path]:
    """The files under new study, series, instance and frame-of-reference UIDs."""
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, str] = {}

    def new(uid: str) -> str:
        return mapping.setdefault(uid, generate_uid(entropy_srcs=[tag, uid]))

    written = []
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        ):
            if keyword in ds:
                setattr(ds, keyword, new(str(getattr(ds, keyword))))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out / path.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def build_series(shared: Path, work: Path) -> dict[str, Series]:
    """The series every archive fixture stores, by name."""
    # The shared files carry a malformed implementation UID ("...3.0.");
    # pydicom warns about it on every read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _build_series(shared, work)


def _build_series(shared: Path, work: Path) -> dict[str, Series]:
    from pydicom.data import get_testdata_file

    root = shared / "slides" / "dicom"
    found: dict[str, Series] = {}
    cmu_files = sorted((root / CMU).iterdir())
    found["cmu"] = Series(*_uids(cmu_files[0]), cmu_files, root / CMU)
    copy = _renamed(cmu_files, work / "cmu-copy", "copy")
    found["copy"] = Series(*_uids(copy[0]), copy, work / "cmu-copy")
    for name in ("jpeg", "jpeg2000", "raw"):
        path = root / "google-wsi2dcm-tests" / f"{name}.dicom"
        found[name] = Series(*_uids(path), [path], path)
    purge = _renamed(cmu_files, work / "cmu-purge", "purge")
    found["purge"] = Series(*_uids(purge[0]), purge)
    ct = Path(str(get_testdata_file("CT_small.dcm")))
    found["ct"] = Series(*_uids(ct), [ct])
    return found


def delete_instance(server: OrthancServer, path: Path) -> None:
    """Delete one stored file's instance from the archive (REST API)."""
    import requests

    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    auth = server._auth()
    found = requests.post(
        f"{server.base}/tools/lookup", data=sop, auth=auth, timeout=10
    )
    found.raise_for_status()
    for item in found.json():
        gone = requests.delete(
            f"{server.base}/instances/{item['ID']}", auth=auth, timeout=10
        )
        gone.raise_for_status()


def start_archive(
    root: Path, series: dict[str, Series], **kwargs: object
) -> OrthancServer:
    server = OrthancServer(root, **kwargs)  # type: ignore[arg-type]
    server.start()
    server.store([f for s in series.values() for f in s.files])
    return server


@pytest.fixture(scope="session")
def dicom_series(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Series]:
    if not orthanc_available():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed")
    return build_series(shared_data, tmp_path_factory.mktemp("series"))


@pytest.fixture(scope="module")
def archive(
    dicom_series: dict[str, Series], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """An Orthanc without authentication, holding every series."""
    server = start_archive(tmp_path_factory.mktemp("orthanc"), dicom_series)
    try:
        yield Archive(server, dicom_series)
    finally:
        server.stop()


def write_site(
    root: Path,
    slides: list[str],
    *,
    dicomweb: dict[str, object] | None = None,
    extra_roots: list[str] | None = None,
) -> Path:
    """A site whose manifest lists ``slides`` (one patient each), and its site.toml."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["slide,patient_id,label,split"] + [
        f"{s},p{i},{i % 2},train" for i, s in enumerate(slides)
    ]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    toml = ["[site]", 'name = "t"']
    if extra_roots:
        toml.append(f"extra_slide_roots = {json.dumps(extra_roots)}")
    if dicomweb is not None:
        toml.append("[dicomweb]")
        toml += [f"{k} = {json.dumps(v)}" for k, v in dicomweb.items()]
    config = root / "site.toml"
    config.write_text("\n".join(toml) + "\n")
    return config


def fast_retries(url: str) -> dict[str, object]:
    """A [dicomweb] section that gives up within a second."""
    return {"url": url, "retries": 2, "backoff_seconds": 0.05, "timeout_seconds": 5.0}
