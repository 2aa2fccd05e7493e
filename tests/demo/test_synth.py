"""Tests of slidefed.demo.synth: synthetic H&E slides and sites."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import tiffslide

from slidefed.common.errors import ConfigError
from slidefed.demo.synth import SynthSite, synth_site, write_synthetic_slide
from slidefed.demo.synth._render import render

# Ruifrok & Johnston stain matrix (H, E, residual), rows normalised.
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_UNMIX = np.linalg.inv(_STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True))


def _haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density per pixel (colour deconvolution)."""
    od = -np.log((rgb.astype(np.float32) + 1) / 256)
    h_od = od.reshape(-1, 3) @ _UNMIX[:, 0].astype(np.float32)
    return np.asarray(h_od.reshape(rgb.shape[:2]), np.float32)


def _tissue(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb.astype(np.float64).mean(axis=-1) < 215, dtype=bool)


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _manifest(site: SynthSite) -> list[dict[str, str]]:
    with site.manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"patients": 3, "width": 640, "height": 512}
    a = synth_site(tmp_path / "a", seed=7, **kw)
    b = synth_site(tmp_path / "b", seed=7, **kw)
    c = synth_site(tmp_path / "c", seed=8, **kw)
    ha, hb, hc = _hashes(a.root), _hashes(b.root), _hashes(c.root)
    assert "manifest.csv" in ha
    assert len(ha) == a.n_slides + 1
    assert ha == hb
    common = (set(ha) & set(hc)) - {"manifest.csv"}
    assert common
    assert all(ha[k] != hc[k] for k in common)


def test_slide_bytes_depend_on_seed_and_label(tmp_path: Path) -> None:
    paths = {}
    for name, seed, tumour in [("a", 1, False), ("b", 1, False), ("c", 2, False)]:
        paths[name] = tmp_path / f"{name}.tif"
        write_synthetic_slide(
            paths[name], seed=seed, tumour=tumour, width=512, height=384
        )
    paths["d"] = tmp_path / "d.tif"
    write_synthetic_slide(paths["d"], seed=1, tumour=True, width=512, height=384)
    data = {k: p.read_bytes() for k, p in paths.items()}
    assert data["a"] == data["b"]
    assert data["a"] != data["c"]
    assert data["a"] != data["d"]


def test_default_slide_is_a_pyramid_with_mpp(tmp_path: Path) -> None:
    path = tmp_path / "slide.tif"
    write_synthetic_slide(path, seed=3, tumour=True)
    with tiffslide.TiffSlide(path) as ts:
        assert ts.level_count >= 4
        assert ts.dimensions == (2560, 2048)
        assert ts.level_dimensions[:4] == (
            (2560, 2048),
            (1280, 1024),
            (640, 512),
            (320, 256),
        )
        assert ts.level_downsamples[:4] == pytest.approx((1.0, 2.0, 4.0, 8.0))
        assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.5, abs=1e-6)
        assert float(ts.properties["tiffslide.mpp-y"]) == pytest.approx(0.5, abs=1e-6)
        region = np.asarray(ts.read_region((1024, 1024), 0, (256, 256)))
        assert region.shape[:2] == (256, 256)
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 4
        for i, page in enumerate(tf.pages):
            assert isinstance(page, tifffile.TiffPage)
            assert page.is_tiled
            assert (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.subfiletype == (0 if i == 0 else 1)
            unit = page.tags.get("ResolutionUnit")
            assert unit is not None
            assert unit.value == 3  # centimetre
            assert "DateTime" not in page.tags
            assert "Software" not in page.tags
        assert not tf.pages[0].subifds


def test_small_slide_levels_follow_the_256_px_rule(tmp_path: Path) -> None:
    path = tmp_path / "small.tif"
    write_synthetic_slide(path, seed=0, tumour=False, width=1024, height=768, mpp=0.25)
    with tiffslide.TiffSlide(path) as ts:
        assert ts.level_dimensions == ((1024, 768), (512, 384))
        assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.25, abs=1e-6)


def test_image_looks_like_he(tmp_path: Path) -> None:
    path = tmp_path / "slide.tif"
    write_synthetic_slide(path, seed=5, tumour=False, width=1024, height=768)
    rgb = tifffile.imread(path, key=0)
    assert rgb.shape == (768, 1024, 3)
    assert rgb.dtype == np.uint8
    tissue = _tissue(rgb)
    assert 0.3 < tissue.mean() < 0.65
    background = rgb[~tissue].astype(np.float64)
    assert 230 < np.median(background) < 248
    assert background.std() > 0.3  # slight noise, not flat
    # Tissue is pink on average: red above green, blue above green.
    mean = rgb[tissue].astype(np.float64).mean(axis=0)
    assert mean[0] > mean[1] + 20
    assert mean[2] > mean[1] + 10
    # There are some purple nuclei but they are a minority of the tissue.
    nuclei = _haematoxylin(rgb)[tissue] > 0.6
    assert 0.02 < nuclei.mean() < 0.3


def test_tumour_slides_have_more_dark_nuclei(tmp_path: Path) -> None:
    fractions: dict[bool, list[float]] = {False: [], True: []}
    for seed in range(3):
        for tumour in (False, True):
            path = tmp_path / f"s{seed}-{int(tumour)}.tif"
            write_synthetic_slide(
                path, seed=seed, tumour=tumour, width=1024, height=768
            )
            with tiffslide.TiffSlide(path) as ts:
                rgb = np.asarray(ts.read_region((0, 0), 0, (1024, 768)))[..., :3]
            tissue = _tissue(rgb)
            dark = (_haematoxylin(rgb) > 1.0) & tissue
            fractions[tumour].append(float(dark.sum() / tissue.sum()))
    assert min(fractions[True]) > 2 * max(fractions[False])
    assert np.mean(fractions[True]) > 4 * np.mean(fractions[False])


def test_tumour_tiles_separate_on_haematoxylin() -> None:
    size, width, height = 224, 2560, 2048
    tumour_tiles: list[float] = []
    normal_tiles: list[float] = []
    for seed in (11, 12):
        for tumour in (False, True):
            rgb, weight = render(seed, tumour, width, height)
            # Every second pixel is plenty for a tile mean, and 4x faster.
            rgb = rgb[::2, ::2]
            h_od, tissue = _haematoxylin(rgb), _tissue(rgb)
            for y in range(0, height - size + 1, size):
                for x in range(0, width - size + 1, size):
                    window = np.s_[y // 2 : (y + size) // 2, x // 2 : (x + size) // 2]
                    t = tissue[window]
                    if t.mean() < 0.5:
                        continue
                    feature = float(h_od[window][t].mean())
                    w = weight[y // 8 : (y + size) // 8, x // 8 : (x + size) // 8]
                    if tumour and w.mean() > 0.7:
                        tumour_tiles.append(feature)
                    elif w.max() < 0.05:
                        normal_tiles.append(feature)
    assert len(tumour_tiles) >= 10
    assert len(normal_tiles) >= 50
    assert min(tumour_tiles) > max(normal_tiles) + 0.1


def test_tumour_region_is_part_of_the_tissue() -> None:
    for seed in range(4):
        rgb, weight = render(seed, True, 1024, 768)
        tissue_low = _tissue(rgb)[4::8, 4::8]
        region = weight > 0.5
        fraction = region.sum() / max(int(tissue_low.sum()), 1)
        assert 0.2 < fraction < 0.55
        assert (region & ~tissue_low).mean() < 0.01
        _, none = render(seed, False, 1024, 768)
        assert not none.any()


def test_manifest_columns_splits_and_stratification(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    site = synth_site(
        tmp_path / "site",
        patients=12,
        seed=4,
        width=256,
        height=256,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert site.n_patients == 12
    assert site.n_tumour == 6
    assert site.manifest == site.root / "manifest.csv"
    header = site.manifest.read_text(encoding="utf-8").splitlines()[0]
    assert header == "slide,patient_id,label,split"
    rows = _manifest(site)
    assert len(rows) == site.n_slides
    assert calls == [(i, site.n_slides) for i in range(1, site.n_slides + 1)]

    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        assert row["label"] in {"0", "1"}
        assert row["split"] in {"train", "test"}
        assert row["slide"].startswith("slides/")
        assert row["slide"].startswith(f"slides/{row['patient_id']}-")
        assert (site.root / row["slide"]).is_file()
        by_patient[row["patient_id"]].append(row)
    assert sorted(by_patient) == [f"P{i:04d}" for i in range(1, 13)]
    for pid, slides in by_patient.items():
        assert 1 <= len(slides) <= 3
        assert [r["slide"] for r in slides] == [
            f"slides/{pid}-{k}.tif" for k in range(1, len(slides) + 1)
        ]
        assert len({r["label"] for r in slides}) == 1
        assert len({r["split"] for r in slides}) == 1
    label = {pid: s[0]["label"] for pid, s in by_patient.items()}
    split = {pid: s[0]["split"] for pid, s in by_patient.items()}
    assert sum(v == "1" for v in label.values()) == 6
    for cls in ("0", "1"):
        test = [p for p in label if label[p] == cls and split[p] == "test"]
        train = [p for p in label if label[p] == cls and split[p] == "train"]
        assert len(test) >= 2
        assert len(train) >= 1


@pytest.mark.parametrize(
    ("patients", "tumour_fraction", "test_fraction"),
    [(8, 0.5, 0.3), (8, 0.25, 0.1), (9, 0.7, 0.3), (20, 0.5, 0.05), (24, 0.3, 0.5)],
)
def test_stratified_split_has_two_test_patients_per_class(
    tmp_path: Path, patients: int, tumour_fraction: float, test_fraction: float
) -> None:
    site = synth_site(
        tmp_path,
        patients=patients,
        seed=patients,
        tumour_fraction=tumour_fraction,
        test_fraction=test_fraction,
        width=256,
        height=256,
    )
    rows = _manifest(site)
    label = {r["patient_id"]: r["label"] for r in rows}
    split = {r["patient_id"]: r["split"] for r in rows}
    n_tumour = round(patients * tumour_fraction)
    assert site.n_tumour == n_tumour
    assert sum(v == "1" for v in label.values()) == n_tumour
    for cls, n_class in (("0", patients - n_tumour), ("1", n_tumour)):
        n_test = sum(label[p] == cls and split[p] == "test" for p in label)
        assert n_test >= 2
        assert n_test == max(2, min(n_class - 1, round(n_class * test_fraction)))


def test_small_site_without_minimum(tmp_path: Path) -> None:
    site = synth_site(tmp_path, patients=1, seed=0, width=256, height=256)
    rows = _manifest(site)
    assert {r["patient_id"] for r in rows} == {"P0001"}
    assert site.n_tumour == 0  # round(0.5) == 0
    assert {r["split"] for r in rows} == {"train"}


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"patients": 0}, "patients"),
        ({"patients": -3}, "patients"),
        ({"tumour_fraction": 1.5}, "tumour_fraction"),
        ({"tumour_fraction": -0.1}, "tumour_fraction"),
        ({"tumour_fraction": float("nan")}, "tumour_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"width": 100}, "width"),
        ({"height": 0}, "height"),
    ],
)
def test_synth_site_bad_arguments(
    tmp_path: Path, kwargs: dict[str, Any], option: str
) -> None:
    args: dict[str, Any] = {"patients": 2, "seed": 0, "width": 256, "height": 256}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=option) as info:
        synth_site(tmp_path / "out", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"seed": -5}, "seed"),
        ({"width": 255}, "width"),
        ({"mpp": 0.0}, "mpp"),
        ({"mpp": float("inf")}, "mpp"),
        ({"tile": 100}, "tile"),
        ({"tile": 0}, "tile"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
    ],
)
def test_write_synthetic_slide_bad_arguments(
    tmp_path: Path, kwargs: dict[str, Any], option: str
) -> None:
    args: dict[str, Any] = {"seed": 0, "tumour": False, "width": 256, "height": 256}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=option) as info:
        write_synthetic_slide(tmp_path / "x.tif", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.tif").exists()


def test_synth_site_result_is_frozen(tmp_path: Path) -> None:
    site = synth_site(tmp_path, patients=2, seed=1, width=256, height=256)
    with pytest.raises(ValueError, match="frozen"):
        site.n_slides = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        SynthSite(
            root=tmp_path,
            manifest=tmp_path / "manifest.csv",
            n_patients=1,
            n_slides=1,
            n_tumour=0,
            bogus=1,  # type: ignore[call-arg]
        )


def test_label_noise_flips_training_labels_only_and_leaves_the_pixels(
    tmp_path: Path,
) -> None:
    kw: dict[str, Any] = {"patients": 30, "seed": 4, "width": 256, "height": 256}
    clean = synth_site(tmp_path / "clean", **kw)
    noisy = synth_site(tmp_path / "noisy", label_noise=0.3, **kw)
    before, after = _manifest(clean), _manifest(noisy)
    changed = {a["patient_id"] for a, b in zip(before, after, strict=True) if a != b}
    assert noisy.n_flipped == len(changed) > 0
    for a, b in zip(before, after, strict=True):
        assert a["slide"] == b["slide"]
        assert a["split"] == b["split"]
        if a["label"] != b["label"]:
            assert a["split"] == "train"  # test labels stay true
        assert (clean.root / a["slide"]).read_bytes() == (
            noisy.root / b["slide"]
        ).read_bytes()


def test_a_hospital_look_changes_the_stain_and_the_tumour_extent() -> None:
    from slidefed.demo.synth import Look

    rgb, weight = render(11, True, 1024, 768)
    same_rgb, same_weight = render(11, True, 1024, 768, Look())
    assert np.array_equal(rgb, same_rgb)  # the default look draws what it did
    assert np.array_equal(weight, same_weight)
    small = Look(tumour_share=(0.04, 0.06), h_shift=0.2, tint=(-6.0, 0.0, 6.0))
    shifted, little = render(11, True, 1024, 768, small)
    assert float((little > 0.5).mean()) < 0.5 * float((weight > 0.5).mean())
    assert not np.array_equal(shifted, rgb)
