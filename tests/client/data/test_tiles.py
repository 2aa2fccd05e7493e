import shutil
from pathlib import Path

import numpy as np
import pytest

from slidefed.client.config import load_site_config
from slidefed.client.data.tiles import load_tile_dataset
from slidefed.client.evaluation import evaluate_tiles
from slidefed.client.site import tile_samples
from slidefed.client.train import train_dp
from slidefed.common.errors import PolicyViolation
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
        '[site]\nname = "m"\n[tiles]\nsource = "manifest"\npath = "tiles.csv"\n'
    )
    data = load_tile_dataset(load_site_config(tmp_path / "site.toml"), ["ADI", "TUM"])
    assert data.unit == "patient"
    assert len(data.samples) == 4
    assert all(len(s.labels) == 2 for s in data.samples)
    assert np.array_equal(data.samples[0].labels, np.array([0, 0]))


def test_tiles_task_needs_labels() -> None:
    with pytest.raises(ValueError, match="needs labels"):
        RunConfig(task="tiles", labels="ADI")
