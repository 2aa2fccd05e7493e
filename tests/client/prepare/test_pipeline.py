"""``slidefed site prepare``: real slides, bad input, resume, bounded memory."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from slidefed.cli import main
from slidefed.client.config import load_site_config
from slidefed.client.prepare import slide as slide_mod
from slidefed.client.prepare.cache import FeatureCache, HashMemo
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.client.prepare.report import PrepareReport
from slidefed.demo.synth import write_synthetic_slide

REAL = [
    "aperio/CMU-1-Small-Region.svs",
    "aperio/tcga-cr-7395-01a-01-ts1.svs",
    "aperio/openslide-python-small.svs",
    "hamamatsu/test3-DAPI-2-(387).ndpi",
    "hamamatsu/test3-TRITC-2-(560).ndpi",
    "ome-tiff/OS-1-detail.ome.tif",
    "ome-tiff/OS-2-ndpi.ome.tif",
    "ome-tiff/OS-2-vsi.ome.tif",
    "dicom/cmu-1-small-region",
    "dicom/google-wsi2dcm-tests/jpeg.dicom",
]


def _site(root: Path, rows: list[tuple[str, str, int, str]], extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["slide,patient_id,label,split"] + [
        f"{s},{p},{label},{split}" for s, p, label, split in rows
    ]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    # Slides named by absolute path elsewhere (a fixture folder, the shared data)
    # are allowed explicitly, as a site with an archive on another mount does.
    outside = sorted({str(Path(r[0]).parent) for r in rows if Path(r[0]).is_absolute()})
    roots = f"extra_slide_roots = {json.dumps(outside)}\n" if outside else ""
    config = root / "site.toml"
    config.write_text(f'[site]\nname = "t"\n{roots}{extra}')
    return config


def _report(config: Path) -> PrepareReport:
    state = config.parent / "state" / "prepare-report.json"
    return PrepareReport.model_validate_json(state.read_text())


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_open(path: Path) -> None:
        raise AssertionError(f"slide opened on a cached run: {path}")

    monkeypatch.setattr(slide_mod, "open_slide", no_open)


# --------------------------------------------------------------- real slides
@pytest.mark.slow
def test_real_site_with_bad_files(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slides = shared_data / "slides"
    (tmp_path / "corrupt.svs").write_bytes(
        (slides / "aperio" / "CMU-1-Small-Region.svs").read_bytes()[:300_000]
    )
    (tmp_path / "notes.svs").write_text("scanner export log, not a slide\n")
    rows = [(str(slides / s), f"P{i}", i % 2, "train") for i, s in enumerate(REAL)]
    rows += [("corrupt.svs", "PX", 0, "test"), ("notes.svs", "PY", 1, "test")]
    config = _site(tmp_path, rows, "[tiling]\nfallback_mpp = 0.5\n")

    rc = main(["site", "prepare", "--config", str(config), "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    # Named by manifest line (header = 1, ten real slides on lines 2-11).
    assert "skipped manifest line 12 (corrupt.svs): file is truncated" in out
    assert "skipped manifest line 13 (notes.svs): not a readable slide (a text" in out
    assert "openslide-python-small.svs): slide is smaller than one tile" in out
    assert "jpeg.dicom): scan resolution 16.78 um/px is too coarse" in out
    assert out.count("skipped manifest line ") == 4  # each skip once
    report = _report(config)
    assert report.complete
    by_name = {Path(s.slide).name: s for s in report.slides}
    ok = {n for n, s in by_name.items() if s.status == "ok"}
    assert ok == {
        "CMU-1-Small-Region.svs",
        "tcga-cr-7395-01a-01-ts1.svs",
        "test3-DAPI-2-(387).ndpi",
        "test3-TRITC-2-(560).ndpi",
        "OS-1-detail.ome.tif",
        "OS-2-ndpi.ome.tif",
        "OS-2-vsi.ome.tif",
        "cmu-1-small-region",
    }
    cache = FeatureCache(tmp_path / "state" / "cache")
    for name in ok:
        outcome = by_name[name]
        assert outcome.tiles > 0
        assert outcome.seconds > 0
        assert cache.load(outcome.key).shape == (outcome.tiles, 24)
        assert len(cache.load_coords(outcome.key)) == outcome.tiles

    # Second run: every usable slide comes from the cache, none is opened.
    _forbid_decoding(monkeypatch)
    rc = main(["site", "prepare", "--config", str(config), "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    again = _report(config)
    assert {Path(s.slide).name for s in again.slides if s.status == "cached"} == ok
    assert all(s.decoded_tiles == 0 for s in again.slides)
    assert "(0 prepared, 8 cached, 4 skipped)" in out


# ----------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def slide_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for i in range(3):
        write_synthetic_slide(
            folder / f"s{i}.tif", seed=10 + i, tumour=bool(i % 2), width=768, height=512
        )
    blank = np.full((512, 768, 3), 242, np.uint8)
    tifffile.imwrite(
        folder / "blank.tif",
        blank,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(20000.0, 20000.0),
        resolutionunit="CENTIMETER",
    )
    return folder


def test_bad_rows_and_slides_are_listed_and_the_rest_prepared(
    slide_files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    copy = site / "copy-of-s0.tif"
    copy.write_bytes((slide_files / "s0.tif").read_bytes())
    rows = [
        (str(slide_files / "s0.tif"), "P1", 0, "train"),
        (str(slide_files / "s1.tif"), "P2", 1, "train"),
        (str(slide_files / "s1.tif"), "P3", 1, "train"),  # duplicate slide
        (str(slide_files / "s2.tif"), "P4", 0, "train"),  # P4: conflicting labels
        (str(slide_files / "blank.tif"), "P4", 1, "train"),
        (str(slide_files / "blank.tif") + ".gone", "P5", 0, "test"),  # missing
        (str(copy), "P6", 0, "test"),  # same content as s0
    ]
    config = _site(site, rows)
    with caplog.at_level(logging.WARNING, logger="slidefed"):
        rc = main(["site", "prepare", "--config", str(config), "--workers", "1"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "manifest line 4 (" in out
    assert "duplicate slide" in out
    assert "manifest line 5 (" in out
    assert "s2.tif) rejected: patient has conflicting labels" in out
    assert "manifest line 6 (" in out
    assert "blank.tif) rejected" in out
    assert "blank.tif.gone): file named in the manifest does not exist" in out
    assert (
        f"skipped manifest line 8 ({copy}): same content as manifest line 2 "
        "(a copy of it)" in out
    )
    assert f"skipped manifest line 7 ({slide_files / 'blank.tif'}.gone): " in out
    # Each skip is printed once, on stdout; nothing repeats it on stderr.
    assert out.count("copy-of-s0.tif") == 1
    assert "skipped" not in err
    report = _report(config)
    assert [s.status for s in report.slides] == ["ok", "ok", "skipped", "skipped"]
    assert report.tiles_per_second > 0
    # Logs name slides by manifest position, never by path or file name.
    for record in caplog.records:
        message = record.getMessage()
        assert "s0.tif" not in message
        assert str(slide_files) not in message


def test_slide_without_tissue_is_skipped(slide_files: Path, tmp_path: Path) -> None:
    rows = [
        (str(slide_files / "s0.tif"), "P1", 0, "train"),
        (str(slide_files / "blank.tif"), "P2", 1, "train"),
    ]
    config = load_site_config(_site(tmp_path, rows))
    report = prepare_site(config, workers=1)
    assert [(s.status, s.reason) for s in report.slides] == [
        ("ok", ""),
        ("skipped", "no tissue found"),
    ]


def test_nothing_usable_exits_2(
    slide_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.svs").write_text("nope")
    rows = [
        ("x.svs", "P1", 0, "train"),
        (str(slide_files / "blank.tif"), "P2", 1, "train"),
    ]
    config = _site(tmp_path, rows)
    rc = main(["site", "prepare", "--config", str(config), "--workers", "1"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "skipped manifest line 2 (x.svs): not a readable slide" in captured.out
    assert captured.err.strip().startswith("error: no usable slide")
    assert len(captured.err.strip().splitlines()) == 1


def test_invalid_manifest_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.csv").write_text("file,who\na.svs,P1\n")
    (tmp_path / "site.toml").write_text('[site]\nname = "t"\n')
    rc = main(["site", "prepare", "--config", str(tmp_path / "site.toml")])
    assert rc == 2
    assert "missing column" in capsys.readouterr().err


def test_inspect_bad_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "scan.svs"
    bad.write_bytes(b"II*\x00" + (10**9).to_bytes(4, "little") + bytes(100))
    rc = main(["slide", "inspect", str(bad)])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines == [
        f"error: {bad}: file is truncated (its first image directory is "
        "at byte 1000000000 of a 108-byte file); copy the slide again "
        "from the scanner store"
    ]


def test_hash_memo_skips_rehashing_unchanged_slides(
    slide_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [(str(slide_files / "s1.tif"), "P1", 0, "train")]
    config = load_site_config(_site(tmp_path, rows))
    prepare_site(config, workers=1)
    memo = HashMemo.load(config.cache_dir / "hashes.json")
    assert str((slide_files / "s1.tif").resolve()) in memo.entries

    def no_hash(path: Path) -> str:
        raise AssertionError("unchanged slide hashed again")

    monkeypatch.setattr("slidefed.client.prepare.cache.slide_sha256", no_hash)
    _forbid_decoding(monkeypatch)
    report = prepare_site(config, workers=1)
    assert [s.status for s in report.slides] == ["cached"]


# -------------------------------------------------------------------- resume
@pytest.mark.slow
def test_prepare_resumes_after_a_kill(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    rows = []
    for i in range(6):
        write_synthetic_slide(
            slides / f"r{i}.tif", seed=40 + i, tumour=True, width=1536, height=1024
        )
        rows.append((f"slides/r{i}.tif", f"P{i}", i % 2, "train"))
    config = _site(tmp_path, rows)
    cache = tmp_path / "state" / "cache"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slidefed.cli",
            "site",
            "prepare",
            "--config",
            str(config),
            "--workers",
            "1",
            "--json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob("*.npz")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(list(cache.glob("*.npz")))
    assert 1 <= done < 6, "the run ended before it could be killed"
    report = prepare_site(load_site_config(config), workers=1)
    statuses = [s.status for s in report.slides]
    assert statuses.count("cached") == done
    assert statuses.count("ok") == 6 - done


# ------------------------------------------------------------- bounded memory
_BIG_SLIDE_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from slidefed.client.prepare.pipeline import prepare_site
    from slidefed.client.slides import open_slide
    from slidefed.client.prepare.tiling import iter_tiles, plan_tiles
    from slidefed.client.config import TilingSection, load_site_config

    config = load_site_config(Path(sys.argv[1]))
    report = prepare_site(config, workers=1)
    # Then read every tile of a level-0 band of the grid, tissue or not.
    with open_slide(Path(sys.argv[2])) as slide:
        grid = plan_tiles(slide, TilingSection(tissue_fraction=0.01))
        n = sum(len(b.coords) for b in iter_tiles(slide, grid, 64))
    print(json.dumps({
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "statuses": [s.status for s in report.slides],
        "tiles": [s.tiles for s in report.slides],
        "read": n,
    }))
    """
)


def write_big_slide(path: Path, side: int, *, tissue: float = 0.08) -> None:
    """A ``side`` x ``side`` px JPEG pyramid written tile by tile (streamed).

    A disc of H&E-like tiles (``tissue``: its radius as a fraction of the side)
    on white. Large levels repeat the bytes of a few tiles encoded once, so
    that even a 100k x 100k px slide writes in seconds; levels of at most 4096
    px (those the tissue mask is made from) are drawn pixel by pixel.
    """
    tile = 256
    rng = np.random.default_rng(0)
    pink = np.array([225, 150, 190], np.float64)
    templates = []
    for _ in range(4):
        img = pink + rng.normal(0, 12, (tile, tile, 3))
        ys, xs = rng.integers(0, tile, (2, 40))
        for y, x in zip(ys, xs, strict=True):
            img[max(y - 4, 0) : y + 4, max(x - 4, 0) : x + 4] = (90, 60, 150)
        templates.append(np.clip(img, 0, 255).astype(np.uint8))
    templates.append(np.full((tile, tile, 3), 243, np.uint8))
    args: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": 85},
        "metadata": None,
        "software": False,
    }
    strip = path.with_suffix(".templates.tif")
    tifffile.imwrite(
        strip, np.concatenate(templates, axis=1), tile=(tile, tile), **args
    )
    with tifffile.TiffFile(strip) as tf:
        page = tf.pages[0]
        encoded = []
        with strip.open("rb") as fh:
            for off, cnt in zip(page.dataoffsets, page.databytecounts, strict=True):
                fh.seek(off)
                encoded.append(fh.read(cnt))
    strip.unlink()

    def tiles(level_side: int, ds: int) -> Iterator[bytes]:
        n = -(-level_side // tile)
        centre, radius = side / 2, tissue * side
        for ty in range(n):
            for tx in range(n):
                cx = (tx + 0.5) * tile * ds - centre
                cy = (ty + 0.5) * tile * ds - centre
                inside = cx * cx + cy * cy < radius * radius
                yield encoded[(tx + ty) % 4] if inside else encoded[4]

    def rendered(level_side: int, ds: int) -> np.ndarray:
        """A small level drawn pixel by pixel: the disc the mask is made from."""
        yy, xx = np.mgrid[0:level_side, 0:level_side]
        centre, radius = side / 2 / ds, tissue * side / ds
        inside = (yy + 0.5 - centre) ** 2 + (xx + 0.5 - centre) ** 2 < radius**2
        img = np.full((level_side, level_side, 3), 243, np.uint8)
        noise = rng.normal(0, 12, (int(inside.sum()), 3))
        img[inside] = np.clip(pink + noise, 0, 255).astype(np.uint8)
        return img

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        ds = 1
        while side // ds >= 256:
            level_side = side // ds
            data = (
                rendered(level_side, ds)
                if level_side <= 4096
                else tiles(level_side, ds)
            )
            tw.write(
                data,
                shape=(level_side, level_side, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                resolution=(20000.0 / ds, 20000.0 / ds),
                resolutionunit="CENTIMETER",
                subfiletype=0 if ds == 1 else 1,
                **args,
            )
            ds *= 2


@pytest.mark.slow
def test_big_slide_prepares_in_bounded_memory(tmp_path: Path) -> None:
    side = int(os.environ.get("SLIDEFED_BIG_SLIDE_PX", "100000"))
    big = tmp_path / "big.tif"
    write_big_slide(big, side, tissue=0.04)
    assert big.stat().st_size < 2**31
    config = _site(tmp_path, [("big.tif", "P1", 0, "train")])
    try:
        child = subprocess.run(
            [sys.executable, "-c", _BIG_SLIDE_CHILD, str(config), str(big)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        big.unlink()
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["statuses"] == ["ok"]
    assert result["tiles"][0] > 100
    assert result["read"] > result["tiles"][0]
    assert result["maxrss_kib"] < 2 * 1024 * 1024, result


def test_skips_from_a_failing_disk_are_not_remembered(tmp_path: Path) -> None:
    from slidefed.client.prepare.slide import _remember_skip
    from slidefed.common.errors import SlideReadError

    cache = FeatureCache(tmp_path)
    try:
        try:
            raise OSError(5, "Input/output error")
        except OSError as io:
            raise SlideReadError("s.svs", "unreadable (OSError)") from io
    except SlideReadError as exc:
        _remember_skip(cache, "io", exc, None)
    _remember_skip(cache, "content", SlideReadError("s.svs", "no tissue found"), None)
    assert cache.load_skip("io") is None
    assert cache.load_skip("content") == "no tissue found"


def test_changing_fallback_mpp_redoes_only_the_slides_that_stand_on_it(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aperio = shared_data / "slides" / "aperio"
    own, bare = "CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"  # mpp / none
    rows = [
        (str(aperio / own), "P1", 0, "train"),
        (str(aperio / bare), "P2", 1, "train"),
    ]
    config = _site(tmp_path, rows, "[tiling]\nfallback_mpp = 0.5\n")
    cache = FeatureCache(tmp_path / "state" / "cache")

    def prepare() -> dict[str, Any]:
        assert main(["site", "prepare", "--config", str(config), "--workers", "1"]) == 0
        capsys.readouterr()
        return {Path(s.slide).name: s for s in _report(config).slides}

    first = prepare()
    assert [first[n].status for n in (own, bare)] == ["ok", "ok"]
    assert cache.fallback_mpp(first[own].key) is None
    assert cache.fallback_mpp(first[bare].key) == 0.5
    config.write_text(config.read_text().replace("= 0.5", "= 0.4"))
    second = prepare()
    # The slide with its own mpp is kept; the one tiled at the fallback is redone.
    assert [second[n].status for n in (own, bare)] == ["cached", "ok"]
    assert second[own].key == first[own].key
    assert cache.fallback_mpp(second[bare].key) == 0.4
    # The same pixels span less tissue at 0.4 um/px: fewer 0.5 um/px tiles.
    assert second[bare].tiles < first[bare].tiles
    third = prepare()
    assert [third[n].status for n in (own, bare)] == ["cached", "cached"]
