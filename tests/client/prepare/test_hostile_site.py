"""A site with a hostile slide: prepared in bounded memory, the slide named, and
rounds that read only what preparation made.

The hostile slide is a valid tiled JPEG TIFF whose last (edge, 232 x 256 px)
tile declares 12000 x 12000 px in its frame header; decoding it would allocate
about 412 MiB. It sits among the shared synthetic slides of a 10-patient site.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from slidefed.cli import main
from slidefed.client.app import app
from slidefed.client.config import load_site_config
from slidefed.client.keys import ensure_site_keys
from slidefed.client.prepare import check_prepared, prepare_site
from slidefed.client.prepare.prepared import load_site_features
from slidefed.client.prepare.report import PrepareReport
from slidefed.client.slides import DicomSlideSource, TiffSlideSource
from slidefed.common.errors import SiteNotPrepared
from slidefed.common.site_errors import SiteError
from slidefed.demo.synth import SynthSite, write_synthetic_slide
from tests.client.messages import instruction, node_context
from tests.client.prepared import shared_cache

HOSTILE = "slides/hostile.tif"
CAP = "over the cap of 16,777,216 px per tile ([prepare] max_tile_pixels in site.toml)"


def write_hostile_slide(path: Path) -> None:
    """1000 x 1024 px of tissue colours; the last tile's SOF says 12000 x 12000."""
    rng = np.random.default_rng(7)
    arr = np.clip(
        np.array([200, 120, 170]) + rng.normal(0, 25, (1024, 1000, 3)), 0, 255
    ).astype(np.uint8)
    tifffile.imwrite(
        path,
        arr,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(20000.0, 20000.0),  # 0.5 um/px
        resolutionunit="CENTIMETER",
    )
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        offset, count = int(page.dataoffsets[-1]), int(page.databytecounts[-1])
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0\x00\x11\x08", offset, offset + count) + 5
    struct.pack_into(">HH", data, sof, 12_000, 12_000)
    path.write_bytes(bytes(data))


def _site(folder: Path, small_site: SynthSite, *, cached: bool) -> Path:
    """The shared slides plus the hostile one, with their own state."""
    shutil.copytree(small_site.root / "slides", folder / "slides")
    write_hostile_slide(folder / HOSTILE)
    manifest = small_site.manifest.read_text() + f"{HOSTILE},P-hostile,0,train\n"
    (folder / "manifest.csv").write_text(manifest)
    toml = folder / "site.toml"
    toml.write_text(
        '[site]\nname = "hospital-h"\n'
        "[policy]\nmax_epsilon = 20.0\nmin_eval_patients = 1\n"
    )
    config = load_site_config(toml)
    ensure_site_keys(config)
    if cached:  # the shared slides' features: only the hostile slide is new
        shutil.copytree(shared_cache(small_site), config.cache_dir)
    return toml


def _report(toml: Path) -> PrepareReport:
    return PrepareReport.model_validate_json(
        (toml.parent / "state" / "prepare-report.json").read_text()
    )


def _audit(toml: Path) -> list[dict[str, Any]]:
    path = load_site_config(toml).audit_path
    return [json.loads(line) for line in path.read_text().splitlines()]


def _train(toml: Path, server_round: int = 1) -> Any:
    ctx = node_context(
        toml, run_name="hostile", num_server_rounds=3, target_epsilon=4.0
    )
    return app(instruction("train", server_round), ctx)


# Runs `slidefed site prepare` as a grandchild and reports its peak RSS: the
# pytest process's own children (other tests' subprocesses) do not count.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "out": done.stdout, "err": done.stderr,
                  "maxrss_kib": kib}))
"""


@pytest.mark.integration
def test_a_hostile_slide_prepares_in_bounded_memory_and_is_named(
    small_site: SynthSite, tmp_path: Path
) -> None:
    toml = _site(tmp_path, small_site, cached=False)
    prepare = [sys.executable, "-m", "slidefed.cli", "site", "prepare"]
    child = subprocess.run(
        [sys.executable, "-c", _MEASURE, *prepare, "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(child.stdout)

    assert result["rc"] == 0, result["err"][-2000:]
    assert result["maxrss_kib"] < 300 * 1024, result["maxrss_kib"]
    [line] = [x for x in result["out"].splitlines() if x.startswith("skipped")]
    assert re.match(
        rf"skipped manifest line \d+ \({HOSTILE}\): stored tile 15 of level 0 refused",
        line,
    )
    assert "its JPEG header declares 12000 x 12000 px" in line
    assert CAP in line
    outcomes = {s.slide: s for s in _report(toml).slides}
    assert outcomes[HOSTILE].status == "skipped"
    assert CAP in outcomes[HOSTILE].reason
    others = [s for name, s in outcomes.items() if name != HOSTILE]
    assert len(others) == small_site.n_slides
    assert {s.status for s in others} == {"ok"}
    assert all(s.tiles > 0 for s in others)


def test_site_prepare_names_the_hostile_slide_and_decodes_only_new_slides(
    small_site: SynthSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = _site(tmp_path, small_site, cached=True)
    assert main(["site", "prepare", "--config", str(toml), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        rf"skipped manifest line \d+ \({HOSTILE}\): stored tile 15 of level 0 "
        "refused before decoding",
        out,
    )
    assert CAP in out
    report = _report(toml)
    assert report.max_tile_pixels == 4096 * 4096
    assert {s.status for s in report.slides if s.slide != HOSTILE} == {"cached"}
    # A refusal is not remembered: the next run checks the slide again (and
    # refuses it again, still before decoding the tile).
    assert main(["site", "prepare", "--config", str(toml), "--workers", "1"]) == 0
    [again] = [s for s in _report(toml).slides if s.slide == HOSTILE]
    assert again.status == "skipped"
    assert CAP in again.reason


def test_a_round_after_preparation_decodes_no_slide(
    small_site: SynthSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = _site(tmp_path, small_site, cached=True)
    prepare_site(load_site_config(toml), workers=1)
    # The slides leave the site's disk, and opening any slide fails the test.
    shutil.rmtree(tmp_path / "slides")

    def no_slide(*_args: object, **_kwargs: object) -> None:
        pytest.fail("a round opened a slide")

    monkeypatch.setattr(TiffSlideSource, "__init__", no_slide)
    monkeypatch.setattr(DicomSlideSource, "__init__", no_slide)

    first = _train(toml, 1)
    second = _train(toml, 2)

    for reply in (first, second):
        assert not reply.has_error(), reply.error
        assert reply.content.array_records["arrays"]
    joined = next(e for e in _audit(toml) if e["event"] == "run_joined")
    dataset = joined["data"]["dataset"]
    assert dataset["slides_with_features"] == small_site.n_slides  # hostile left out
    assert [e["event"] for e in _audit(toml)].count("update_released") == 2


def test_a_site_never_prepared_refuses_with_the_one_line_fix(
    small_site: SynthSite, tmp_path: Path
) -> None:
    toml = _site(tmp_path, small_site, cached=True)

    reply = _train(toml)

    assert reply.has_error()
    assert reply.error.code == SiteError.SITE_NOT_PREPARED
    [failed] = [e for e in _audit(toml) if e["event"] == "round_failed"]
    reason = str(failed["data"]["reason"])
    assert "\n" not in reason
    assert "site hospital-h: no prepared features" in reason
    assert (
        f"run 'slidefed site prepare --config {toml}' before the node serves" in reason
    )
    assert not list((tmp_path / "state" / "cache").glob("*.skip.json"))
    assert not (tmp_path / "state" / "prepare-report.json").exists()  # nothing ran


def _add_row(toml: Path) -> None:
    manifest = toml.parent / "manifest.csv"
    shutil.copy(
        toml.parent / "slides" / "P0001-1.tif", toml.parent / "slides" / "n.tif"
    )
    manifest.write_text(manifest.read_text() + "slides/n.tif,P-new,1,train\n")


def _change_slide(toml: Path) -> None:
    slide = toml.parent / "slides" / "P0002-1.tif"
    slide.write_bytes(slide.read_bytes() + b"\x00")


def _replace_hostile(toml: Path) -> None:
    # A good copy from the scanner store: used only once prepared.
    write_synthetic_slide(
        toml.parent / HOSTILE, seed=5, tumour=False, width=1024, height=768
    )


def _change_tiling(toml: Path) -> None:
    toml.write_text(toml.read_text() + "[tiling]\ntile_size = 128\n")


def _lose_features(toml: Path) -> None:
    report = _report(toml)
    (toml.parent / "state" / "cache" / f"{report.usable[0].key}.npz").unlink()


def _cut_report(toml: Path) -> None:
    path = toml.parent / "state" / "prepare-report.json"
    path.write_text(
        _report(toml).model_copy(update={"complete": False}).model_dump_json()
    )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            _add_row,
            r"manifest changed since the site was prepared \(1 of its \d+ slides not",
        ),
        (
            _change_slide,
            r"the slide on manifest line \d+ changed since it was prepared",
        ),
        (
            _replace_hostile,
            r"the slide on manifest line \d+ changed since it was prepared",
        ),
        (_change_tiling, r"prepared with another \[tiling\] than site.toml sets"),
        (
            _lose_features,
            r"features of the slide on manifest line \d+ are missing from the feature cache",
        ),
        (_cut_report, "the last preparation did not finish"),
    ],
    ids=["manifest", "slide", "skipped-slide", "tiling", "cache", "killed-run"],
)
def test_features_that_no_longer_describe_the_site_are_refused_until_prepared(
    small_site: SynthSite, tmp_path: Path, change: Any, needle: str
) -> None:
    toml = _site(tmp_path, small_site, cached=True)
    prepare_site(load_site_config(toml), workers=1)
    change(toml)
    config = load_site_config(toml)

    with pytest.raises(SiteNotPrepared, match=needle) as caught:
        load_site_features(config)
    assert str(caught.value).endswith(
        f"run 'slidefed site prepare --config {toml}' before the node serves rounds"
    )

    prepare_site(config, workers=1)
    report, manifest = check_prepared(config)
    manifest_slides, feats = load_site_features(config)
    assert set(feats) == {s.slide for s in report.usable}
    assert manifest_slides.sha256 == manifest.sha256
