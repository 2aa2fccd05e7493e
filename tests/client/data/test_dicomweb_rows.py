"""Manifest rows naming DICOMweb series, and the [dicomweb] section (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidefed.cli.root import main
from slidefed.client.config import load_site_config
from slidefed.client.data.dicomweb_rows import write_manifest_rows
from slidefed.client.data.manifest import ManifestRow, load_manifest, load_site_manifest
from slidefed.common.errors import ConfigError

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
SLIDE = f"dicomweb:{STUDY}/{SERIES}"


def _site(root: Path, rows: list[str], dicomweb: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    body = "\n".join(["slide,patient_id,label,split", *rows]) + "\n"
    (root / "manifest.csv").write_text(body)
    toml = '[site]\nname = "t"\n' + (f"[dicomweb]\n{dicomweb}\n" if dicomweb else "")
    (root / "site.toml").write_text(toml)
    return root / "site.toml"


def test_rows_name_series_by_uid_and_bad_ones_are_rejected_with_the_fix(
    tmp_path: Path,
) -> None:
    config = _site(
        tmp_path,
        [
            f"{SLIDE},p1,1,train",
            "dicomweb:1.2.x/3,p2,0,train",
            "dicomweb:1.2,p3,0,test",
        ],
        'url = "https://pacs.example.org/dicom-web"',
    )
    manifest = load_site_manifest(load_site_config(config))
    assert [r.dicomweb for r in manifest.rows] == [(STUDY, SERIES)]
    fix = (
        "slide must be dicomweb:<StudyInstanceUID>/<SeriesInstanceUID> (UIDs are "
        "digits and dots); write the rows with 'slidefed site import-dicomweb'"
    )
    assert manifest.rejected == [(3, fix), (4, fix)]
    # A file path is no DICOMweb slide.
    assert (
        ManifestRow(slide="a/b.svs", patient_id="p", label=0, split="test").dicomweb
        is None
    )


def test_dicomweb_rows_need_a_dicomweb_section(tmp_path: Path) -> None:
    config = _site(tmp_path, [f"{SLIDE},p1,1,train"], None)
    with pytest.raises(
        ConfigError, match=r"1 row\(s\) name slides on a DICOMweb archive"
    ):
        load_site_manifest(load_site_config(config))
    # Without the site's roots (no reading), the rows still load.
    assert load_manifest(tmp_path / "manifest.csv").rows[0].dicomweb == (STUDY, SERIES)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('url = "x"\n', "dicomweb.url"),
        (
            'url = "https://p/dw"\nauth = "basic"\nusername = "u"\n',
            "needs username and password_file",
        ),
        ('url = "https://p/dw"\nauth = "bearer"\n', "needs token_file"),
        ('url = "https://p/dw"\ntoken_file = "t"\n', 'need auth = "basic" or "bearer"'),
        ('url = "https://p/dw"\npassword = "secret"\n', "dicomweb.password"),
    ],
)
def test_bad_dicomweb_sections_are_refused_at_load(
    tmp_path: Path, section: str, message: str
) -> None:
    config = _site(tmp_path, [], section)
    with pytest.raises(ConfigError, match=message):
        load_site_config(config)


def test_secret_files_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = _site(
        tmp_path,
        [],
        'url = "https://p/dw"\nauth = "bearer"\ntoken_file = "keys/pacs-token"\n'
        'ca_bundle = "/etc/ssl/hospital.pem"',
    )
    endpoint = load_site_config(config).dicomweb_endpoint
    assert endpoint is not None
    assert endpoint.token_file == tmp_path / "keys" / "pacs-token"
    assert endpoint.ca_bundle == Path("/etc/ssl/hospital.pem")


def test_import_needs_a_section_and_something_to_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = _site(tmp_path / "bare", [], None)
    assert (
        main(["site", "import-dicomweb", "--config", str(bare), "--study", STUDY]) == 2
    )
    assert "site.toml has no [dicomweb] section" in capsys.readouterr().err
    config = _site(tmp_path / "web", [], 'url = "http://127.0.0.1:1/dicom-web"')
    assert main(["site", "import-dicomweb", "--config", str(config)]) == 2
    assert "name what to import: --study UID" in capsys.readouterr().err
    assert (
        main(["site", "import-dicomweb", "--config", str(config), "--query", "x"]) == 2
    )
    assert "must be KEYWORD=VALUE" in capsys.readouterr().err
    assert (
        main(["site", "import-dicomweb", "--config", str(config), "--study", "1.x"])
        == 2
    )
    assert "is not a DICOM UID" in capsys.readouterr().err


def test_appending_keeps_the_existing_rows_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("slide,patient_id,label,split,note\na.svs,p0,1,test,kept\n")
    row = ManifestRow(slide=SLIDE, patient_id="p-1", label=0, split="train")
    with pytest.raises(ConfigError, match="pass --append"):
        write_manifest_rows(path, [row], append=False)
    assert write_manifest_rows(path, [row], append=True) == [row]
    assert write_manifest_rows(path, [row], append=True) == []
    assert path.read_text() == (
        "slide,patient_id,label,split,note\na.svs,p0,1,test,kept\n"
        f"{SLIDE},p-1,0,train,\n"
    )
