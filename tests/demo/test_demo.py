"""The walking federation, end to end through the installed command."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slidefed.client.privacy.ledger import PrivacyLedger
from tests.pld import SLACK, ledger_pld_epsilon, pld_epsilon

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _slidefed() -> list[str]:
    exe = shutil.which("slidefed", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "slidefed.cli"]


def _tiles_demo(
    tmp_path: Path, out: Path, tiles: Path, *, rounds: int
) -> subprocess.CompletedProcess[str]:
    """``slidefed demo --data tiles`` on ``tiles``, as a user types it."""
    return subprocess.run(
        [
            *_slidefed(),
            "demo",
            "--data",
            "tiles",
            "--rounds",
            str(rounds),
            "--out",
            str(out),
            "--tiles-dir",
            str(tiles),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr")},
        timeout=600,
        check=False,
    )


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}
    proc = subprocess.run(
        [*_slidefed(), "demo", "--sites", "2", "--rounds", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "Held-out patients" in proc.stdout

    rows = [
        json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rows] == [1, 2]
    assert all("auc" in r for r in rows)  # from the sites' noised statistics
    assert rows[-1]["sites_trained"] == 2
    assert all("train_loss" not in r and "eval_loss" not in r for r in rows)
    # The demo plays every site, so it can also evaluate the final model exactly.
    local = json.loads((out / "run" / "demo-local-evaluation.json").read_text())
    assert local["auc"] >= 0.8
    # Every round's model, evaluated exactly too (the plot draws both).
    assert [r["round"] for r in local["rounds"]] == [1, 2]
    assert all(0.0 <= r["auc"] <= 1.0 for r in local["rounds"])
    assert "evaluated here by the demo" in proc.stdout
    assert (out / "run" / "metrics.png").stat().st_size > 1000
    assert (out / "run" / "final.safetensors").is_file()
    # Sites by name in the plot and the model card, not by node id.
    names = json.loads((out / "run" / "site-names.json").read_text())
    assert sorted(names.values()) == ["hospital-a", "hospital-b"]
    assert set(names) == set(rows[-1]["epsilon_per_site"])
    card = (out / "run" / "model-card.md").read_text()
    for node, name in names.items():
        assert f"| {name} | {node} | " in card

    for name in ("hospital-a", "hospital-b"):
        site = out / "sites" / name
        assert (site / "site.toml").is_file()
        assert (site / "manifest.csv").is_file()
        assert list((site / "slides").glob("*.tif"))
        assert list((site / "state" / "cache").glob("*.npz"))
        log = site / "audit" / "audit.jsonl"
        events = [json.loads(x)["event"] for x in log.read_text().splitlines()]
        assert events.count("round_charged") == 2
        assert events.count("update_released") == 2
        charged = [
            json.loads(x)["data"]
            for x in log.read_text().splitlines()
            if json.loads(x)["event"] == "round_charged"
        ]
        assert charged[-1]["unit"] == "patient"
        assert 0 < charged[0]["epsilon_after"] < charged[1]["epsilon_after"] <= 8.0
        # The site's epsilon bounds an independent accountant's (dp-accounting, PLD)
        # recomputed from its ledger: after each round, and over the whole history.
        ledger = PrivacyLedger(site / "state" / "ledger.json").load()
        assert ledger.delta is not None
        for k, row in enumerate(ledger.rounds, 1):
            prefix = [
                (r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.rounds[:k]
            ]
            assert row.epsilon_after >= pld_epsilon(prefix, ledger.delta) - SLACK, name
        # The whole history: training rounds and the evaluations charged after them.
        whole = ledger.rounds[-1].epsilon_after
        assert whole >= ledger_pld_epsilon(ledger) - SLACK, name
        verify = subprocess.run(
            [*_slidefed(), "audit", "verify", str(log)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_demo_tiles_on_real_patches(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "tiles-demo"
    proc = _tiles_demo(tmp_path, out, shared_data / "patches", rounds=2)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads((out / "run" / "tiles-results.json").read_text())
    assert set(result["federated"]) >= {"accuracy", "macro_f1", "class_accuracy"}
    assert result["centralised"]["test_tiles"] > 0
    assert all(0 < eps <= 8.0 for eps in result["epsilon"].values())
    # The classes come from the folders: LC25000's lung classes as well as
    # Kather's; BACK (one tile) is left out, and the output says so.
    assert {"lung_aca", "lung_n", "lung_scc", "TUM"} <= set(result["labels"])
    assert "BACK" not in result["labels"]
    assert "left out, fewer than 10 tiles: BACK (1)" in proc.stdout


def _tile_collection(root: Path) -> Path:
    """Class folders named unlike any known set, each with its own colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {
        "alpha": (200, 80, 150),
        "beta": (120, 60, 200),
        "gamma": (230, 180, 200),
    }
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(24):
            tile = np.clip(rng.normal(colour, 25, (224, 224, 3)), 0, 255)
            Image.fromarray(tile.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    (root / "rare").mkdir()
    Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(root / "rare" / "0.png")
    return root


def test_demo_tiles_takes_its_classes_from_the_folders(tmp_path: Path) -> None:
    source = _tile_collection(tmp_path / "tiles")
    out = tmp_path / "out"
    proc = _tiles_demo(tmp_path, out, source, rounds=1)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    said = " ".join(proc.stdout.split())
    assert (
        f"classes from the class folders of {source}: alpha (24 tiles), "
        "beta (24 tiles), gamma (24 tiles)" in said
    )
    assert "left out, fewer than 10 tiles: rare (1)" in said
    result = json.loads((out / "run" / "tiles-results.json").read_text())
    assert result["labels"] == ["alpha", "beta", "gamma"]
    assert result["centralised"]["test_tiles"] > 0
    assert 0.0 <= result["federated"]["accuracy"] <= 1.0
    assert all(0 < eps <= 8.0 for eps in result["epsilon"].values())
