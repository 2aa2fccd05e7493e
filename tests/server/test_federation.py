"""Federations on Flower's simulation engine: rejections, resume, strategies."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from slidefed.common.run_config import RunConfig
from slidefed.demo.synth import synth_site
from slidefed.simulation import run_simulation

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from slidefed.client.config import load_site_config
    from slidefed.client.keys import ensure_site_keys
    from slidefed.client.prepare.pipeline import prepare_site

    root = tmp_path_factory.mktemp("fed")
    paths = []
    for i, n in enumerate((14, 12, 12)):
        folder = root / f"site-{i}"
        synth_site(folder, patients=n, seed=50 + i, width=1024, height=768)
        (folder / "site.toml").write_text(
            f'[site]\nname = "site-{i}"\n[policy]\nmin_eval_patients = 3\n'
        )
        config = load_site_config(folder / "site.toml")
        ensure_site_keys(config)
        prepare_site(config, workers=1)
        paths.append(folder)
    return paths


def _copy_sites(sites: list[Path], dest: Path) -> list[Path]:
    """Copies of prepared sites, prepared again where they are (from the cache)."""
    from slidefed.client.config import load_site_config
    from slidefed.client.prepare.pipeline import prepare_unless_ready

    out = []
    for site in sites:
        target = dest / site.name
        shutil.copytree(
            site, target, ignore=shutil.ignore_patterns("ledger.json*", "audit")
        )
        prepare_unless_ready(load_site_config(target / "site.toml"))
        out.append(target)
    return out


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in log.read_text().splitlines()]


def test_malicious_nan_and_wrong_shape_updates_are_rejected_and_audited(
    three_sites: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    sites = _copy_sites(three_sites, tmp_path)
    run = RunConfig(
        num_server_rounds=2,
        local_epochs=1,
        # Two of the three sites misbehave: the run goes on with the honest one.
        min_sites=1,
        run_dir=str(tmp_path / "run"),
        run_name="malicious",
        sim_sites=",".join(str(s / "site.toml") for s in sites),
    )
    run_simulation(run, n_sites=3, client_app_attr="tests.server.misbehaving_app:app")

    rows = [
        json.loads(x)
        for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["sites_trained"] for r in rows] == [1, 1]
    reasons = [r["reason"] for row in rows for r in row["rejected"]]
    assert any("NaN" in r for r in reasons)
    assert any("shape" in r for r in reasons)
    server_events = _events(tmp_path / "run" / "audit" / "server-audit.jsonl")
    rejected = [e for e in server_events if e["event"] == "update_rejected"]
    assert len(rejected) == 4
    assert {e["round"] for e in rejected} == {1, 2}
    assert (tmp_path / "run" / "final.safetensors").is_file()


def test_a_run_in_which_no_site_trains_fails_with_the_reasons(
    three_sites: list[Path], tmp_path: Path
) -> None:
    sites = _copy_sites(three_sites, tmp_path)
    for site in sites:  # a budget too small for any round: every site refuses
        text = (site / "site.toml").read_text()
        (site / "site.toml").write_text(text + "max_epsilon = 0.01\n")
    run = tmp_path / "run"
    done = _simulate(sites, run, 2)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 5, out[-3000:]
    assert "round 1: 0 of min-sites 3 sites trained" in out
    assert "refused: privacy budget" in out
    # No model and no metrics of the untrained model that would look like results.
    assert not (run / "final.safetensors").exists()
    assert (run / "metrics.jsonl").read_text() == ""
    assert not list((run / "checkpoints").glob("round-*.json"))
    # The audit log says the run stopped there, and no round completed.
    server_events = _events(run / "audit" / "server-audit.jsonl")
    assert not [e for e in server_events if e["event"] == "round_completed"]
    (stopped,) = [e for e in server_events if e["event"] == "run_stopped"]
    assert stopped["round"] == 1
    data: Any = stopped["data"]
    assert (data["sites_trained"], data["min_sites"]) == (0, 3)
    assert "refused: privacy budget" in data["reason"]


def _simulate(
    sites: list[Path], out: Path, rounds: int, *extra: str
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "slidefed.cli",
        "simulate",
        "--rounds",
        str(rounds),
        "--out",
        str(out),
        "--seed",
        "3",
        "--local-epochs",
        "1",
        "--strategy",
        "fedadam",
    ]
    for s in sites:
        cmd += ["--sites", str(s)]
    return subprocess.Popen(
        [*cmd, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_kill_after_round_two_and_resume_gives_the_same_model(
    three_sites: list[Path], tmp_path: Path
) -> None:
    straight = _simulate(
        _copy_sites(three_sites, tmp_path / "a"), tmp_path / "a" / "run", 4
    )
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out[-3000:]

    sites_b = _copy_sites(three_sites, tmp_path / "b")
    run_b = tmp_path / "b" / "run"
    killed = _simulate(sites_b, run_b, 4)
    deadline = time.monotonic() + 600
    while not (run_b / "checkpoints" / "round-2.json").is_file():
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()  # reaps it and closes its pipe
    assert not (run_b / "final.safetensors").exists()

    resumed = _simulate(sites_b, run_b, 4, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]

    a = load_file(str(tmp_path / "a" / "run" / "final.safetensors"))
    b = load_file(str(run_b / "final.safetensors"))
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4
    rows = [json.loads(x) for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    # The model card and the metrics agree.
    card = (run_b / "model-card.md").read_text()
    last = rows[-1]
    assert f"| 4 | {last['sites_trained']} | {last['accuracy']:.4f} |" in card
