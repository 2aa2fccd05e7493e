from pathlib import Path

import numpy as np
import pytest

from slidefed.client.data.bags import build_bags
from slidefed.client.data.manifest import ManifestRow, load_manifest
from slidefed.common.errors import ManifestError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_manifest_rejects_bad_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "slide,patient_id,label,split\n"
        "a.tif,P1,0,train\n"
        "a.tif,P1,0,train\n"  # duplicate slide
        "b.tif,P2,1,train\n"
        "c.tif,P2,0,train\n"  # conflicting label for P2
        "d.tif,P3,x,train\n"  # bad label
        "e.tif,P4,1,validate\n"  # bad split
        "f.tif,P5,1,test\n",
    )
    manifest = load_manifest(path)
    assert [r.slide for r in manifest.rows] == ["a.tif", "f.tif"]
    reasons = dict(manifest.rejected)
    assert "duplicate slide" in reasons[3]
    assert "conflicting labels" in reasons[4]
    assert "conflicting labels" in reasons[5]
    assert reasons[6].startswith("label")
    assert reasons[7].startswith("split")
    assert manifest.n_patients == 2
    assert len(manifest.sha256) == 64


def test_manifest_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "slide,patient_id,diagnosis,split\na,b,0,train\n")
    with pytest.raises(ManifestError, match=r"missing column.*label"):
        load_manifest(path)


def test_manifest_without_patient_ids_falls_back_to_slide_unit(tmp_path: Path) -> None:
    path = _write(tmp_path, "slide,label,split\na.tif,0,train\nb.tif,1,test\n")
    manifest = load_manifest(path)
    assert manifest.unit == "slide"
    assert [r.patient_id for r in manifest.rows] == ["a.tif", "b.tif"]


def test_manifest_without_usable_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "slide,patient_id,label,split\na,P1,-1,train\n")
    with pytest.raises(ManifestError, match="no usable row"):
        load_manifest(path)


def test_bags_group_slides_by_patient_and_cap_size() -> None:
    rows = [
        ManifestRow(slide="a", patient_id="P1", label=1, split="train"),
        ManifestRow(slide="b", patient_id="P1", label=1, split="train"),
        ManifestRow(slide="c", patient_id="P2", label=0, split="test"),
        ManifestRow(slide="d", patient_id="P3", label=0, split="train"),
    ]
    feats = {
        "a": np.zeros((30, 4), np.float32),
        "b": np.ones((30, 4), np.float32),
        "c": np.ones((5, 4), np.float32),
    }
    bags = build_bags(rows, feats, bag_size=40, seed=0)
    assert [b.patient_id for b in bags] == ["P1", "P2"]  # P3 has no features
    assert bags[0].features.shape == (40, 4)
    # Both slides of P1 contribute to its bag.
    assert 0 < bags[0].features[:, 0].mean() < 1
    again = build_bags(rows, feats, bag_size=40, seed=0)
    np.testing.assert_array_equal(bags[0].features, again[0].features)


def test_manifest_names_every_missing_column_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "slide,label\na.tif,0\n")
    with pytest.raises(ManifestError) as refused:
        load_manifest(path)
    assert "missing column(s) patient_id, split;" in str(refused.value)
    assert "slide,patient_id,label,split" in str(refused.value)


def test_a_bad_cell_is_named_with_its_fix(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "slide,patient_id,label,split\na.tif,P1,tumour,train\nb.tif,P2,1,train\n",
    )
    reasons = dict(load_manifest(path).rejected)
    assert reasons[2] == (
        "label must be a whole number >= 0 (0, 1, ...); fix the label cell"
    )
