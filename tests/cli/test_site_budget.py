"""``slidefed site budget`` names runs as the audit log and the report do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slidefed.cli.root import main
from slidefed.client.app import app
from slidefed.client.config import load_site_config
from slidefed.client.keys import ensure_site_keys
from slidefed.client.privacy.ledger import stable_run_id
from slidefed.demo.synth import SynthSite
from tests.client.messages import instruction, node_context
from tests.client.prepared import prepare_like_shared


@pytest.fixture
def site_toml(small_site: SynthSite, tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f'[site]\nname = "budget-test"\nmanifest = "{small_site.manifest}"\n'
        f'slides_root = "{small_site.root}"\n[policy]\nmin_eval_patients = 5\n'
        "max_epsilon = 10.0\n"
    )
    ensure_site_keys(load_site_config(path))
    prepare_like_shared(path, small_site)
    return path


def test_budget_names_each_run_by_its_run_name_and_flower_run_id(
    site_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = node_context(
        site_toml,
        run_id=901,
        run_name="study-7",
        target_epsilon=4.0,
        num_server_rounds=1,
    )
    assert not app(instruction("train", 1, run_id=901), named).has_error()
    unnamed = node_context(
        site_toml, run_id=902, target_epsilon=4.0, num_server_rounds=1
    )
    assert not app(instruction("train", 1, run_id=902), unnamed).has_error()
    capsys.readouterr()

    assert main(["site", "budget", "--config", str(site_toml)]) == 0
    text = capsys.readouterr().out
    ledger_id = stable_run_id("study-7")
    assert f"run 'study-7' (ledger id {ledger_id}, Flower run 901): 1 rounds" in text
    assert "run 902 (no run-name): 1 rounds" in text

    assert main(["site", "budget", "--config", str(site_toml), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["run_name"], r["flower_run_id"]) for r in runs] == [
        ("study-7", 901),
        ("", 902),
    ]
    # The audit log knows the same run by the same Flower run id and name.
    log = load_site_config(site_toml).audit_path.read_text().splitlines()
    joined = [json.loads(x) for x in log if '"run_joined"' in x]
    assert [(r["run_id"], r["data"]["run_name"]) for r in joined] == [
        (901, "study-7"),
        (902, ""),
    ]
