"""What a hospital meets with its archive: down mid-preparation, bad credentials,
no archive at the URL; and the rows ``site import-dicomweb`` writes."""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from slidefed.bench.orthanc import OrthancServer, free_port
from slidefed.cli.root import main
from slidefed.client.config import load_site_config
from slidefed.client.prepare.cache import FeatureCache
from slidefed.client.prepare.report import PrepareReport
from tests.client.slides.conftest import Series, fast_retries, start_archive, write_site

pytestmark = pytest.mark.integration


def _report(config: Path) -> PrepareReport:
    path = config.parent / "state" / "prepare-report.json"
    return PrepareReport.model_validate_json(path.read_text())


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


class _StopOnFetch(logging.Handler):
    """Stops the archive at the first frames fetched for one series."""

    def __init__(self, server: OrthancServer, series: str) -> None:
        super().__init__(logging.DEBUG)
        self.server = server
        # How the source names a series in its logs (UIDs are not logged).
        self.short = hashlib.sha256(series.encode()).hexdigest()[:10]
        self.stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if not self.stopped and "fetched" in str(record.msg) and self.short in args:
            self.stopped = True
            self.server.stop()


@pytest.fixture
def two_slides(
    dicom_series: dict[str, Series], tmp_path: Path
) -> Iterator[tuple[OrthancServer, list[Series]]]:
    picked = {k: dicom_series[k] for k in ("cmu", "copy")}
    server = start_archive(tmp_path / "orthanc", picked)
    try:
        yield server, list(picked.values())
    finally:
        server.stop()


def test_archive_stopped_mid_preparation_keeps_what_was_prepared_and_resumes(
    two_slides: tuple[OrthancServer, list[Series]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, series = two_slides
    config = write_site(
        tmp_path / "site", [s.slide for s in series], dicomweb=fast_retries(server.url)
    )
    stopper = _StopOnFetch(server, series[1].series)
    log = logging.getLogger("slidefed.client.slides.dicomweb")
    log.addHandler(stopper)
    log.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(
            logging.WARNING, "slidefed.client.slides.dicomweb_archive"
        ):
            rc = main(["site", "prepare", "--config", str(config), "--workers", "1"])
    finally:
        log.removeHandler(stopper)
        log.setLevel(logging.NOTSET)
    assert stopper.stopped
    assert rc == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"error: slide {series[1].slide}: archive {server.url} ")
    assert "unreachable after 3 tries (connection refused); check dicomweb.url" in line
    assert "the 1 slide(s) prepared so far are kept" in line
    assert f"'slidefed site prepare --config {config}' resumes from there" in line
    # Two retries, with backoff, before giving up.
    retries = [r for r in caplog.records if "try " in r.getMessage()]
    assert [r.getMessage().split("; ")[1] for r in retries] == [
        "try 2 of 3 in 0.05 s",
        "try 3 of 3 in 0.10 s",
    ]
    partial = _report(config)
    assert not partial.complete
    assert [(o.row, o.status) for o in partial.slides] == [(2, "ok")]
    first = partial.slides[0]
    cache = FeatureCache(config.parent / "state" / "cache")
    features = cache.load(first.key)
    assert not list(cache.root.glob("*.skip.json"))
    # The archive is back: the re-run resumes, the first slide from the cache.
    server.start()
    assert main(["site", "prepare", "--config", str(config), "--workers", "1"]) == 0
    final = _report(config)
    assert final.complete
    assert [(o.row, o.status) for o in final.slides] == [(2, "cached"), (3, "ok")]
    assert np.array_equal(cache.load(first.key), features)
    assert final.slides[1].tiles == first.tiles  # the same pixels, other UIDs


@pytest.fixture(scope="module")
def locked_archive(
    dicom_series: dict[str, Series], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OrthancServer, Series]]:
    cmu = dicom_series["cmu"]
    server = start_archive(
        tmp_path_factory.mktemp("locked"), {"cmu": cmu}, users={"slidefed": "right"}
    )
    try:
        yield server, cmu
    finally:
        server.stop()


def _basic(url: str, root: Path, password: str) -> dict[str, object]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pacs-password").write_text(password + "\n")
    return {
        **fast_retries(url),
        "auth": "basic",
        "username": "slidefed",
        "password_file": "pacs-password",
    }


@pytest.mark.parametrize("command", ["import-dicomweb", "prepare"])
def test_wrong_credentials_exit_2_with_one_line_and_the_fix(
    locked_archive: tuple[OrthancServer, Series],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    server, cmu = locked_archive
    site = tmp_path / "site"
    config = write_site(site, [cmu.slide], dicomweb=_basic(server.url, site, "wrong"))
    extra = (
        ["--study", cmu.study, "--out", "new.csv"]
        if command == "import-dicomweb"
        else []
    )
    assert main(["site", command, "--config", str(config), *extra]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (
        f"error: {'listing series' if extra else 'slide ' + cmu.slide}: archive "
        f"{server.url} refused the site's credentials (HTTP 401); check "
        f"dicomweb.username and the password in {site / 'pacs-password'} in site.toml"
    )
    assert not (site / "new.csv").exists()


def test_import_dicomweb_writes_the_rows_of_a_study(
    locked_archive: tuple[OrthancServer, Series],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, cmu = locked_archive
    site = tmp_path / "site"
    config = write_site(site, [], dicomweb=_basic(server.url, site, "right"))
    (site / "manifest.csv").unlink()
    args = ["site", "import-dicomweb", "--config", str(config), "--study", cmu.study]
    assert main([*args, "--label", "1"]) == 0
    assert "wrote 1 row(s) to" in capsys.readouterr().out
    rows = list(csv.DictReader((site / "manifest.csv").read_text().splitlines()))
    assert [(r["slide"], r["label"], r["split"]) for r in rows] == [
        (cmu.slide, "1", "train")
    ]
    # A pseudonym (a keyed hash), never the archive's PatientID.
    assert rows[0]["patient_id"].startswith("p-")
    assert len(rows[0]["patient_id"]) == 18
    assert main(args) == 2  # the manifest exists
    assert "pass --append" in capsys.readouterr().err
    assert main([*args, "--append"]) == 0
    assert "wrote 0 row(s)" in capsys.readouterr().out
    assert (site / "manifest.csv").read_text().count(cmu.slide) == 1
    # Any QIDO-RS query works too: here, every slide series of the archive.
    query = ["site", "import-dicomweb", "--config", str(config), "--out", "all.csv"]
    assert main([*query, "--query", "Modality=SM", "--patient-ids", "archive"]) == 0
    rows = list(csv.DictReader((site / "all.csv").read_text().splitlines()))
    assert [r["slide"] for r in rows] == [cmu.slide]
    # The shared files name no patient: the series stands for its patient.
    assert rows[0]["patient_id"] == cmu.series
    # The rows prepare as they are.
    assert main(["site", "prepare", "--config", str(config), "--workers", "1"]) == 0
    assert _report(config).slides[0].status == "ok"


def test_no_archive_at_the_url_exits_2_naming_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    slide = "dicomweb:1.2.3/4.5.6"
    config = write_site(tmp_path, [slide], dicomweb=fast_retries(url))
    assert main(["site", "prepare", "--config", str(config)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: slide {slide}: archive {url} unreachable after 3 tries "
        "(connection refused); check dicomweb.url in site.toml and that the archive "
        "is running; the 0 slide(s) prepared so far are kept"
    )
    assert load_site_config(config).dicomweb is not None
