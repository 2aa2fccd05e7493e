import csv
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from slidefed.client.config import TilesSection, load_site_config
from slidefed.client.data.tiles import (
    TileRecord,
    assign_units,
    load_tile_dataset,
    read_groups,
    scan_folder,
)
from slidefed.client.evaluation import evaluate_tiles
from slidefed.client.site import tile_samples
from slidefed.client.train import train_dp
from slidefed.common.errors import ManifestError, PolicyViolation, SlidePathError
from slidefed.common.model import build_model, feature_dim
from slidefed.common.run_config import RunConfig

LABELS = ["ADI", "LYM", "TUM"]


@pytest.fixture
def tile_site(shared_data: Path, tmp_path: Path) -> Path:
    """A site built from the real Kather tiles plus three bad entries."""
    source = shared_data / "patches" / "crc-val-he-7k-jpg"
    tiles = tmp_path / "tiles"
    for label in LABELS:
        shutil.copytree(source / label, tiles / label)
    (tiles / "ADI" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    from PIL import Image

    Image.new("RGB", (10, 10), (200, 100, 150)).save(tiles / "LYM" / "tiny.png")
    shutil.copytree(source / "MUC", tiles / "MUC")  # a class the site does not declare
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "tiles-site"\n[tiles]\npath = "tiles"\n'
        f"labels = {LABELS!r}\n".replace("'", '"')
        + '[policy]\nunit = "tile"\n'
    )
    return tmp_path / "site.toml"


def test_bad_tiles_are_named_and_the_rest_is_used(tile_site: Path) -> None:
    data = load_tile_dataset(load_site_config(tile_site), LABELS)
    skipped = {Path(name).name: reason for name, reason in data.skipped}
    assert "unreadable image" in skipped["corrupt.jpg"]
    assert "size 10x10" in skipped["tiny.png"]
    assert sum("unknown label 'MUC'" in r for r in skipped.values()) == 10
    assert data.unit == "tile"
    assert sum(len(s.labels) for s in data.samples) == 30
    assert {s.split for s in data.samples} == {"train", "test"}


def test_skipped_tiles_are_logged_once_not_on_every_load(
    tile_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_site_config(tile_site)
    with caplog.at_level(logging.WARNING, logger="slidefed"):
        load_tile_dataset(config, LABELS)
    first = [r.getMessage() for r in caplog.records]
    # 12 skipped tiles: ten named one by one, the rest counted in one line.
    assert sum(m.startswith("tile skipped: ") for m in first) == 10
    assert (
        "2 more tiles skipped (size 10x10, expected 224x224; unreadable image "
        "(OSError))" in first
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slidefed"):
        load_tile_dataset(config, LABELS)  # the next message of the run
    assert not caplog.records
    (tile_site.parent / "tiles" / "TUM" / "000.png").write_bytes(b"broken")
    with caplog.at_level(logging.WARNING, logger="slidefed"):
        load_tile_dataset(config, LABELS)  # a new skip: the list is logged again
    assert sum("tile skipped: " in r.getMessage() for r in caplog.records) == 10


def test_tile_classifier_trains_with_dp_on_the_rest(tile_site: Path) -> None:
    data = load_tile_dataset(load_site_config(tile_site), LABELS)
    train = [s for s in data.samples if s.split == "train"]
    model = build_model("tiles", feature_dim("hed"), seed=0, n_classes=3)
    before = evaluate_tiles(model, data.samples, 3)
    result = train_dp(
        model,
        train,
        epochs=10,
        batch_size=4,
        lr=0.05,
        noise_multiplier=0.3,
        max_grad_norm=1.0,
        delta=1e-3,
        seed=0,
    )
    after = evaluate_tiles(model, data.samples, 3)
    assert result.steps > 0
    assert after.loss < before.loss
    assert 0.0 <= after.macro_f1 <= 1.0
    assert len(after.class_accuracy) == 3


def test_site_labels_outside_the_run_label_set_refuse(tile_site: Path) -> None:
    run = RunConfig(task="tiles", labels="ADI,LYM")
    with pytest.raises(
        PolicyViolation, match=r"\['TUM'\] are not in the run's label set"
    ):
        tile_samples(load_site_config(tile_site), run)


def test_manifest_with_patient_ids_makes_patient_samples(
    shared_data: Path, tmp_path: Path
) -> None:
    source = shared_data / "patches" / "crc-val-he-7k-png"
    rows = ["tile,label,patient_id,split"]
    for i, path in enumerate(
        sorted((source / "ADI").glob("*.png")) + sorted((source / "TUM").glob("*.png"))
    ):
        rows.append(
            f"{path},{path.parent.name},P{i // 2},{'test' if i >= 6 else 'train'}"
        )
    (tmp_path / "tiles.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "site.toml").write_text(
        f'[site]\nname = "m"\nextra_slide_roots = ["{source}"]\n'
        '[tiles]\nsource = "manifest"\npath = "tiles.csv"\n'
    )
    data = load_tile_dataset(load_site_config(tmp_path / "site.toml"), ["ADI", "TUM"])
    assert data.unit == "patient"
    assert len(data.samples) == 4
    assert all(len(s.labels) == 2 for s in data.samples)
    assert np.array_equal(data.samples[0].labels, np.array([0, 0]))


def test_tiles_task_needs_labels() -> None:
    with pytest.raises(ValueError, match="needs labels"):
        RunConfig(task="tiles", labels="ADI")


def _sid(unit_id: str) -> str:
    return hashlib.sha256(unit_id.encode()).hexdigest()[:16]


def _tiny_manifest_site(
    tmp_path: Path,
    rows: list[dict[str, str]],
    *,
    policy: str = "",
) -> Path:
    """A manifest site of 16x16 tiles, one image per row (colour from the row)."""
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        row.setdefault("tile", f"img/t{i}.png")
        shade = (i * 37) % 200
        color = (shade, 60, 120) if row["label"] == "A" else (60, shade, 200)
        Image.new("RGB", (16, 16), color).save(tmp_path / row["tile"])
    columns = sorted({c for row in rows for c in row})
    with (tmp_path / "tiles.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "m"\n[tiles]\nsource = "manifest"\npath = "tiles.csv"\n'
        f"tile_size = 16\n{policy}"
    )
    return tmp_path / "site.toml"


def test_one_tile_without_a_patient_id_refuses_the_site(tmp_path: Path) -> None:
    rows = [{"label": "AB"[i % 2], "patient_id": f"P{i // 2}"} for i in range(8)]
    rows[3]["patient_id"] = ""
    site = _tiny_manifest_site(tmp_path, rows)
    with pytest.raises(ManifestError) as err:
        load_tile_dataset(load_site_config(site), ["A", "B"])
    message = str(err.value)
    assert f"{tmp_path / 'tiles.csv'}:5:" in message  # header is line 1, row 3 is 5
    assert "no patient_id" in message
    assert 'unit = "tile"' in message
    assert "\n" not in message


def test_policy_unit_tile_makes_every_tile_a_sample(tmp_path: Path) -> None:
    rows = [{"label": "AB"[i % 2], "patient_id": f"P{i // 2}"} for i in range(8)]
    rows[3]["patient_id"] = ""
    site = _tiny_manifest_site(tmp_path, rows, policy='[policy]\nunit = "tile"\n')
    data = load_tile_dataset(load_site_config(site), ["A", "B"])
    assert data.unit == "tile"
    assert len(data.samples) == 8
    assert all(len(s.labels) == 1 for s in data.samples)
    # Tiles that do name a patient still follow it into one split.
    records = [
        TileRecord(
            path=Path(f"/t/{i}.png"),
            name=f"{i}.png",
            label="A",
            patient_id=f"P{i % 50}",
        )
        for i in range(1000)
    ]
    unit, units = assign_units(records, TilesSection(), "tile")
    assert unit == "tile"
    assert len({u.key for u in units}) == 1000
    splits: dict[str, set[str]] = {}
    for rec, u in zip(records, units, strict=True):
        splits.setdefault(rec.patient_id or "", set()).add(u.split)
    assert all(len(s) == 1 for s in splits.values())


def test_patients_without_a_split_column_are_split_whole(tmp_path: Path) -> None:
    rows = [{"label": "AB"[p % 2], "patient_id": f"P{p}"} for p in range(60)] * 3
    rows = [dict(r) for r in rows]
    site = _tiny_manifest_site(tmp_path, rows)
    data = load_tile_dataset(load_site_config(site), ["A", "B"])
    assert data.unit == "patient"
    split_of = {s.sample_id: s.split for s in data.samples}
    assert len(data.samples) == len(split_of) == 60  # one sample per patient
    assert all(len(s.labels) == 3 for s in data.samples)
    assert set(split_of) == {_sid(f"P{p}") for p in range(60)}
    assert 5 < sum(v == "test" for v in split_of.values()) < 35

    # The rule itself, over many patients with many tiles each.
    records = [
        TileRecord(
            path=Path(f"/t/{p}-{k}.png"),
            name=f"{p}-{k}.png",
            label="A",
            patient_id=f"P{p}",
        )
        for p in range(2000)
        for k in range(5)
    ]
    unit, units = assign_units(records, TilesSection(test_fraction=0.3), None)
    assert unit == "patient"
    splits: dict[str, set[str]] = {}
    for rec, u in zip(records, units, strict=True):
        splits.setdefault(rec.patient_id or "", set()).add(u.split)
    assert all(len(s) == 1 for s in splits.values())
    test_share = sum(s == {"test"} for s in splits.values()) / len(splits)
    assert 0.25 < test_share < 0.35


def test_group_column_makes_one_sample_per_group(tmp_path: Path) -> None:
    rows = [
        {"label": "AB"[g % 2], "source_group": f"G{g}"}
        for g in range(40)
        for _ in range(g % 3 + 1)
    ]
    site = _tiny_manifest_site(tmp_path, rows)
    data = load_tile_dataset(load_site_config(site), ["A", "B"])
    assert data.unit == "group"
    by_id = {s.sample_id: s for s in data.samples}
    assert len(data.samples) == len(by_id) == 40
    for g in range(40):
        assert len(by_id[_sid(f"G{g}")].labels) == g % 3 + 1
    assert {s.split for s in data.samples} == {"train", "test"}


def test_a_split_that_cuts_a_patient_refuses(tmp_path: Path) -> None:
    rows = [
        {"label": "A", "patient_id": f"P{i // 2}", "split": "train"} for i in range(6)
    ]
    rows[5]["split"] = "test"
    site = _tiny_manifest_site(tmp_path, rows)
    with pytest.raises(ManifestError, match=r"tiles\.csv:7: patient 'P2' is in test"):
        load_tile_dataset(load_site_config(site), ["A", "B"])


def test_class_folders_without_groups_refuse(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("A", "B"):
        (tmp_path / "tiles" / label).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "tiles" / label / "x.png")
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "f"\n[tiles]\npath = "tiles"\ntile_size = 16\n'
    )
    with pytest.raises(ManifestError, match=r"tiles/A/x\.png: .*tiles\.groups"):
        load_tile_dataset(load_site_config(tmp_path / "site.toml"), ["A", "B"])


def test_class_folders_with_a_groups_file_split_by_group(
    shared_data: Path, tmp_path: Path
) -> None:
    """LC25000's layout: class folders plus groups.csv (path,label,source_group)."""
    source = shared_data / "patches" / "lc25000-lung"
    groups = read_groups(source / "groups.csv")
    assert len({r.group for r in groups.values()}) == 450
    records, skipped = scan_folder(source, TilesSection(groups=Path("groups.csv")))
    assert not skipped
    assert len(records) == 9101
    unit, units = assign_units(records, TilesSection(), None)
    assert unit == "group"
    splits: dict[str, set[str]] = {}
    for u in units:
        splits.setdefault(u.key, set()).add(u.split)
    assert len(splits) == 450
    assert all(len(s) == 1 for s in splits.values())

    # A small site of a few groups, trained end to end as a tile site.
    chosen = sorted({r.group or "" for r in groups.values()})[:: 450 // 6][:6]
    tiles = tmp_path / "tiles"
    lines = ["path,label,source_group"]
    for name, rec in sorted(groups.items()):
        if rec.group in chosen:
            (tiles / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, tiles / name)
            lines.append(f"{name},{name.split('/')[0]},{rec.group}")
    (tiles / "groups.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "lc"\n[tiles]\npath = "tiles"\ngroups = "groups.csv"\n'
    )
    labels = sorted({n.split("/")[0] for n in groups})
    data = load_tile_dataset(load_site_config(tmp_path / "site.toml"), labels)
    assert data.unit == "group"
    assert {s.sample_id for s in data.samples} == {_sid(g) for g in chosen}
    assert sum(len(s.labels) for s in data.samples) == len(lines) - 1


def test_groups_file_is_only_for_class_folders() -> None:
    with pytest.raises(ValueError, match=r"tiles\.groups is for class-folder sites"):
        TilesSection(source="manifest", groups=Path("groups.csv"))


def _tile_png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (224, 224), (200, 100, 150)).save(path)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_tile_manifest_row_outside_the_tiles_folder_is_refused(
    tmp_path: Path, how: str
) -> None:
    site = tmp_path / "site"
    outside = tmp_path / "outside" / "x.png"
    _tile_png(outside)
    _tile_png(site / "tiles" / "a.png")
    name = {"dotdot": "../../outside/x.png", "absolute": str(outside)}.get(
        how, "ln.png"
    )
    if how == "symlink":
        (site / "tiles" / "ln.png").symlink_to(outside)
    (site / "tiles" / "tiles.csv").write_text(
        f"tile,label,patient_id\na.png,ADI,P1\n{name},TUM,P2\n"
    )
    (site / "site.toml").write_text(
        '[site]\nname = "m"\n[tiles]\nsource = "manifest"\npath = "tiles/tiles.csv"\n'
    )
    with pytest.raises(SlidePathError) as refused:
        load_tile_dataset(load_site_config(site / "site.toml"), ["ADI", "TUM"])
    assert f"tiles.csv:3: tile {name!r} resolves to {outside.resolve()}" in str(
        refused.value
    )
    assert "site.extra_slide_roots" in str(refused.value)


def test_a_symlink_out_of_a_class_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "x.png"
    _tile_png(outside)
    _tile_png(tmp_path / "tiles" / "ADI" / "a.png")
    (tmp_path / "tiles" / "TUM").mkdir()
    (tmp_path / "tiles" / "TUM" / "b.png").symlink_to(outside)
    with pytest.raises(SlidePathError, match=r"tile 'TUM/b\.png' resolves to"):
        scan_folder(tmp_path / "tiles", TilesSection())
    # Allowed explicitly, it is read.
    records, _ = scan_folder(
        tmp_path / "tiles", TilesSection(), (tmp_path / "outside",)
    )
    assert sorted(r.name for r in records) == ["ADI/a.png", "TUM/b.png"]
