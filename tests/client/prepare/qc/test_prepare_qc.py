"""QC inside ``site prepare`` and ``site qc``, on copies of the real CMU-1 slide.

The test writes three copies of CMU-1-Small-Region (level 0, 0.499 um/px) as
tiled TIFFs: one as it is, one blurred by a Gaussian of sigma 2.5 px, one with
pen strokes in four colours drawn over the tissue. The sharp copy passes, the
blurred one fails QC (every tile out of focus, dropped, the slide skipped and
remembered), the inked one is prepared with a warning and its ink left out.
The page ``slidefed site qc`` writes renders in headless Chromium. Run this file
as a script to redraw the screenshot in the docs::

    python -m tests.client.prepare.qc.test_prepare_qc docs/img/qc-report.png
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from slidefed.cli import main
from slidefed.client.config import load_site_config
from slidefed.client.prepare import prepare_site
from slidefed.client.prepare.qc import QcStore, load_site_qc
from slidefed.client.prepare.report import SlideOutcome
from slidefed.client.slides import open_slide
from tests.chromium import run_chromium

SHARED = Path(os.environ.get("SLIDEFED_SHARED_DATA", "/work/shared/data"))
CMU1 = Path("slides/aperio/CMU-1-Small-Region.svs")
Prepared = dict[str, SlideOutcome]
INKS = [(40, 140, 70), (40, 60, 170), (35, 35, 40), (200, 40, 50)]


def _write_tiff(path: Path, rgb: NDArray[np.uint8], mpp: float) -> None:
    res = 10_000.0 / mpp
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression="jpeg",
        compressionargs={"level": 92},
        resolution=(res, res),
        resolutionunit="CENTIMETER",
        metadata=None,
    )


def _blur(rgb: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    out = ndimage.gaussian_filter(rgb.astype(np.float32), (sigma, sigma, 0))
    return np.asarray(np.clip(np.round(out), 0, 255), dtype=np.uint8)


def _ink(rgb: NDArray[np.uint8], mpp: float) -> NDArray[np.uint8]:
    h, w = rgb.shape[:2]
    out = rgb.astype(np.float32)
    for i, colour in enumerate(INKS):
        layer = Image.new("L", (w, h), 0)
        y0 = int(h * (0.15 + 0.2 * i))
        points = [(int(w * 0.1), y0), (int(w * 0.5), y0 + h // 20), (int(w * 0.9), y0)]
        ImageDraw.Draw(layer).line(points, fill=255, width=round(25 / mpp))
        stroke = np.asarray(layer) > 0
        out[stroke] = 0.8 * np.asarray(colour, np.float32) + 0.2 * out[stroke]
    return out.astype(np.uint8)


def write_qc_site(root: Path, shared: Path) -> Path:
    """A site of three CMU-1 copies (sharp, blurred, inked); its site.toml."""
    with open_slide(shared / CMU1) as slide:
        w, h = slide.level_dimensions[0]
        rgb = slide.read_level_region(0, (0, 0), (w, h))
        mpp = float(slide.mpp or 0.5)
    slides = root / "slides"
    slides.mkdir(parents=True)
    _write_tiff(slides / "sharp.tif", rgb, mpp)
    _write_tiff(slides / "blurred.tif", _blur(rgb, 2.5), mpp)
    _write_tiff(slides / "inked.tif", _ink(rgb, mpp), mpp)
    (root / "manifest.csv").write_text(
        "slide,patient_id,label,split\n"
        "sharp.tif,p1,0,train\nblurred.tif,p2,1,train\ninked.tif,p3,1,test\n"
    )
    toml = root / "site.toml"
    toml.write_text('[site]\nname = "qc-site"\nslides_root = "slides"\n')
    return toml


@pytest.fixture(scope="module")
def qc_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SHARED / CMU1).is_file():
        pytest.skip(f"real test data not found at {SHARED}")
    return write_qc_site(tmp_path_factory.mktemp("qc-site"), SHARED)


@pytest.fixture(scope="module")
def prepared(qc_site: Path) -> dict[str, object]:
    config = load_site_config(qc_site)
    report = prepare_site(config, workers=1)
    return {o.slide: o for o in report.slides}


def test_sharp_cmu1_passes_and_keeps_its_tiles(
    qc_site: Path, prepared: Prepared
) -> None:
    sharp = prepared["sharp.tif"]
    assert sharp.status == "ok"
    assert sharp.qc == "pass"
    assert sharp.qc_dropped_tiles == 0
    assert sharp.tiles > 20
    record = QcStore(load_site_config(qc_site).qc_dir).load(sharp.key)
    assert record is not None
    assert record.reasons == []
    assert record.tiles_kept == record.tiles_seen == sharp.tiles


def test_blurred_cmu1_is_flagged_its_tiles_dropped_and_skipped(
    qc_site: Path, prepared: Prepared
) -> None:
    blurred = prepared["blurred.tif"]
    assert blurred.status == "skipped"
    assert blurred.qc == "fail"
    assert blurred.reason.startswith("failed QC: every tissue tile failed QC")
    assert "out of focus" in blurred.reason
    record = QcStore(load_site_config(qc_site).qc_dir).load(blurred.key)
    assert record is not None
    assert record.tiles_kept == 0
    assert record.tiles_dropped == {"blur": record.tiles_seen}
    assert record.tiles_seen > 20


def test_inked_cmu1_is_prepared_with_a_warning_and_less_tissue(
    qc_site: Path, prepared: Prepared
) -> None:
    inked, sharp = prepared["inked.tif"], prepared["sharp.tif"]
    assert inked.status == "ok"
    assert inked.qc == "warn"
    assert 0 < inked.tiles < sharp.tiles
    record = QcStore(load_site_config(qc_site).qc_dir).load(inked.key)
    assert record is not None
    assert record.ink_fraction > 0.05
    assert any("pen ink" in r for r in record.reasons)


def test_failed_qc_is_remembered_and_the_report_kept(
    qc_site: Path, prepared: Prepared
) -> None:
    config = load_site_config(qc_site)
    again = {o.slide: o for o in prepare_site(config, workers=1).slides}
    assert again["blurred.tif"].status == "skipped"
    assert again["blurred.tif"].decoded_tiles == 0  # not opened again
    assert again["blurred.tif"].qc == "fail"
    assert again["sharp.tif"].status == "cached"
    assert again["sharp.tif"].qc == "pass"
    report = load_site_qc(config)
    assert report is not None
    assert [s.verdict for s in report.slides] == ["pass", "fail", "warn"]
    for s in report.slides:
        assert (config.qc_dir / s.thumbnail).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_site_qc_writes_the_page_and_json(
    qc_site: Path,
    prepared: Prepared,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "qc.html"
    assert main(["site", "qc", "--config", str(qc_site), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "QC failed blurred.tif (skipped): every tissue tile failed QC" in text
    assert "QC: 1 pass, 1 warn, 1 fail (skipped)" in text
    # The hint names the site.toml it was given.
    assert f"'slidefed site qc --config {qc_site} --out qc.html'" in text
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "http://" not in page
    assert "https://" not in page
    assert (
        main(["site", "qc", "--config", str(qc_site), "--out", str(out), "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [s["verdict"] for s in data["slides"]] == ["pass", "fail", "warn"]


def test_site_qc_refuses_a_site_with_qc_off(tmp_path: Path) -> None:
    toml = tmp_path / "site.toml"
    toml.write_text('[site]\nname = "s"\n[qc]\nenabled = false\n')
    assert main(["site", "qc", "--config", str(toml)]) == 2


def test_chromium_renders_the_qc_page(
    qc_site: Path, prepared: Prepared, tmp_path: Path
) -> None:
    out = tmp_path / "qc.html"
    assert main(["site", "qc", "--config", str(qc_site), "--out", str(out)]) == 0
    dom = run_chromium(out, "--dump-dom").stdout
    assert "QC report: site qc-site" in dom
    assert dom.count('class="v v-fail"') >= 2  # the summary and the slide
    shot = tmp_path / "shot.png"
    run_chromium(out, f"--screenshot={shot}", "--window-size=1200,1600")
    image = np.asarray(Image.open(shot).convert("RGB"))
    # The thumbnails are painted: the magenta of the ink, the red of blurred tiles.
    assert (np.abs(image.astype(int) - (230, 0, 200)).sum(axis=2) < 90).sum() > 50
    assert (np.abs(image.astype(int) - (230, 30, 30)).sum(axis=2) < 60).sum() > 50


def save_screenshot(target: Path) -> None:
    """Prepare the three-copy site, render its QC page, save a PNG at ``target``."""
    target = target.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        toml = write_qc_site(Path(tmp), SHARED)
        page = Path(tmp) / "qc.html"
        main(["site", "qc", "--config", str(toml), "--out", str(page)])
        shot = Path(tmp) / "shot.png"
        run_chromium(page, f"--screenshot={shot}", "--window-size=1200,1500")
        image = Image.open(shot).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            target, optimize=True
        )


if __name__ == "__main__":
    save_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "qc-report.png"))
