"""``site doctor`` reads the preparation and QC results of the site.

The case of the issue: 12 slides, 4 of them skipped (3 unreadable, 1 failed QC
for being out of focus), leaving 3 test patients where the policy needs 5 for
any evaluation statistic: every round's evaluation would be withheld. The doctor
warns, names the fix, and does not fail (a site can still train).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from slidefed.cli import main
from slidefed.client.config import load_site_config
from slidefed.client.prepare import prepare_site
from slidefed.demo.synth._render import render
from slidefed.deploy import doctor


def _write(path: Path, rgb: np.ndarray) -> None:
    res = 10_000.0 / 0.5
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression="jpeg",
        resolution=(res, res),
        resolutionunit="CENTIMETER",
        metadata=None,
    )


@pytest.fixture(scope="module")
def skipped_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doctor-qc")
    slides = root / "slides"
    slides.mkdir()
    rows = ["slide,patient_id,label,split"]
    for i in range(12):
        name = f"s{i:02d}.tif"
        split = "test" if i % 2 else "train"
        if i in (1, 3, 5):  # three test patients' slides are not slides at all
            (slides / name).write_bytes(b"not a slide")
        else:
            rgb, _ = render(i, bool(i % 3 == 0), 768, 768)
            if i == 6:  # one slide out of focus
                rgb = ndimage.gaussian_filter(rgb, (3.0, 3.0, 0)).astype(np.uint8)
            _write(slides / name, rgb)
        rows.append(f"{name},p{i:02d},{i % 2},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    toml = root / "site.toml"
    toml.write_text(
        '[site]\nname = "doctor-qc"\nslides_root = "slides"\n'
        "[policy]\nmin_eval_patients = 5\n"
    )
    prepare_site(load_site_config(toml), workers=1)
    return toml


def _checks(toml: Path) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_doctor(toml, gpu=False).checks}


def test_doctor_warns_of_skipped_slides_and_too_few_test_patients(
    skipped_site: Path,
) -> None:
    checks = _checks(skipped_site)

    prepared = checks["slides prepared"]
    assert prepared.status == "warn"
    assert prepared.detail.startswith(
        "4 of 12 slides skipped (1 failed QC, 3 unreadable or without tissue)"
    )
    assert "slidefed site qc --config" in prepared.fix
    cohort = checks["cohort after QC"]
    assert cohort.status == "warn"
    assert "only 3 test patients (policy.min_eval_patients = 5" in cohort.detail
    assert "evaluation metrics are withheld" in cohort.detail
    assert "split=test" in cohort.fix
    assert "min_eval_patients" in cohort.fix
    qc = checks["slide QC"]
    assert qc.status == "warn"
    assert "1 fail" in qc.detail
    assert "out of focus" in qc.detail
    assert checks["slide modality"].status == "ok"


def test_doctor_is_quiet_once_the_policy_fits(
    skipped_site: Path, tmp_path: Path
) -> None:
    root = skipped_site.parent
    toml = tmp_path / "site.toml"
    toml.write_text(
        f'[site]\nname = "doctor-qc"\nmanifest = "{root / "manifest.csv"}"\n'
        f'slides_root = "{root / "slides"}"\nstate_dir = "{root / "state"}"\n'
        "[policy]\nmin_eval_patients = 2\n"
    )
    assert _checks(toml)["cohort after QC"].status == "ok"


def test_doctor_cli_shows_the_warnings_and_exits_zero(
    skipped_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["site", "doctor", "--config", str(skipped_site), "--json"])
    data = json.loads(capsys.readouterr().out)
    status = {c["name"]: c["status"] for c in data["checks"]}
    assert status["slides prepared"] == status["cohort after QC"] == "warn"
    # Warnings do not fail the doctor (the GPU or SuperLink checks may).
    assert not any(
        c["status"] == "fail"
        for c in data["checks"]
        if c["name"] in ("slides prepared", "slide QC", "cohort after QC")
    )
    assert rc in (0, 1)


def test_doctor_says_a_site_was_never_prepared(tmp_path: Path) -> None:
    toml = tmp_path / "site.toml"
    toml.write_text('[site]\nname = "fresh"\n')
    checks = _checks(toml)
    assert checks["slides prepared"].status == "warn"
    assert checks["slides prepared"].fix == f"slidefed site prepare --config {toml}"
    assert checks["cohort after QC"].status == "skip"


def test_doctor_names_the_settings_for_slides_the_encoder_does_not_fit(
    skipped_site: Path, tmp_path: Path
) -> None:
    import shutil

    from slidefed.client.prepare.qc.record import QC_REPORT_FILE, QcReport

    site = tmp_path / "site"
    shutil.copytree(skipped_site.parent, site)
    qc_file = load_site_config(site / "site.toml").qc_dir / QC_REPORT_FILE
    report = QcReport.model_validate_json(qc_file.read_text())
    first = report.slides[0].model_copy(update={"modality": "fluorescence"})
    qc_file.write_text(
        report.model_copy(
            update={"slides": [first, *report.slides[1:]]}
        ).model_dump_json()
    )

    check = _checks(site / "site.toml")["slide modality"]

    assert check.status == "warn"
    assert "1 fluorescence" in check.detail
    assert (
        "1 slides do not fit encoder 'hed', which expects brightfield" in check.detail
    )
    assert check.fix == (
        f"in {site / 'site.toml'}: set [features] encoder to one made for fluorescence "
        "slides, or remove the fluorescence slides from the manifest and run "
        "'slidefed site prepare' again; if the encoder is meant for them, set "
        '[qc] modality = "fluorescence"'
    )
