"""What a Ray node runs, and what ``--ray`` refuses, without starting a cluster."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from slidefed.cli import main
from slidefed.client.config import (
    FeaturesSection,
    QcSection,
    TilingSection,
    load_site_config,
)
from slidefed.client.prepare.distributed.loopback import free_port
from slidefed.client.prepare.distributed.work import (
    RegionDone,
    SlidePlan,
    SlideSkip,
    SlideWork,
    read_region,
    region_bounds,
    start_slide,
)
from slidefed.client.prepare.qc.checker import QcStore, SlideChecker
from slidefed.client.prepare.qc.tiles import TileTally
from slidefed.client.prepare.report import SlideOutcome
from slidefed.client.prepare.slide import prepare_slide
from slidefed.demo.synth import SynthSite
from tests.client.prepare.distributed.qc_slides import write_qc_slides

REPO = Path(__file__).resolve().parents[4]


def test_regions_cover_the_grid_on_whole_batches() -> None:
    bounds = region_bounds(1000, 100, 64)

    assert bounds[0] == (0, 128)
    assert all(a % 64 == 0 for a, _ in bounds)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(1000))
    assert region_bounds(5, 4096, 64) == [(0, 5)]


def _work(path: Path, region_tiles: int, qc: QcSection | None = None) -> SlideWork:
    return SlideWork(
        row=1,
        path=str(path),
        tiling=TilingSection(),
        features=FeaturesSection(batch_size=4),
        max_tile_pixels=4096 * 4096,
        region_tiles=region_tiles,
        qc=qc,
    )


def test_regions_give_the_features_of_a_local_run(
    small_site: SynthSite, tmp_path: Path
) -> None:
    slide = sorted((small_site.root / "slides").glob("*.tif"))[0]
    local = prepare_slide(
        "s.tif", slide, TilingSection(), FeaturesSection(batch_size=4), tmp_path
    )
    work = _work(slide, region_tiles=4)

    plan = start_slide(work)
    assert isinstance(plan, SlidePlan)
    parts = []
    for a, b in plan.regions:
        grid = plan.grid.model_copy(update={"coords": plan.grid.coords[a:b]})
        done = read_region(work, grid)
        assert isinstance(done, RegionDone)
        parts.append(done)

    with np.load(tmp_path / f"{local.key}.npz") as data:
        feats, coords = data["features"], data["coords"]
    assert np.concatenate([p.features for p in parts]).tobytes() == feats.tobytes()
    assert [c for p in parts for c in p.coords] == [tuple(c) for c in coords.tolist()]
    # A slide of one region is encoded by the task that plans it.
    whole = start_slide(_work(slide, region_tiles=4096))
    assert isinstance(whole, RegionDone)
    assert whole.features.tobytes() == feats.tobytes()


@pytest.fixture
def qc_slides(small_site: SynthSite, tmp_path: Path) -> tuple[Path, Path]:
    source = sorted((small_site.root / "slides").glob("*.tif"))[0]
    return write_qc_slides(source, tmp_path)


def _local_qc(slide: Path, root: Path) -> tuple[SlideOutcome, QcStore]:
    """A local preparation of ``slide`` with QC: its outcome and QC records."""
    store = QcStore(root / "qc")
    features = FeaturesSection(batch_size=4)
    local = prepare_slide(
        "s.tif",
        slide,
        TilingSection(),
        features,
        root / "cache",
        qc=QcSection(),
        qc_dir=store.root,
        row=1,
    )
    return local, store


def test_regions_with_qc_drop_the_tiles_of_a_local_run(
    qc_slides: tuple[Path, Path], tmp_path: Path
) -> None:
    partly = qc_slides[1]
    local, store = _local_qc(partly, tmp_path)
    assert local.status == "ok"
    assert local.qc_dropped_tiles > 0
    work = _work(partly, region_tiles=4, qc=QcSection())

    plan = start_slide(work)
    assert isinstance(plan, SlidePlan)
    assert plan.masks is not None
    parts = []
    for a, b in plan.regions:
        grid = plan.grid.model_copy(update={"coords": plan.grid.coords[a:b]})
        done = read_region(work, grid, plan.masks)
        assert isinstance(done, RegionDone)
        assert done.tally is not None
        # Without the masks a region assesses the slide again, to the same end.
        again = read_region(work, grid)
        assert isinstance(again, RegionDone)
        assert again.features.tobytes() == done.features.tobytes()
        assert again.tally == done.tally
        parts.append(done)

    key = local.key
    with np.load(tmp_path / "cache" / f"{key}.npz") as data:
        feats, coords = data["features"], data["coords"]
    assert np.concatenate([p.features for p in parts]).tobytes() == feats.tobytes()
    assert [c for p in parts for c in p.coords] == [tuple(c) for c in coords.tolist()]
    # Not all the dropped tiles are in one region, and together they make the
    # local run's record.
    assert sum(1 for p in parts if p.tally and p.tally.flaws) >= 2
    checker = SlideChecker(QcSection(), work.features.encoder, plan.masks)
    for p in parts:
        assert p.tally is not None
        checker.tally.merge(p.tally)
    record = checker.record(slide="s.tif", row=1, key=key, grid=plan.grid)
    stored = store.load(key)
    assert stored is not None
    assert stored.verdict == "warn"
    assert record == stored.model_copy(update={"thumbnail": ""})


def test_a_blurred_slide_of_one_region_comes_back_with_its_qc(
    qc_slides: tuple[Path, Path], tmp_path: Path
) -> None:
    blurred = qc_slides[0]
    local, store = _local_qc(blurred, tmp_path)
    stored = store.load(local.key)
    assert stored is not None
    assert stored.verdict == "fail"

    whole = start_slide(_work(blurred, region_tiles=4096, qc=QcSection()))

    assert isinstance(whole, RegionDone)
    assert whole.coords == []
    assert len(whole.features) == 0
    assert whole.masks is not None
    assert whole.grid is not None
    assert isinstance(whole.tally, TileTally)
    assert whole.tally.seen == stored.tiles_seen
    assert dict(whole.tally.flaws) == {"blur": stored.tiles_seen}


def test_a_bad_slide_is_a_remembered_skip(tmp_path: Path) -> None:
    bad = tmp_path / "notes.tif"
    bad.write_text("not a slide\n")

    result = start_slide(_work(bad, region_tiles=8))

    assert isinstance(result, SlideSkip)
    assert result.remember
    assert str(tmp_path) not in result.reason


def test_no_cluster_at_the_address_is_one_line_and_exit_2(
    small_site: SynthSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.toml"
    config.write_text(
        f'[site]\nname = "t"\nmanifest = "{small_site.manifest}"\n'
        f'slides_root = "{small_site.root}"\n'
    )
    address = f"127.0.0.1:{free_port()}"

    rc = main(["site", "prepare", "--config", str(config), "--ray", address])

    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(f"error: no Ray cluster answers at {address}")
    assert "ray start --head" in err[-1]


def test_ray_address_in_site_toml(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[site]\nname = "t"\n[prepare]\nray_address = "10.0.0.5:6379"\n')

    assert load_site_config(config).prepare.ray_address == "10.0.0.5:6379"


def test_local_preparation_does_not_import_ray(small_site: SynthSite) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from slidefed.client.config import load_site_config
        from slidefed.client.prepare import prepare_site
        report = prepare_site(load_site_config(Path({str(small_site.root)!r}) /
                              "site.toml"), workers=1)
        assert report.usable
        print("ray" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )

    assert out.stdout.strip() == "False"
