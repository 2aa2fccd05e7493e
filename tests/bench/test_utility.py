"""``slidefed bench utility``: the split by group, and quick runs on real tiles."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from slidefed.bench._utility_data import (
    BenchData,
    BenchTile,
    assign_sites,
    load_bench_data,
    split_units,
)
from slidefed.bench._utility_sites import BenchSite, check_no_shared_unit
from slidefed.cli.root import main
from slidefed.client.config import SiteConfig, SiteSection
from slidefed.client.data.tile_records import TileSample
from slidefed.common.errors import SlidefedError

LUNG = Path("patches") / "lc25000-lung"
KATHER = Path("patches") / "crc-val-he-7k-jpg"


@pytest.fixture(scope="module")
def lung(shared_data: Path) -> Path:
    root = shared_data / LUNG
    if not (root / "groups.csv").is_file():
        pytest.skip(f"{root} not found")
    return root


def _groups_csv(root: Path) -> dict[str, list[str]]:
    """Tiles of each source group, read straight from the real groups file."""
    out: dict[str, list[str]] = defaultdict(list)
    with (root / "groups.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out[row["source_group"]].append(row["path"])
    return out


def test_split_never_puts_a_group_in_train_and_test(lung: Path) -> None:
    # Prepare: the real tiles and groups file of LC25000 lung.
    data = load_bench_data(lung, None)
    groups = _groups_csv(lung)
    unit_of = {t.name: t.unit for t in data.tiles}
    for seed in (0, 1):
        # Execute
        splits = split_units(data, seed=seed)
        # Assert: every tile of a group (by the file) lies in one split, and
        # no group is both trained on and tested.
        for group, paths in groups.items():
            assert {splits[unit_of[p]] for p in paths} == {splits[group]}
        test = {g for g, s in splits.items() if s == "test"}
        train = {g for g, s in splits.items() if s in ("train", "val")}
        assert not test & train
        assert len(test) == 150
        assert len(train) == 300
        labels = data.unit_labels()
        assert sorted(labels[g] for g in test).count("lung_n") == 50
    assert data.unit == "group"
    assert len(data.tiles) == 9101


def test_cross_validation_holds_out_every_group_exactly_once(lung: Path) -> None:
    # Prepare: the real tiles and groups file of LC25000 lung.
    data = load_bench_data(lung, None)
    groups = _groups_csv(lung)
    unit_of = {t.name: t.unit for t in data.tiles}
    labels = data.unit_labels()
    tested: list[str] = []
    for fold in range(3):
        # Execute
        splits = split_units(data, seed=0, fold=fold, folds=3)
        # Assert: a group's tiles share its split; no group is trained and tested.
        for group, paths in groups.items():
            assert {splits[unit_of[p]] for p in paths} == {splits[group]}
        test = [g for g, s in splits.items() if s == "test"]
        train = {g for g, s in splits.items() if s in ("train", "val")}
        assert not set(test) & train
        assert len(test) == 150
        assert sorted(labels[g] for g in test).count("lung_n") == 50
        assert sum(1 for s in splits.values() if s == "val") == 75
        tested += test
    # Over the folds every group was held out once.
    assert sorted(tested) == sorted(groups)


def _sample(unit: str, split: str) -> TileSample:
    return TileSample(
        sample_id=unit,
        split="train" if split == "train" else "test",
        features=np.zeros((1, 24), np.float32),
        labels=np.zeros(1, np.int64),
    )


def _site(tmp_path: Path, name: str, units: list[str], split: str) -> BenchSite:
    config = SiteConfig(site=SiteSection(name=name), base_dir=tmp_path / name)
    return BenchSite(
        name=name, config=config, samples=[_sample(u, split) for u in units]
    )


def test_a_held_out_unit_at_a_site_is_refused(tmp_path: Path) -> None:
    held = _site(tmp_path, "held-out", ["g1", "g2"], "test")
    clean = [
        _site(tmp_path, "a", ["g3"], "train"),
        _site(tmp_path, "b", ["g4"], "train"),
    ]
    assert check_no_shared_unit(clean, held) == 2
    leaky = [*clean, _site(tmp_path, "c", ["g5", "g2"], "train")]
    with pytest.raises(SlidefedError, match="1 held-out units are also at c"):
        check_no_shared_unit(leaky, held)


def test_sites_get_different_class_mixes_and_every_unit() -> None:
    labels = {f"{lab}-{i}": lab for lab in ("a", "b", "c") for i in range(100)}
    site_of = assign_sites(labels, sites=3, alpha=1.0, seed=1)
    assert set(site_of) == set(labels)
    mixes = [
        tuple(
            sum(1 for u, s in site_of.items() if s == k and labels[u] == lab)
            for lab in ("a", "b", "c")
        )
        for k in range(3)
    ]
    assert len(set(mixes)) == 3
    assert all(sum(m) >= 25 for m in mixes)


def _copy_tiles(lung: Path, dest: Path, *, column: str, per_label: int) -> Path:
    """A small folder of class folders plus a groups file, from real tiles."""
    groups = _groups_csv(lung)
    rows = []
    for label in ("lung_aca", "lung_n", "lung_scc"):
        chosen = sorted(g for g in groups if g.startswith(label + "-"))[:per_label]
        for group in chosen:
            for path in groups[group][:2]:
                (dest / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(lung / path, dest / path)
                rows.append((path, f"unit-{group}"))
    with (dest / "units.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", column])
        writer.writerows(rows)
    return dest / "units.csv"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["bench", "utility", "--quick", "--workers", "1", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _listed(folder: Path) -> set[str]:
    with (folder / "tiles" / "groups.csv").open(encoding="utf-8") as fh:
        return {row[1] for row in list(csv.reader(fh))[1:]}


@pytest.mark.slow
@pytest.mark.parametrize("column", ["group", "patient_id"])
def test_quick_bench_on_a_folder_with_a_groups_file(
    lung: Path, tmp_path: Path, column: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 8 groups of 2 real tiles per class, in a new folder.
    groups = _copy_tiles(lung, tmp_path / "tiles", column=column, per_label=8)
    out = tmp_path / "work"
    # Execute
    rc, stdout, _ = _run(
        [
            "--data",
            str(tmp_path / "tiles"),
            "--groups",
            str(groups),
            "--json",
            "--out",
            str(out),
            "--plot",
            str(tmp_path / "f1.png"),
        ],
        capsys,
    )
    # Assert
    assert rc == 0
    result = json.loads(stdout)
    assert result["unit"] == ("patient" if column == "patient_id" else "group")
    rows = result["settings"]
    assert [(r["setting"], r["target_epsilon"]) for r in rows] == [
        ("centralised", None),
        ("federated", None),
        ("federated-dp", 1.0),
        ("federated-dp", 4.0),
        ("federated-dp", 8.0),
    ]
    for row in rows:
        figures = [row["accuracy"], row["macro_f1"], *row["class_f1"].values()]
        assert len(row["class_f1"]) == 3
        assert all(0.0 <= v <= 1.0 for v in figures)
    for row in rows[2:]:
        assert len(row["sites"]) == 3
        for site in row["sites"]:
            assert 0 < site["epsilon"] <= row["target_epsilon"]
            assert site["delta"] <= 1e-5
            assert site["bound"] in ("rdp", "prv")
    held = _listed(out / "sites" / "held-out")
    trained = set().union(*(_listed(out / "sites" / f"site-{i}") for i in (1, 2, 3)))
    assert held
    assert trained
    assert not held & trained
    assert result["split"]["test_units"] == len(held)
    assert (tmp_path / "f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_bench_cross_validates_every_unit_once(
    lung: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 8 groups of 2 real tiles per class, in a new folder.
    groups = _copy_tiles(lung, tmp_path / "tiles", column="group", per_label=8)
    out = tmp_path / "work"
    args = ["--data", str(tmp_path / "tiles"), "--groups", str(groups)]
    # Execute: two folds, as JSON and as the table.
    rc, stdout, _ = _run([*args, "--folds", "2", "--json", "--out", str(out)], capsys)
    # Assert: each fold held out its own units, none of them trained on in it.
    assert rc == 0
    result = json.loads(stdout)
    assert result["folds"] == 2
    held_out: list[set[str]] = []
    for fold in (1, 2):
        sites = out / f"fold-{fold}" / "sites"
        held = _listed(sites / "held-out")
        trained = set().union(*(_listed(sites / f"site-{i}") for i in (1, 2, 3)))
        assert held
        assert not held & trained
        held_out.append(held)
    assert not held_out[0] & held_out[1]
    with groups.open(encoding="utf-8") as fh:
        units = {row["group"] for row in csv.DictReader(fh)}
    assert held_out[0] | held_out[1] == units
    # A setting's figures are the means over both folds' runs.
    for row in result["settings"]:
        assert [r["fold"] for r in row["runs"]] == [1, 2]
        mean = sum(r["macro_f1"] for r in row["runs"]) / 2
        assert abs(row["macro_f1"] - round(mean, 4)) < 1e-9
        assert row["test_tiles"] == sum(
            f["settings"][result["settings"].index(row)]["test_tiles"]
            for f in result["by_fold"]
        )
    assert [f["split"]["fold"] for f in result["by_fold"]] == [1, 2]
    rc, stdout, _ = _run([*args, "--folds", "2", "--out", str(out)], capsys)
    assert rc == 0
    assert "2-fold cross-validation by group" in stdout
    assert "  fold 2: eps 1.0: " in stdout


@pytest.mark.slow
def test_quick_bench_on_kather_tiles_without_groups(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kather = shared_data / KATHER
    if not kather.is_dir():
        pytest.skip(f"{kather} not found")
    rc, stdout, _ = _run(["--data", str(kather), "--out", str(tmp_path)], capsys)
    assert rc == 0
    assert "unit: tile, no groups file: each tile is its own unit" in stdout
    assert "federated, DP eps 8" in stdout
    assert "macro-F1" in stdout


def test_missing_data_is_one_line_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(["--data", str(tmp_path / "nowhere")], capsys)
    assert rc == 2
    assert err.count("\n") == 1
    assert "is not a folder; point it at a folder of class folders" in err
    monkeypatch.setenv("SLIDEFED_SHARED_DATA", str(tmp_path))
    rc, _, err = _run([], capsys)
    assert rc == 2
    assert err.count("\n") == 1
    assert f"no tiles at {tmp_path / LUNG}; pass --data DIR" in err


def test_bad_epsilons_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    rc, _, err = _run(["--data", str(tmp_path), "--epsilons", "1,x"], capsys)
    assert rc == 2
    assert "'x' is not a positive number; write them like 1,4,8" in err


def test_a_single_label_folder_is_refused(
    lung: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "lung_n").mkdir()
    first = sorted((lung / "lung_n").iterdir())[0]
    shutil.copy(first, tmp_path / "lung_n" / first.name)
    rc, _, err = _run(["--data", str(tmp_path), "--out", str(tmp_path / "w")], capsys)
    assert rc == 2
    assert "needs at least two labels" in err


def test_tiles_of_one_unit_share_its_split() -> None:
    tiles = [
        BenchTile(
            name=f"{lab}/{i}.png",
            path=Path(f"/x/{lab}/{i}.png"),
            label=lab,
            unit=f"{lab}-{i // 3}",
        )
        for lab in ("a", "b")
        for i in range(30)
    ]
    data = BenchData(
        root=Path("/x"), labels=["a", "b"], unit="group", tiles=tiles, groups_file=None
    )
    splits = split_units(data, seed=3)
    assert set(splits) == {t.unit for t in tiles}
    counts = {
        s: sum(1 for v in splits.values() if v == s) for s in ("train", "val", "test")
    }
    assert counts == {"test": 6, "val": 4, "train": 10}


def test_a_bad_plan_or_evaluate_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"dp": {"rounds": 0, "max_grad_norm": 1, "default_lr": 0.1}}')
    rc, _, err = _run(["--data", str(tmp_path), "--plan", str(plan)], capsys)
    assert rc == 2
    assert f"--plan {plan}: 1 validation error for UtilityPlans" in err
    rc, _, err = _run(["--data", str(tmp_path), "--evaluate", "train"], capsys)
    assert rc == 2
    assert "--evaluate 'train' must be 'test' or 'val'" in err
